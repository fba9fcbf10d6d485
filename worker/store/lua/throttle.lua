-- The pace of an application for the whole pool. ARGV: offset_ms, app, then one of
--   interval_ms (1000 / rate), burst, probe_token, key [, lease_ms, lease_token, doubt_set,
--     doubt_member [, creating, name]]: take one request slot, or reserve the next free one
--     (below); a slot granted marks the doubt, and keeps a create's name in `creating`;
--   'pause', ms: no request of the app for ms (Retry-After, an open breaker), on Redis's
--     clock; never shortens a longer pause;
--   'refused': the app answered 429: the pool's pace for it comes down; returns the share;
--   'pace', interval_ms, burst: what was learned, for `status`.
--
-- Taking a slot returns 0 (go now) or the ms until the caller's reserved slot; the caller
-- gives its key back with that delay and, when it runs again, its reservation lets it through.
-- 1. A pause (Retry-After, or an open circuit breaker) stops every request of the app.
-- 2. After a breaker's pause, one request goes through as a probe; the others wait for it.
-- 3. GCRA: requests are spaced `interval` apart, with `burst` of them allowed at once;
--    reservations queue in order.
-- 4. A hard cap on the requests let through in any 1.05 s (below).
-- 5. From an app's first 429 on, a second GCRA over the requests actually let through, with
--    the app's own figures: a replica of its token bucket (below).
-- With `lease_ms` (not ''), the caller's lease of `key` is checked and renewed first, as
-- renew.lua does with its app: -1 when the lease was lost or the app is no longer active (no
-- slot is taken then). With `doubt_set` (not ''), a slot granted also marks `doubt_member` in
-- it: the write about to be sent is in doubt until its outcome is recorded (mirror.py).
-- One round trip per SCIM call for all three.
--
-- What the app's 429s teach, hash rl:<app>:pace (absent until the first 429):
--   share, v, t  at Redis time t the share of the configured pace the pool keeps was
--                `share` (FLOOR to 1) and the schedule's clock read `v` (below)
--   knee         the share climbs FAST up to it (just below where the last 429 came), SLOW
--                above, up to 1
--   cut          Redis time of the last decrease
--   refused      the 429s counted; from the first on, the app counts as exact (5., MARGIN,
--                SPREAD)
-- The schedule runs on a clock of its own, V, which goes at the learned share of Redis's
-- clock's pace, climb included (V is Redis's clock until a first 429). Its slots and
-- reservations are instants of V, and a key is told when V will reach its slot assuming the
-- climb goes on: it comes back on time as the pace climbs. A 429 slows V at once: every
-- reservation handed out moves later (a backlog holds them many seconds ahead), and a key
-- that comes back too early is told to wait some more.
local app, op = ARGV[2], ARGV[3]
local base = P .. 'rl:' .. app
local pace_key = base .. ':pace'

local FLOOR = 0.1 -- the share never goes below a tenth of the configured pace
local DOWN = 0.8 -- a 429 takes the share down by a fifth ...
local HOLD = 1000 -- ... once a second at most: the 429s of requests sent before it teach nothing
local KNEE = 0.95 -- then it climbs back fast to 95 % of the share that was refused ...
local FAST = 0.05 / 1000 -- ... at 5 % of the configured pace per second ...
local SLOW = 0.01 / 1000 -- ... and probes beyond it at 1 % per second, up to the configured pace
-- An app that refused a request may count exactly, like a token bucket of `burst` that
-- refuses a request arriving a hair early with respect to the others; and the trips to the
-- app vary by milliseconds (more under load). Such an app is paced 1 % under its rate, with
-- 40 ms less tolerance than its burst: the app's bucket keeps that much in hand.
local MARGIN = 0.99
local SPREAD = 40
local EPS = 0.01 -- ms: intervals are not whole numbers, nor their sums exact

if op ~= 'pause' and op ~= 'refused' and op ~= 'pace' then
  local lease_ms, lease_token, key = ARGV[7], ARGV[8], ARGV[6]
  if lease_ms and lease_ms ~= '' then
    if redis.call('HGET', P .. 'wq:owner', key) ~= lease_token then return -1 end
    redis.call('ZADD', P .. 'wq:leases', now + tonumber(lease_ms), key)
    if redis.call('SISMEMBER', P .. 'apps:active', app) == 0 then return -1 end
  end
end

-- The pacing clock is Redis's own (TIME, read by the prelude), without the tests' offset: a
-- worker's clock (another host's, or read before a delay in the worker) would let slots bunch up.
local clock = redis_now

if op == 'pause' then
  local ms = tonumber(ARGV[4])
  local till = clock + ms
  if tonumber(redis.call('GET', base .. ':until') or '0') < till then
    redis.call('SET', base .. ':until', till, 'PX', ms + 1000)
  end
  return 0
end

local state = redis.call('HMGET', pace_key, 'share', 'v', 't', 'knee', 'cut', 'refused')
local refused = tonumber(state[6]) or 0
local strict = refused > 0
local knee = tonumber(state[4]) or 1

