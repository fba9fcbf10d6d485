-- ARGV: offset_ms, key, token, lease_ms[, app[, doubt_set, doubt_member[, creating, name]]].
-- Extend a lease still held; 0 when it was lost, or (with `app`, not '') when that app's
-- integration is no longer active: its work stops at once. With `doubt_set`, the write about to
-- be sent (in a Bulk request, which takes the request slot for it) is marked in doubt, and with
-- `creating` (not ''), the name a create is sent with is kept there (mirror.py).
local key, token, lease_ms, app = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local doubt_set, doubt_member, creating, name = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
if redis.call('HGET', P .. 'wq:owner', key) ~= token then return 0 end
redis.call('ZADD', P .. 'wq:leases', now + lease_ms, key)
if app and app ~= '' and redis.call('SISMEMBER', P .. 'apps:active', app) == 0 then return 0 end
if doubt_set and doubt_set ~= '' then redis.call('SADD', doubt_set, doubt_member) end
if creating and creating ~= '' then redis.call('HSET', creating, doubt_member, name) end
return 1
