-- ARGV: offset_ms, op, key. Since when a group waits for members on their way (sync/groups.py),
-- on Redis's clock: op 'start' notes that it waits from now on, unless it already did (the
-- release forgets it); op 'waited' returns for how many ms it has waited, or -1.
local key = P .. 'wq:deferred'
if ARGV[2] == 'start' then
  redis.call('HSETNX', key, ARGV[3], now)
  return 0
end
local since = redis.call('HGET', key, ARGV[3])
if not since then return -1 end
return math.max(0, now - tonumber(since))
