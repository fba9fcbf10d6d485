-- ARGV: offset_ms, app, user_id. What the projection says of a user for an app, in one trip:
-- {the user's hash (HGETALL's flat list), 1 when the app is associated with the user
-- directly else 0, then the groups that cover the user for the app: associated with it and
-- not deleted}.
local app, user = ARGV[2], ARGV[3]
local result = {redis.call('HGETALL', P .. 'u:' .. user), redis.call('SISMEMBER', P .. 'auc:' .. app, user)}
for _, g in ipairs(redis.call('SMEMBERS', P .. 'ug:' .. user)) do
  if redis.call('HEXISTS', P .. 'g:' .. g, 'del') == 0
      and redis.call('SISMEMBER', P .. 'ga:' .. g, app) == 1 then
    result[#result + 1] = g
  end
end
return result
