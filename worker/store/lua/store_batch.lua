-- ARGV: offset_ms, batch_id, journal_maxlen, n, queue, wake-up message, then id_1..id_n,
-- event_1..event_n (JSON).
-- Make a batch durable: drop events whose id was accepted before (a duplicate changes
-- nothing), journal the others, store them as one batch, mark the batch pending (with its
-- publish time, and in `ingest:resend` for the sweeper: see sweep_batches.lua) and queue its
-- wake-up (a Celery message, pushed to the list `queue`; none if empty): the workers learn of
-- the batch in the same step. Returns the 0-based indexes of the duplicates.
--
-- A batch may hold several webhook requests, committed together (group commit): each is
-- stored all or nothing since the script is atomic. A request sent again (a retry, or a
-- replay of a signed request) is only duplicates: nothing of it is stored, and no wake-up.
--
-- The duplicate filter `ev:recent` (ZSET id -> acceptance time, ms) is bounded like the
-- journal: by age (`journal:max_age_ms`, set by journal.trim(), default 30 days) and by size
-- (journal_maxlen). Each call forgets the oldest ids beyond either bound, at most 2n + 100 of
-- them, so the work per call stays bounded. A duplicate older than that is accepted again,
-- and changes nothing (last-writer-wins registers).
local batch_id, maxlen, n = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local queue, wakeup = ARGV[5], ARGV[6]
local base = 6  -- ARGV[base + i] is id i, ARGV[base + n + i] event i
local max_age = tonumber(redis.call('GET', P .. 'journal:max_age_ms') or '') or 2592000000
local recent = P .. 'ev:recent'

local ids, seen = {}, {}
for i = 1, n do ids[i] = ARGV[base + i] end
for first = 1, n, 1000 do
  local last = math.min(n, first + 999)
  local scores = redis.call('ZMSCORE', recent, unpack(ids, first, last))
  for j = 1, last - first + 1 do
    if scores[j] then seen[ids[first + j - 1]] = true end
  end
end

local kept, added, duplicates = {}, {}, {}
for i = 1, n do
  local id, event = ids[i], ARGV[base + n + i]
  if seen[id] then
    duplicates[#duplicates + 1] = i - 1
  else
    seen[id] = true
    added[#added + 1] = now
    added[#added + 1] = id
    kept[#kept + 1] = event
    redis.call('XADD', P .. 'journal', 'MAXLEN', '~', maxlen, '*', 'e', event)
  end
end
if #kept > 0 then
  for first = 1, #added, 1000 do
    redis.call('ZADD', recent, unpack(added, first, math.min(#added, first + 999)))
  end
  local expired = redis.call('ZCOUNT', recent, '-inf', now - max_age)
  local over = redis.call('ZCARD', recent) - maxlen
  local forget = math.min(math.max(expired, over), 2 * n + 100)
  if forget > 0 then redis.call('ZREMRANGEBYRANK', recent, 0, forget - 1) end
  redis.call('SET', P .. 'batch:' .. batch_id, '[' .. table.concat(kept, ',') .. ']')
  redis.call('ZADD', P .. 'ingest:pending', now, batch_id)
  redis.call('ZADD', P .. 'ingest:resend', now, batch_id)  -- the sweeper's clock for it
  redis.call('HINCRBY', P .. 'counters', 'published', #kept)
  if wakeup ~= '' then redis.call('LPUSH', queue, wakeup) end
end
return duplicates
