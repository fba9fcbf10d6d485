-- ARGV: now_ms, key, token, lease_ms. Take the lease of a dirty key.
-- Returns 'claimed', 'busy' (another worker holds it: it will reschedule on release),
-- 'delayed' (waiting out a backoff) or 'clean' (nothing to do: a duplicate message).
local key, token, lease_ms = ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('HEXISTS', P .. 'wq:owner', key) == 1 then return 'busy' end
local due = redis.call('ZSCORE', P .. 'wq:delayed', key)
if due and tonumber(due) > now then return 'delayed' end
if due then redis.call('ZREM', P .. 'wq:delayed', key) end
if not redis.call('ZSCORE', P .. 'wq:dirty', key) then return 'clean' end
redis.call('ZREM', P .. 'wq:dirty', key)
redis.call('HSET', P .. 'wq:owner', key, token)
redis.call('ZADD', P .. 'wq:leases', now + lease_ms, key)
return 'claimed'
