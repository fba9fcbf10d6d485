-- ARGV: offset_ms, app, group_id. What the projection says of a group for an app, in one trip:
-- {the group's hash (HGETALL's flat list), 1 when the group is associated with the app else
-- 0, then its members that are not deleted}.
local app, group = ARGV[2], ARGV[3]
local result = {redis.call('HGETALL', P .. 'g:' .. group), redis.call('SISMEMBER', P .. 'agc:' .. app, group)}
for _, u in ipairs(redis.call('SMEMBERS', P .. 'gmc:' .. group)) do
  if redis.call('HEXISTS', P .. 'u:' .. u, 'del') == 0 then result[#result + 1] = u end
end
return result
