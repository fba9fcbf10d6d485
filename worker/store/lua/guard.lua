-- ARGV: offset_ms, app, key, detail, window_s, percent, minimum.
-- Count one destructive call of `key` in the app's window and say whether it must be held.
-- A key's place in the window is fixed when it first enters it, atomically, so concurrent
-- workers never both see the same place and let more than the threshold through.
-- Returns 0 (go ahead) or the threshold that holds it.
local app, key, detail = ARGV[2], ARGV[3], ARGV[4]
local window, percent, minimum = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local base = P .. 'guard:' .. app .. ':'
if redis.call('EXISTS', base .. 'approved') == 1 then return 0 end
local recent, places = base .. 'recent', base .. 'places'
redis.call('ZREMRANGEBYSCORE', recent, '-inf', now - window * 1000)
local place = redis.call('ZSCORE', recent, key) and redis.call('HGET', places, key)
if not place then
  redis.call('ZADD', recent, now, key)
  place = redis.call('ZCARD', recent) - 1
  redis.call('HSET', places, key, place)
end
redis.call('EXPIRE', recent, window)
redis.call('EXPIRE', places, window)
local users = redis.call('HLEN', P .. 'mirror:' .. app .. ':users')
local threshold = math.max(minimum, math.floor(users * percent / 100))
if tonumber(place) < threshold then return 0 end
redis.call('HSET', base .. 'held', key, detail)
return threshold
