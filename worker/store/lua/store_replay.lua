-- ARGV: offset_ms, batch_id, event_1..event_n (JSON). Store a batch for ingest without the
-- duplicate filter or the journal: a replay of the journal (rebuild) re-applies events that
-- were accepted before; the projection's last-writer-wins registers make that idempotent.
local batch_id = ARGV[2]
local events = {}
for i = 3, #ARGV do events[#events + 1] = ARGV[i] end
redis.call('SET', P .. 'batch:' .. batch_id, '[' .. table.concat(events, ',') .. ']')
redis.call('ZADD', P .. 'ingest:pending', now, batch_id)
redis.call('ZADD', P .. 'ingest:resend', now, batch_id)  -- the sweeper's clock for it
return #events
