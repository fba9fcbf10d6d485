-- Shared prelude: mark reconcile keys dirty (the Kubernetes workqueue "Add").
-- A key already dirty is not scheduled again (coalescing); a key being reconciled is not
-- scheduled now: its holder reschedules it on release; a key waiting out a backoff stays dirty
-- and the sweeper schedules it when due. `schedule` collects the keys that need a message.
local P = 'prov:'
local now = tonumber(ARGV[1])
local schedule = {}
local marked = {}
local function mark_key(key)
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
