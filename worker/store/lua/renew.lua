-- ARGV: offset_ms, key, token, lease_ms[, app]. Extend a lease still held; 0 when it was lost,
-- or (with `app`) when that app's integration is no longer active: its work stops at once.
local key, token, lease_ms, app = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
if redis.call('HGET', P .. 'wq:owner', key) ~= token then return 0 end
redis.call('ZADD', P .. 'wq:leases', now + lease_ms, key)
if app and redis.call('SISMEMBER', P .. 'apps:active', app) == 0 then return 0 end
return 1
