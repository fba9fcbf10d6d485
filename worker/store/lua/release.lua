-- ARGV: offset_ms, key, token, delay_ms, succeeded, breaker_app, forget_deferral, keep_causes,
--       park_reason, n, cause_1 .. cause_n, follow_up...
-- Give a lease back, at the end of a run, in one round trip.
-- Returns {state, follow-up keys that need a message...}; state is 'lost' (the token is no
-- longer the key's: the lease expired and may have been taken over; nothing at all is changed
-- then), 'delayed', 'reschedule' (it was dirtied while being reconciled: the caller sends a
-- message) or 'done'.
-- Only with the key's current token (fenced, as the run's writes are: fenced.lua):
-- `succeeded` ('1') forgets the key's failures and parking; `park_reason` (not '') parks the
-- key (a permanent failure: no retry until it changes again); `breaker_app` (not '') closes
-- that app's circuit breaker (a call went through); `forget_deferral` ('1') forgets since
-- when the key waited for members (sync/groups.py); each `follow_up` key is marked dirty
-- (while we still hold the lease: never a moment with nothing dirty and nothing in flight).
-- delay_ms > 0 keeps the key dirty and lets it run again only after the delay (a backoff).
-- The run's causes (event ids, oldest first) are handed on to its follow-ups, and back to the
-- key itself when `keep_causes` is '1' (a run cut short: its next attempt answers them), as
-- audit.py keeps them: newest first, the last 20, for a day.
local key, token, delay_ms = ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('HGET', P .. 'wq:owner', key) ~= token then return {'lost'} end
if ARGV[5] == '1' then
  redis.call('HDEL', P .. 'wq:attempts', key)
  redis.call('HDEL', P .. 'wq:parked', key)
end
if ARGV[9] ~= '' then
  redis.call('HSET', P .. 'wq:parked', key, ARGV[9])
  redis.call('HDEL', P .. 'wq:attempts', key)
end
if ARGV[6] ~= '' then
  local cb = P .. 'cb:' .. ARGV[6]
  redis.call('DEL', cb .. ':fails', cb .. ':state', cb .. ':probe', cb .. ':cooldown')
end
if ARGV[7] == '1' then redis.call('HDEL', P .. 'wq:deferred', key) end
local n = tonumber(ARGV[10])
local causes = {}
for i = 11, 10 + n do causes[#causes + 1] = ARGV[i] end
local function give_causes(k)
  if n == 0 then return end
  local list = P .. 'wq:cause:' .. k
  redis.call('LPUSH', list, unpack(causes))
  redis.call('LTRIM', list, 0, 19)
  redis.call('EXPIRE', list, 86400)
end
if ARGV[8] == '1' then give_causes(key) end
for i = 11 + n, #ARGV do
  mark_key(ARGV[i])
  give_causes(ARGV[i])
end
local function answer(state)
  local result = {state}
  for _, k in ipairs(schedule) do result[#result + 1] = k end
  return result
end
-- the follow-ups were marked while the key was still held: release it only now
redis.call('HDEL', P .. 'wq:owner', key)
redis.call('ZREM', P .. 'wq:leases', key)
if delay_ms > 0 then
  redis.call('ZADD', P .. 'wq:delayed', now + delay_ms, key)
  redis.call('ZADD', P .. 'wq:dirty', 'NX', now, key)
  return answer('delayed')
end
if redis.call('ZSCORE', P .. 'wq:dirty', key) then
  redis.call('ZADD', P .. 'wq:dirty', now, key)
  return answer('reschedule')
end
return answer('done')
