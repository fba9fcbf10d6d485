-- ARGV: offset_ms, stale_ms, limit, queue_empty ('1' when the reconcile queue is empty).
-- The safety net of the workqueue: expired leases (a killed worker) and backoffs that are
-- due are made dirty again; a dirty key whose message may be lost (a message lost between
-- Redis and the broker, or with a worker) is sent again, whether or not the queue is empty.
-- Returns the keys that need a message.
--
-- A dirty key's score is when its stale clock starts: when its message was sent. A key
-- stale_ms past it, neither held nor waiting out a backoff, is sent again and its clock moved
-- on. With the queue empty, by stale_ms: a message is taken at once, so a key still dirty
-- stale_ms later lost that one too. Behind a backlog its message may only be waiting: by the
-- key's age (since its first message), so that it goes again when that message is stale_ms
-- old, then each time its age has doubled, plus stale_ms (intervals of 1, 2, 4... times
-- stale_ms, at most MAX_INTERVAL times): a wait W in the backlog costs the key about
-- log2(W / stale_ms + 1) duplicates, each answered 'clean' or 'busy' by claim.lua.
-- `wq:resend:<key>` ("<score> <first sent>", expiring) keeps when the key's first message was
-- sent, for as long as its score is the one set here: a key claimed and marked again since
-- has a new score, and starts afresh.
local stale_ms, limit, queue_empty = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == '1'
local MAX_INTERVAL = 32
for _, key in ipairs(redis.call('ZRANGEBYSCORE', P .. 'wq:leases', '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('HDEL', P .. 'wq:owner', key)
  redis.call('ZREM', P .. 'wq:leases', key)
  redis.call('ZADD', P .. 'wq:dirty', now, key)
  schedule[#schedule + 1] = key
end
for _, key in ipairs(redis.call('ZRANGEBYSCORE', P .. 'wq:delayed', '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', P .. 'wq:delayed', key)
  redis.call('ZADD', P .. 'wq:dirty', now, key)
  if redis.call('HEXISTS', P .. 'wq:owner', key) == 0 then schedule[#schedule + 1] = key end
end

-- When `key`, whose score is `score`, was first sent in its present dirty spell.
local function first_sent(key, score)
  local record = redis.call('GET', P .. 'wq:resend:' .. key)
  local at, since = string.match(record or '', '^(%d+) (%d+)$')
  if tonumber(at) == score then return tonumber(since) end
  return score
end

-- Send `key` (score `score`) again, and move its stale clock on.
local function resend(key, score)
  local record = P .. 'wq:resend:' .. key
  local clock = now
  if queue_empty then
    redis.call('DEL', record)
  else
    local since = first_sent(key, score)
    clock = now + math.max(0, math.min(now - since, (MAX_INTERVAL - 1) * stale_ms))
    redis.call('SET', record, string.format('%d %d', clock, since),
               'PX', clock - now + 2 * stale_ms)
  end
  redis.call('ZADD', P .. 'wq:dirty', clock, key)
  schedule[#schedule + 1] = key
end

local stale = redis.call('ZRANGEBYSCORE', P .. 'wq:dirty', '-inf', now - stale_ms,
                         'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #stale, 2 do
  local key, score = stale[i], tonumber(stale[i + 1])
  if redis.call('HEXISTS', P .. 'wq:owner', key) == 1
      or redis.call('ZSCORE', P .. 'wq:delayed', key) then
    -- Its holder sends it on release, the backoff when due: its clock only moves on, so that
    -- it does not hide the keys after it from this scan.
    redis.call('ZADD', P .. 'wq:dirty', now, key)
  else
    resend(key, score)
  end
end
return schedule
