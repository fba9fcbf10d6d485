-- ARGV: offset_ms, key, lease_ms[, app_key, causes_key]. Take the lease of a dirty key.
-- Returns {state, token}; state is 'claimed', 'busy' (another worker holds it: it will
-- reschedule on release), 'delayed' (waiting out a backoff) or 'clean' (nothing to do: a
-- duplicate message). The token (claimed only) is the key's fencing token: it grows with each
-- claim of the key (wq:fence, never reset) and is the owner's in wq:owner; the run's renewals,
-- writes (fenced.lua) and release are accepted only with it.
-- With `app_key` and `causes_key`, a claim also returns {state, token, app config or false,
-- what the pool learned of the app (HGETALL of `app_key`:learned, see learned.py), cause
-- ids...}, the causes taken only when claimed (newest first, as mark.lua remembers them): what a
-- run needs to start, in the round trip that claims it.
local key, lease_ms = ARGV[2], tonumber(ARGV[3])
local app_key, causes_key = ARGV[4], ARGV[5]
local function answer(state, token)
  if state ~= 'claimed' then return {state, ''} end
  if not app_key then return {state, token} end
  local result = {state, token, redis.call('HGET', app_key, 'config'),
                  redis.call('HGETALL', app_key .. ':learned')}
  for _, id in ipairs(redis.call('LRANGE', causes_key, 0, -1)) do result[#result + 1] = id end
  redis.call('DEL', causes_key)
  return result
end
if redis.call('HEXISTS', P .. 'wq:owner', key) == 1 then return answer('busy') end
local due = redis.call('ZSCORE', P .. 'wq:delayed', key)
if due and tonumber(due) > now then return answer('delayed') end
if due then redis.call('ZREM', P .. 'wq:delayed', key) end
if not redis.call('ZSCORE', P .. 'wq:dirty', key) then return answer('clean') end
redis.call('ZREM', P .. 'wq:dirty', key)
local token = tostring(redis.call('HINCRBY', P .. 'wq:fence', key, 1))
redis.call('HSET', P .. 'wq:owner', key, token)
redis.call('ZADD', P .. 'wq:leases', now + lease_ms, key)
return answer('claimed', token)
