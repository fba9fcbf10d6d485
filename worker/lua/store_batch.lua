-- ARGV: now_ms, batch_id, journal_maxlen, n, id_1..id_n, event_1..event_n (JSON).
-- Make a batch durable: drop events whose id was accepted before (a duplicate changes
-- nothing), journal the others, store them as one batch and mark the batch pending.
-- Returns the 0-based indexes of the duplicates.
--
-- The duplicate filter is bounded like the journal, by age and by size. Accepted ids go to the
-- newest of at most SLOTS + 1 buckets (SETs `ev:seen:<ms it opened>`, listed newest first in
-- `ev:seen:buckets`). A bucket expires max_age after its last write; a new one opens once the
-- newest is max_age / SLOTS old or holds maxlen / SLOTS ids, and the oldest beyond SLOTS + 1 is
-- dropped. An id is remembered for max_age unless ~maxlen ids came after it; an older duplicate
-- is accepted again, and changes nothing (last-writer-wins registers).
local SLOTS = 30
local batch_id, maxlen, n = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local max_age = tonumber(redis.call('GET', P .. 'journal:max_age_ms') or '') or 2592000000
local buckets = P .. 'ev:seen:buckets'
local function bucket(number) return P .. 'ev:seen:' .. number end

-- Forget buckets that expired: with the expiry renewed at each write, the oldest go first.
local live = redis.call('LRANGE', buckets, 0, -1)
while #live > 0 and redis.call('EXISTS', bucket(live[#live])) == 0 do
  redis.call('RPOP', buckets)
  live[#live] = nil
end

local ids = {}
for i = 1, n do ids[i] = ARGV[4 + i] end
local seen = {}
for _, number in ipairs(live) do
  for first = 1, n, 1000 do
    local last = math.min(n, first + 999)
    local hits = redis.call('SMISMEMBER', bucket(number), unpack(ids, first, last))
    for j, hit in ipairs(hits) do
      if hit == 1 then seen[ids[first + j - 1]] = true end
    end
  end
end

local kept, added, duplicates = {}, {}, {}
for i = 1, n do
  local id, event = ids[i], ARGV[4 + n + i]
  if seen[id] then
    duplicates[#duplicates + 1] = i - 1
  else
    seen[id] = true
    added[#added + 1] = id
    kept[#kept + 1] = event
    redis.call('XADD', P .. 'journal', 'MAXLEN', '~', maxlen, '*', 'e', event)
  end
end
if #kept > 0 then
  local head = live[1]
  if not head or now - tonumber(head) >= max_age / SLOTS
      or redis.call('SCARD', bucket(head)) >= maxlen / SLOTS then
    head = string.format('%d', math.max(now, (tonumber(head) or 0) + 1))
    redis.call('LPUSH', buckets, head)
    while redis.call('LLEN', buckets) > SLOTS + 1 do
      redis.call('UNLINK', bucket(redis.call('RPOP', buckets)))
    end
  end
  for first = 1, #added, 1000 do
    redis.call('SADD', bucket(head), unpack(added, first, math.min(#added, first + 999)))
  end
  redis.call('PEXPIRE', bucket(head), max_age)
  redis.call('SET', P .. 'batch:' .. batch_id, '[' .. table.concat(kept, ',') .. ']')
  redis.call('ZADD', P .. 'ingest:pending', now, batch_id)
  redis.call('HINCRBY', P .. 'counters', 'published', #kept)
end
return duplicates
