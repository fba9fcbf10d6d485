-- ARGV: offset_ms, key, token, doubt_set, doubt_member, then commands, each as its length n
-- and n words (name, arguments). The writes of a run (the mirror's record of a call's outcome
-- and its audit entry, mirror.py and fence.py), applied in order only while `token` is the
-- key's current one (claim.lua). Returns {'ok'}, or {'lost', keys that need a message...}:
-- nothing was written, but the call whose outcome it recorded may have changed the
-- application, so `doubt_member` is marked in doubt in `doubt_set` and the key dirty: the
-- current holder (or the next run) reads the object back before planning.
local key, token = ARGV[2], ARGV[3]
if redis.call('HGET', P .. 'wq:owner', key) ~= token then
  if ARGV[4] ~= '' then redis.call('SADD', ARGV[4], ARGV[5]) end
  mark_key(key)
  local result = {'lost'}
  for _, k in ipairs(schedule) do result[#result + 1] = k end
  return result
end
local i = 6
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return {'ok'}
