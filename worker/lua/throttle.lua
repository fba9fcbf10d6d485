-- ARGV: now_ms, app, interval_ms (1000 / rate), burst, probe_token.
-- Take one request slot of an application for the whole pool, or say how long to wait (ms).
-- 1. A pause (Retry-After, or an open circuit breaker) stops every request of the app.
-- 2. After a breaker's pause, one request goes through as a probe; the others wait for it.
-- 3. GCRA: requests are spaced `interval` apart, with `burst` of them allowed at once, so any
--    one-second window holds at most rate + burst requests.
local app, interval, burst, probe = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local base = P .. 'rl:' .. app
local paused_until = tonumber(redis.call('GET', base .. ':until') or '0')
if paused_until > now then return math.ceil(paused_until - now) end
local breaker = redis.call('GET', P .. 'cb:' .. app .. ':state')
if breaker == 'open' then
  redis.call('SET', P .. 'cb:' .. app .. ':state', 'probing', 'PX', 30000)
  redis.call('SET', P .. 'cb:' .. app .. ':probe', probe, 'PX', 30000)
elseif breaker == 'probing' then
  if redis.call('GET', P .. 'cb:' .. app .. ':probe') ~= probe then return 250 end
end
local tat = tonumber(redis.call('GET', base) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local wait = new_tat - now - burst * interval
if wait > 0 then return math.ceil(wait) end
redis.call('SET', base, tostring(new_tat), 'PX', math.ceil(burst * interval + 1000))
return 0
