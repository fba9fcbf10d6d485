-- ARGV: now_ms, batch_id, journal_maxlen, n, id_1..id_n, event_1..event_n (JSON).
-- Make a batch durable: drop events whose id was accepted before (a duplicate changes
-- nothing), journal the others, store them as one batch and mark the batch pending.
-- Returns the 0-based indexes of the duplicates.
local batch_id, maxlen, n = ARGV[2], ARGV[3], tonumber(ARGV[4])
local kept, duplicates = {}, {}
for i = 1, n do
  if redis.call('SADD', P .. 'ev:seen', ARGV[4 + i]) == 1 then
    kept[#kept + 1] = ARGV[4 + n + i]
    redis.call('XADD', P .. 'journal', 'MAXLEN', '~', maxlen, '*', 'e', ARGV[4 + n + i])
  else
    duplicates[#duplicates + 1] = i - 1
  end
end
if #kept > 0 then
  redis.call('SET', P .. 'batch:' .. batch_id, '[' .. table.concat(kept, ',') .. ']')
  redis.call('ZADD', P .. 'ingest:pending', now, batch_id)
  redis.call('HINCRBY', P .. 'counters', 'published', #kept)
end
return duplicates
