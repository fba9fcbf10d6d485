-- ARGV: now_ms, app, interval_ms (1000 / rate), burst, probe_token, key
--       [, lease_ms, lease_token, doubt_set, doubt_member].
-- Take one request slot of an application for the whole pool, or reserve the next free one.
-- Returns 0 (go now) or the ms until the caller's reserved slot; the caller gives its key
-- back with that delay and, when it runs again, its reservation lets it through.
-- 1. A pause (Retry-After, or an open circuit breaker) stops every request of the app.
-- 2. After a breaker's pause, one request goes through as a probe; the others wait for it.
-- 3. GCRA: requests are spaced `interval` apart, with `burst` of them allowed at once;
--    reservations queue in order.
-- With `lease_ms` (not ''), the caller's lease of `key` is checked and renewed first, as
-- renew.lua does with its app: -1 when the lease was lost or the app is no longer active (no
-- slot is taken then). With `doubt_set` (not ''), a slot granted also marks `doubt_member` in
-- it: the write about to be sent is in doubt until its outcome is recorded (mirror.py).
-- One round trip per SCIM call for all three.
local app, interval, burst = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local probe, key = ARGV[5], ARGV[6]
local lease_ms, lease_token = ARGV[7], ARGV[8]
local doubt_set, doubt_member = ARGV[9], ARGV[10]
local base = P .. 'rl:' .. app

if lease_ms and lease_ms ~= '' then
  if redis.call('HGET', P .. 'wq:owner', key) ~= lease_token then return -1 end
  redis.call('ZADD', P .. 'wq:leases', now + tonumber(lease_ms), key)
  if redis.call('SISMEMBER', P .. 'apps:active', app) == 0 then return -1 end
end

-- The pacing clock is Redis's own: a worker's clock (another host's, or read before a delay
-- in the worker) would let slots bunch up.
local time = redis.call('TIME')
local clock = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

-- 4. A hard cap over the requests actually let through in the last second, plus 50 ms for
--    the spread of the trips to the app (grant to arrival measured 19 ms at p99.9 and 36 ms
--    at most, 10,000 users at 200/s): slots used late (a key coming back a little after its
--    reservation) can never bunch up beyond rate + burst in any one-second window. The GCRA
--    spaces requests so that the cap holds on its own (at 200/s: 5.12 ms apart, 195/s, not
--    5 ms): the cap then rarely refuses a slot, which would cost the key a second run.
local WINDOW = 1050
local cap = math.floor(1000 / interval + burst)
interval = math.max(interval, WINDOW / cap)
local function go()
  local log = base .. ':log'
  redis.call('ZREMRANGEBYSCORE', log, '-inf', clock - WINDOW)
  if redis.call('ZCARD', log) >= cap then
    local oldest = tonumber(redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')[2])
    local wait = math.max(1, oldest + WINDOW - clock)
    redis.call('HSET', base .. ':res', key, tostring(clock + wait))
    return math.ceil(wait)
  end
  redis.call('ZADD', log, clock, redis.call('INCR', base .. ':seq'))
  redis.call('PEXPIRE', log, WINDOW)
  return 0
end

local function slot()
  local paused_until = tonumber(redis.call('GET', base .. ':until') or '0')
  if paused_until > clock then return math.ceil(paused_until - clock) end
  local breaker = redis.call('GET', P .. 'cb:' .. app .. ':state')
  if breaker == 'open' then
    redis.call('SET', P .. 'cb:' .. app .. ':state', 'probing', 'PX', 30000)
    redis.call('SET', P .. 'cb:' .. app .. ':probe', probe, 'PX', 30000)
  elseif breaker == 'probing' then
    if redis.call('GET', P .. 'cb:' .. app .. ':probe') ~= probe then return 250 end
  end
  local reserved = redis.call('HGET', base .. ':res', key)
  if reserved then
    if tonumber(reserved) > clock then return math.ceil(tonumber(reserved) - clock) end
    redis.call('HDEL', base .. ':res', key)
    return go()
  end
  local tat = tonumber(redis.call('GET', base) or '0')
  if tat < clock then tat = clock end
  local new_tat = tat + interval
  redis.call('SET', base, tostring(new_tat), 'PX', math.ceil(new_tat - clock + burst * interval + 60000))
  local wait = new_tat - clock - burst * interval
  if wait <= 0 then return go() end
  redis.call('HSET', base .. ':res', key, tostring(clock + wait))
  return math.ceil(wait)
end

local wait = slot()
if wait == 0 and doubt_set and doubt_set ~= '' then
  redis.call('SADD', doubt_set, doubt_member)
end
return wait
