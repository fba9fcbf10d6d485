-- Shared prelude: mark reconcile keys dirty (the Kubernetes workqueue "Add").
-- A key already dirty is not scheduled again (coalescing); a key being reconciled is not
-- scheduled now: its holder reschedules it on release; a key waiting out a backoff stays dirty
-- and the sweeper schedules it when due. `schedule` collects the keys that need a message.
local P = 'prov:'
-- One clock for the pool: Redis's (TIME), never a worker's, for every lease, backoff, dirty
-- time, heartbeat and age. ARGV[1] is an offset in ms added to it: 0, but in tests, which move
-- the time on without sleeping (tests/support/clock.py). `redis_now` is TIME itself.
local function redis_time_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local redis_now = redis_time_ms()
local now = redis_now + tonumber(ARGV[1])
local schedule = {}
local marked = {}
-- Causes: while ingest.lua applies an event it sets `cause` to the event's id (with when it
-- occurred and was accepted, for the sync lag), and every key it marks remembers it (newest
-- first, the last 20, for a day) until the key's next reconcile takes them for its audit
-- entries (claim.lua hands them over; the runner keeps the ids, metrics.Cause).
local cause = nil
local caused = {}
local function remember_cause(key)
  if caused[key] == cause then return end
  local list = P .. 'wq:cause:' .. key
  redis.call('LPUSH', list, cause)
  if caused[key] == nil then
    redis.call('LTRIM', list, 0, 19)
    redis.call('EXPIRE', list, 86400)
  end
  caused[key] = cause
end
local function mark_key(key)
  if cause then remember_cause(key) end
  if marked[key] then return end
  marked[key] = true
  local added = redis.call('ZADD', P .. 'wq:dirty', 'NX', now, key)
  if added == 1
      and redis.call('HEXISTS', P .. 'wq:owner', key) == 0
      and not redis.call('ZSCORE', P .. 'wq:delayed', key) then
    schedule[#schedule + 1] = key
  end
end
local function mark(app, kind, id)
  mark_key(app .. ' ' .. kind .. ' ' .. id)
end
