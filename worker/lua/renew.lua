-- ARGV: now_ms, key, token, lease_ms. Extend a lease still held; 0 when it was lost.
local key, token, lease_ms = ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('HGET', P .. 'wq:owner', key) ~= token then return 0 end
redis.call('ZADD', P .. 'wq:leases', now + lease_ms, key)
return 1
