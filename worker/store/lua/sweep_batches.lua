-- ARGV: offset_ms, stale_ms, limit, queue (the ingest queue's list).
-- The sweeper's net for stored batches: returns the pending batches whose wake-up may be
-- lost, to be sent again, whether or not the ingest queue is empty.
-- `ingest:resend` (batch id -> when its stale clock starts) holds each pending batch from when
-- it is stored (store_batch.lua, store_replay.lua) until it is applied or parked (ingest.lua).
-- A batch stale_ms past its clock is sent again and its clock moved on as sweep.lua moves a
-- reconcile key's: by stale_ms when the queue is empty, else by the batch's age (since it was
-- stored: its score in `ingest:pending`, which never changes), so that behind a backlog the
-- re-sends come at doubling intervals (at most MAX_INTERVAL times stale_ms apart).
local stale_ms, limit, queue = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local MAX_INTERVAL = 32
local queue_empty = redis.call('LLEN', queue) == 0

-- A batch stored without a clock (by an older publisher) gets one once the queue is empty.
if queue_empty then
  local old = redis.call('ZRANGEBYSCORE', P .. 'ingest:pending', '-inf', now - stale_ms,
                         'WITHSCORES', 'LIMIT', 0, limit)
  for i = 1, #old, 2 do redis.call('ZADD', P .. 'ingest:resend', 'NX', old[i + 1], old[i]) end
end

local resend = {}
local due = redis.call('ZRANGEBYSCORE', P .. 'ingest:resend', '-inf', now - stale_ms,
                       'LIMIT', 0, limit)
for _, batch_id in ipairs(due) do
  local stored = redis.call('ZSCORE', P .. 'ingest:pending', batch_id)
  if not stored then
    redis.call('ZREM', P .. 'ingest:resend', batch_id)  -- applied or parked meanwhile
  else
    local clock = now
    if not queue_empty then
      clock = now + math.max(0, math.min(now - tonumber(stored), (MAX_INTERVAL - 1) * stale_ms))
    end
    redis.call('ZADD', P .. 'ingest:resend', clock, batch_id)
    resend[#resend + 1] = batch_id
  end
end
return resend
