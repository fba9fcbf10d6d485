-- ARGV: now_ms, stale_ms, limit, resend_stale (1 when the reconcile queue is empty).
-- The safety net of the workqueue: expired leases (a killed worker) and backoffs that are
-- due are made dirty again; dirty keys whose message was sent long ago while the queue is
-- empty (a message lost between Redis and the broker) are sent again.
local stale_ms, limit, resend = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == '1'
for _, key in ipairs(redis.call('ZRANGEBYSCORE', P .. 'wq:leases', '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('HDEL', P .. 'wq:owner', key)
  redis.call('ZREM', P .. 'wq:leases', key)
  redis.call('ZADD', P .. 'wq:dirty', now, key)
  schedule[#schedule + 1] = key
end
for _, key in ipairs(redis.call('ZRANGEBYSCORE', P .. 'wq:delayed', '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', P .. 'wq:delayed', key)
  redis.call('ZADD', P .. 'wq:dirty', now, key)
  if redis.call('HEXISTS', P .. 'wq:owner', key) == 0 then schedule[#schedule + 1] = key end
end
if resend then
  for _, key in ipairs(redis.call('ZRANGEBYSCORE', P .. 'wq:dirty', '-inf', now - stale_ms, 'LIMIT', 0, limit)) do
    if redis.call('HEXISTS', P .. 'wq:owner', key) == 0
        and not redis.call('ZSCORE', P .. 'wq:delayed', key) then
      redis.call('ZADD', P .. 'wq:dirty', now, key)
      schedule[#schedule + 1] = key
    end
  end
end
return schedule
