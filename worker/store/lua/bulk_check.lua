-- ARGV: offset_ms, app, form, object, ttl_s. Before a write of `form` (`POST /Groups`)
-- travels in a Bulk request (sync/bulk.py), in one round trip: 'held' when the pool learned
-- that the app holds such writes as sent; else 'read back' when this write claims the form's
-- check (one at a time, for ttl_s); else 'unchecked', and `object` (`user:<id>`, if any) is
-- remembered for the check that is running, before its own write is sent.
local app, form = ARGV[2], ARGV[3]
if redis.call('HEXISTS', P .. 'app:' .. app .. ':learned', 'bulk_held:' .. form) == 1 then
  return 'held'
end
local check = P .. 'app:' .. app .. ':bulk:check:' .. form
if redis.call('SET', check, '1', 'NX', 'EX', tonumber(ARGV[5])) then
  return 'read back'
end
if ARGV[4] ~= '' then  -- kept a day at most: a check lost with its worker is claimed again
  local unchecked = P .. 'app:' .. app .. ':bulk:unchecked:' .. form
  redis.call('SADD', unchecked, ARGV[4])
  redis.call('EXPIRE', unchecked, 86400)
end
return 'unchecked'
