-- ARGV: offset_ms, entries_hash, absent_set, doubt_set, n, then n pairs (id, JSON entry), then
-- ids found absent. What a listing of the application found, recorded for objects the mirror
-- knows nothing of (mirror.py, ``Mirror.seed``): an object that has an entry, or a write in
-- doubt, is left as it is (a reconcile got there first); an entry replaces a lookup's "none".
-- Returns {entries recorded, absences recorded}.
local hash, absent, doubt, n = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local function unknown(id)
  return redis.call('HEXISTS', hash, id) == 0 and redis.call('SISMEMBER', doubt, id) == 0
end
local saved, marked = 0, 0
for i = 0, n - 1 do
  local id, entry = ARGV[6 + 2 * i], ARGV[7 + 2 * i]
  if unknown(id) then
    redis.call('HSET', hash, id, entry)
    redis.call('SREM', absent, id)
    saved = saved + 1
  end
end
for i = 6 + 2 * n, #ARGV do
  if unknown(ARGV[i]) then marked = marked + redis.call('SADD', absent, ARGV[i]) end
end
return {saved, marked}
