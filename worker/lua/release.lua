-- ARGV: now_ms, key, token, delay_ms. Give a lease back.
-- delay_ms > 0 keeps the key dirty and lets it run again only after the delay (a backoff).
-- Returns 'lost' (the lease had expired and was taken over), 'delayed', 'reschedule' (it was
-- dirtied while being reconciled: the caller sends a message) or 'done'.
local key, token, delay_ms = ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('HGET', P .. 'wq:owner', key) ~= token then return 'lost' end
redis.call('HDEL', P .. 'wq:owner', key)
redis.call('ZREM', P .. 'wq:leases', key)
if delay_ms > 0 then
  redis.call('ZADD', P .. 'wq:delayed', now + delay_ms, key)
  redis.call('ZADD', P .. 'wq:dirty', 'NX', now, key)
  return 'delayed'
end
if redis.call('ZSCORE', P .. 'wq:dirty', key) then
  redis.call('ZADD', P .. 'wq:dirty', now, key)
  return 'reschedule'
end
return 'done'