-- The climb from share `s`: phases of {ms, share at their start, share gained per ms}.
local function phases(s)
  local out = {}
  if s < knee then
    out[#out + 1] = { (knee - s) / FAST, s, FAST }
    s = knee
  end
  if s < 1 then out[#out + 1] = { (1 - s) / SLOW, s, SLOW } end
  out[#out + 1] = { math.huge, math.max(s, 1), 0 }
  return out
end
-- What V gains in `ms` from share `s`, and the share then.
local function gained(s, ms)
  local v = 0
  for _, p in ipairs(phases(s)) do
    local d = math.min(ms, p[1])
    v, ms = v + p[2] * d + p[3] * d * d / 2, ms - d
    if ms <= 0 then return v, p[2] + p[3] * d end
  end
end
-- The ms V takes to gain `dv` from share `s`.
local function needed(s, dv)
  local ms = 0
  for _, p in ipairs(phases(s)) do
    local d, s1, climb = p[1], p[2], p[3]
    if climb == 0 then return ms + dv / s1 end
    local whole = s1 * d + climb * d * d / 2
    if dv <= whole then return ms + (math.sqrt(s1 * s1 + 2 * climb * dv) - s1) / climb end
    dv, ms = dv - whole, ms + d
  end
end

local anchor_t = tonumber(state[3]) or clock
local gain, share = gained(tonumber(state[1]) or 1, math.max(0, clock - anchor_t))
local vclock = (tonumber(state[2]) or clock) + gain

local function num(x) return string.format('%.17g', x) end -- tostring keeps 14 digits

if op == 'refused' then
  local s, cut = share, tonumber(state[5]) or 0
  local fields = { 'refused', refused + 1 }
  if clock - cut >= HOLD then
    s = math.max(FLOOR, share * DOWN)
    for _, field in ipairs({ 'knee', num(KNEE * share), 'cut', clock }) do
      fields[#fields + 1] = field
    end
  end
  redis.call('HSET', pace_key, 'share', num(s), 'v', num(vclock), 't', clock, unpack(fields))
  return num(s)
end

local at = op == 'pace' and 4 or 3
local interval, burst = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
-- 4. A hard cap over the requests actually let through in the last second, plus 50 ms for
--    the spread of the trips to the app (grant to arrival measured 19 ms at p99.9 and 36 ms
--    at most, 10,000 users at 200/s): slots used late (a key coming back a little after its
--    reservation) can never bunch up beyond rate + burst in any one-second window. The GCRA
--    spaces requests so that the cap holds on its own (at 200/s: 5.12 ms apart, 195/s, not
--    5 ms): the cap then rarely refuses a slot, which would cost the key a second run.
local WINDOW = 1050
local cap = math.floor(1000 / interval + burst)
interval = math.max(interval / (strict and MARGIN or 1), WINDOW / cap)

if op == 'pace' then
  local cut = tonumber(state[5])
  local paused = tonumber(redis.call('GET', base .. ':until') or '0') - clock
  return { num(share), num(1000 / interval * share), num(1000 / interval), refused,
    cut and clock - cut or -1, math.max(0, paused) }
end

local probe, key = ARGV[5], ARGV[6]
local doubt_set, doubt_member = ARGV[9], ARGV[10]

-- The burst allowed at once, in ms of V: an exact app's bucket keeps SPREAD in hand.
local tolerance = burst * interval
if strict then tolerance = math.max(interval, tolerance - SPREAD) end
-- The ms until V reaches `at` (the climb going on), and V in `ms`.
local function ms_until(at) return at > vclock and needed(share, at - vclock) or 0 end
local function v_in(ms) return vclock + gained(share, ms) end
local function expire(at) return math.ceil(ms_until(at + tolerance) + 60000) end

-- 3. The schedule: the next slot, or a reservation of it.
local schedule
-- 4. and 5.: the slot is used now, if the cap and (exact apps) the replica of the bucket allow.
local function go(fresh)
  local log = base .. ':log'
  redis.call('ZREMRANGEBYSCORE', log, '-inf', clock - WINDOW)
  if redis.call('ZCARD', log) >= cap then
    local oldest = tonumber(redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')[2])
    local wait = math.max(1, oldest + WINDOW - clock)
    redis.call('HSET', base .. ':res', key, num(v_in(wait)))
    return math.ceil(wait)
  end
  if strict then
    -- 5. The schedule assumes each slot is used when due, but a key may come back late (a
    --    busy worker, a stalled host, the end of a pause) and meet on-time ones, which would
    --    empty the app's bucket. So the requests let through are paced once more, as they
    --    happen; a key that comes too soon takes a new place in the schedule (never an
    --    instant another key waits for: no crowd retrying). A slot fresh from the schedule
    --    fits, the schedule never running behind `gat`.
    local gat = math.max(tonumber(redis.call('GET', base .. ':gat') or '0'), vclock)
    local wait = gat + interval - vclock - tolerance
    if wait > EPS then
      if not fresh then return schedule() end
      redis.call('HSET', base .. ':res', key, num(vclock + wait))
      return math.ceil(ms_until(vclock + wait))
    end
    redis.call('SET', base .. ':gat', num(gat + interval), 'PX', expire(gat + interval))
  end
  redis.call('ZADD', log, clock, redis.call('INCR', base .. ':seq'))
  redis.call('PEXPIRE', log, WINDOW)
  return 0
end

schedule = function()
  local tat = tonumber(redis.call('GET', base) or '0')
  if strict then tat = math.max(tat, tonumber(redis.call('GET', base .. ':gat') or '0')) end
  if tat < vclock then tat = vclock end
  local new_tat = tat + interval
  redis.call('SET', base, num(new_tat), 'PX', expire(new_tat))
  local wait = new_tat - vclock - tolerance
  if wait <= EPS then return go(true) end
  redis.call('HSET', base .. ':res', key, num(vclock + wait))
  return math.ceil(ms_until(vclock + wait))
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
    if tonumber(reserved) > vclock + EPS then return math.ceil(ms_until(tonumber(reserved))) end
    redis.call('HDEL', base .. ':res', key)
    return go(false)
  end
  return schedule()
end

local wait = slot()
if wait == 0 and doubt_set and doubt_set ~= '' then
  redis.call('SADD', doubt_set, doubt_member)
  local creating, name = ARGV[11], ARGV[12]
  if creating and creating ~= '' then redis.call('HSET', creating, doubt_member, name) end
end
return wait
