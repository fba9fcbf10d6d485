-- Apply one stored batch of events to the directory projection, atomically, and mark the
-- reconcile keys whose desired state may have changed. ARGV: offset_ms, batch_id.
-- Every register is last-writer-wins by the event's version "<17-digit µs> <event id>";
-- deletion is terminal: later events about a deleted id are recorded as ignored.
-- Returns {applied, stale, ignored, key...} where key... need a reconcile message.
--
-- The batch leaves `ingest:pending` (and the sweeper's `ingest:resend`, see sweep_batches.lua)
-- in this step, after it is applied, never before: a run that fails leaves it pending, to be
-- sent again, and applying it again is harmless (last-writer-wins). A batch that is not a v1
-- batch is parked whole, before anything is applied (`ingest:parked`, with the reason).
local batch_id = ARGV[2]

local function forget_batch()
  redis.call('DEL', P .. 'batch:' .. batch_id)
  redis.call('ZREM', P .. 'ingest:pending', batch_id)
  redis.call('ZREM', P .. 'ingest:resend', batch_id)
end

local raw = redis.call('GET', P .. 'batch:' .. batch_id)
if not raw then  -- applied already: this was a duplicate wake-up
  forget_batch()
  return {0, 0, 0}
end

local active = {}
local has_active = false
for _, a in ipairs(redis.call('SMEMBERS', P .. 'apps:active')) do
  active[a] = true
  has_active = true
end

local applied, stale, ignored = 0, 0, 0

local function user_deleted(u) return redis.call('HEXISTS', P .. 'u:' .. u, 'del') == 1 end
local function group_deleted(g) return redis.call('HEXISTS', P .. 'g:' .. g, 'del') == 1 end

local skipped = false
local function ignore(ev, reason)
  skipped = true
  ignored = ignored + 1
  redis.call('LPUSH', P .. 'ignored', cjson.encode({id = ev.id, type = ev.type, reason = reason}))
  redis.call('LTRIM', P .. 'ignored', 0, 999)
end

-- Active apps that cover user u directly or through one of its groups.
local function mark_user_everywhere(u)
  local apps = {}
  for _, a in ipairs(redis.call('SMEMBERS', P .. 'ua:' .. u)) do apps[a] = true end
  for _, g in ipairs(redis.call('SMEMBERS', P .. 'ug:' .. u)) do
    for _, a in ipairs(redis.call('SMEMBERS', P .. 'ga:' .. g)) do apps[a] = true end
  end
  for a in pairs(apps) do
    if active[a] then mark(a, 'user', u) end
  end
end

local function mark_group_and_members(a, g)
  if not active[a] then return end
  mark(a, 'group', g)
  for _, u in ipairs(redis.call('SMEMBERS', P .. 'gmc:' .. g)) do mark(a, 'user', u) end
end

-- A flag register "<0|1><version>" in a hash field. Returns (newer, flag_changed).
local function set_flag(hash, field, v, flag)
  local old = redis.call('HGET', hash, field)
  if old and v <= string.sub(old, 2) then return false, false end
  redis.call('HSET', hash, field, flag .. v)
  local was = old and string.sub(old, 1, 1) or '0'
  return true, was ~= flag
end

-- A pair of index sets kept equal to the registers whose flag is 1.
local function index(flag, set_a, member_a, set_b, member_b)
  if flag == '1' then
    redis.call('SADD', set_a, member_a)
    redis.call('SADD', set_b, member_b)
  else
    redis.call('SREM', set_a, member_a)
    redis.call('SREM', set_b, member_b)
  end
end

-- A value register: fields `name` and `name_v` of a hash. Returns (newer, value_changed).
local function set_value(hash, name, v, value)
  local old_v = redis.call('HGET', hash, name .. '_v')
  if old_v and v <= old_v then return false, false end
  local old = redis.call('HGET', hash, name)
  redis.call('HSET', hash, name, value, name .. '_v', v)
  return true, old ~= value
end

-- The text fields of `data` each type reads ({'user', 'id'}: data.user.id), so that no event
-- can stop the script half way through the batch.
local USER_RECORD = {{'user', 'id'}, {'user', 'state'}}
local fields = {
  ['user.created'] = USER_RECORD, ['user.updated'] = USER_RECORD,
  ['user.suspended'] = {{'user_id'}}, ['user.activated'] = {{'user_id'}},
  ['user.deleted'] = {{'user_id'}},
  ['group.created'] = {{'group', 'id'}, {'group', 'name'}},
  ['group.renamed'] = {{'group_id'}, {'name'}}, ['group.deleted'] = {{'group_id'}},
  ['group.member_added'] = {{'group_id'}, {'user_id'}},
  ['group.member_removed'] = {{'group_id'}, {'user_id'}},
  ['app.group_associated'] = {{'app_id'}, {'group_id'}},
  ['app.group_disassociated'] = {{'app_id'}, {'group_id'}},
  ['app.user_associated'] = {{'app_id'}, {'user_id'}},
  ['app.user_disassociated'] = {{'app_id'}, {'user_id'}},
}

local function has_text(data, path)
  local value = data
  for _, name in ipairs(path) do
    if type(value) ~= 'table' then return false end
    value = value[name]
  end
  return type(value) == 'string'
end

local function is_v1_event(ev)
  if type(ev) ~= 'table' or type(ev.data) ~= 'table' or type(ev.v) ~= 'string' then
    return false
  end
  for _, path in ipairs(fields[ev.type] or {}) do
    if not has_text(ev.data, path) then return false end
  end
  return fields[ev.type] ~= nil
end

-- A poison batch is parked whole, before anything is applied.
local ok, events = pcall(cjson.decode, raw)
if not ok or type(events) ~= 'table' then events = {false} end
for i, ev in ipairs(events) do
  if not is_v1_event(ev) then
    local reason = 'poison batch: event #' .. i .. ' is not a v1 event'
    redis.call('HSET', P .. 'ingest:parked', batch_id, reason)
    redis.call('ZREM', P .. 'ingest:pending', batch_id)
    redis.call('ZREM', P .. 'ingest:resend', batch_id)
    return redis.error_reply(reason)
  end
end

-- Out of memory (maxmemory, noeviction), Redis refuses a script's first write that may grow
-- memory, and then no other write of it: this counter's is first, so the script either stops
-- here having written nothing, or applies the whole batch.
redis.call('HINCRBY', P .. 'counters', 'applied', 0)
-- A cause is "<event id> <occurred_at, 17-digit µs> <accepted, ms>" (the batch's publish
-- time): what the reconcile it leads to needs for the sync lag (worker/queue/metrics.py).
local accepted = redis.call('ZSCORE', P .. 'ingest:pending', batch_id) or ''
for _, ev in ipairs(events) do
  local t, d, v = ev.type, ev.data, ev.v
  local newer, changed = false, false
  cause = ev.id and (ev.id .. ' ' .. string.sub(v, 1, 17) .. ' ' .. accepted)
  skipped = false
  if t == 'user.created' or t == 'user.updated' then
    -- The hottest event: one read and at most one write of the user's hash.
    local u = d.user.id
    local key = P .. 'u:' .. u
    local now_fields = redis.call('HMGET', key, 'del', 'rec', 'rec_v', 'st', 'st_v')
    if now_fields[1] then ignore(ev, 'user deleted') else
      local state = d.user.state
      d.user.state = nil
      local writes = {}
      if not now_fields[3] or v > now_fields[3] then
        newer = true
        local record = cjson.encode(d.user)
        writes[#writes + 1], writes[#writes + 2] = 'rec', record
        writes[#writes + 1], writes[#writes + 2] = 'rec_v', v
        changed = changed or record ~= now_fields[2]
      end
      if not now_fields[5] or v > now_fields[5] then
        newer = true
        writes[#writes + 1], writes[#writes + 2] = 'st', state
        writes[#writes + 1], writes[#writes + 2] = 'st_v', v
        changed = changed or state ~= now_fields[4]
      end
      if #writes > 0 then redis.call('HSET', key, unpack(writes)) end
      if changed and has_active then mark_user_everywhere(u) end
    end
  elseif t == 'user.suspended' or t == 'user.activated' then
    local u = d.user_id
    if user_deleted(u) then ignore(ev, 'user deleted') else
      local state = (t == 'user.suspended') and 'suspended' or 'active'
      newer, changed = set_value(P .. 'u:' .. u, 'st', v, state)
      if changed and has_active then mark_user_everywhere(u) end
    end
  elseif t == 'user.deleted' then
    local u = d.user_id
    if user_deleted(u) then ignore(ev, 'user deleted') else
      newer, changed = true, true
      redis.call('HSET', P .. 'u:' .. u, 'del', v)
      -- Every active app: one that provisioned the user deactivates it, whatever the
      -- associations say now (they may have arrived in any order).
      for a in pairs(active) do mark(a, 'user', u) end
      for _, g in ipairs(redis.call('SMEMBERS', P .. 'ug:' .. u)) do
        for _, a in ipairs(redis.call('SMEMBERS', P .. 'ga:' .. g)) do
          if active[a] then mark(a, 'group', g) end
        end
      end
    end
  elseif t == 'group.created' or t == 'group.renamed' then
    local g = (t == 'group.created') and d.group.id or d.group_id
    local name = (t == 'group.created') and d.group.name or d.name
    if group_deleted(g) then ignore(ev, 'group deleted') else
      newer, changed = set_value(P .. 'g:' .. g, 'name', v, name)
      if changed then
        for _, a in ipairs(redis.call('SMEMBERS', P .. 'ga:' .. g)) do
          if active[a] then mark(a, 'group', g) end
        end
      end
    end
  elseif t == 'group.deleted' then
    local g = d.group_id
    if group_deleted(g) then ignore(ev, 'group deleted') else
      newer, changed = true, true
      redis.call('HSET', P .. 'g:' .. g, 'del', v)
      for a in pairs(active) do mark(a, 'group', g) end
      for _, a in ipairs(redis.call('SMEMBERS', P .. 'ga:' .. g)) do mark_group_and_members(a, g) end
    end
  elseif t == 'group.member_added' or t == 'group.member_removed' then
    local g, u = d.group_id, d.user_id
    if group_deleted(g) then ignore(ev, 'group deleted')
    elseif user_deleted(u) then ignore(ev, 'user deleted') else
      local flag = (t == 'group.member_added') and '1' or '0'
      newer, changed = set_flag(P .. 'gm:' .. g, u, v, flag)
      if changed then
        index(flag, P .. 'gmc:' .. g, u, P .. 'ug:' .. u, g)
        for _, a in ipairs(has_active and redis.call('SMEMBERS', P .. 'ga:' .. g) or {}) do
          if active[a] then
            mark(a, 'group', g)
            mark(a, 'user', u)
          end
        end
      end
    end
  elseif t == 'app.group_associated' or t == 'app.group_disassociated' then
    local a, g = d.app_id, d.group_id
    if group_deleted(g) then ignore(ev, 'group deleted') else
      local flag = (t == 'app.group_associated') and '1' or '0'
      newer, changed = set_flag(P .. 'ag:' .. a, g, v, flag)
      if changed then
        index(flag, P .. 'agc:' .. a, g, P .. 'ga:' .. g, a)
        mark_group_and_members(a, g)
      end
    end
  elseif t == 'app.user_associated' or t == 'app.user_disassociated' then
    local a, u = d.app_id, d.user_id
    if user_deleted(u) then ignore(ev, 'user deleted') else
      local flag = (t == 'app.user_associated') and '1' or '0'
      newer, changed = set_flag(P .. 'au:' .. a, u, v, flag)
      if changed then
        index(flag, P .. 'auc:' .. a, u, P .. 'ua:' .. u, a)
        if active[a] then mark(a, 'user', u) end
      end
    end
  end
  if newer then applied = applied + 1 elseif not skipped then stale = stale + 1 end
end
redis.call('HINCRBY', P .. 'counters', 'applied', applied)
if stale > 0 then redis.call('HINCRBY', P .. 'counters', 'stale', stale) end
if ignored > 0 then redis.call('HINCRBY', P .. 'counters', 'ignored', ignored) end
forget_batch()
local result = {applied, stale, ignored}
for _, key in ipairs(schedule) do result[#result + 1] = key end
return result
