-- Helpers shared by nbqueue's Redis scripts; the loader (load_scripts in client.py) prepends
-- this file to each of them. Key names are never built here: callers pass every key in KEYS,
-- built in one place (keys.py).

-- The Redis server's clock in milliseconds. Liveness is judged by this clock alone, so clock
-- skew between worker machines cannot make a live worker look dead.
local function now_ms()
    local t = redis.call("time")
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Leave up to `count` wake-up tokens on a wake list (at most `cap` in all) that expires after
-- `ttl` ms. Idle nbqueue consumers block on these lists instead of polling.
local function wake(key, count, cap, ttl)
    local room = cap - redis.call("llen", key)
    local n = math.min(count, room)
    for _ = 1, n do
        redis.call("lpush", key, "1")
    end
    if n > 0 then
        redis.call("pexpire", key, ttl)
    end
end

-- Leave one token on a queue's drained list when neither the queue nor its delay queue holds
-- a message any more; broker.join() blocks on it.
local function signal_if_drained(messages, delayed_messages, drained, cap, ttl)
    if redis.call("hlen", messages) == 0 and redis.call("hlen", delayed_messages) == 0 then
        wake(drained, 1, cap, ttl)
    end
end

-- Remove jobs from the job history: their index entries, messages and record copies.
local function history_drop(hk, ids)
    for i = 1, #ids, 500 do
        local chunk = {unpack(ids, i, math.min(i + 499, #ids))}
        redis.call('ZREM', hk[1], unpack(chunk))
        redis.call('HDEL', hk[2], unpack(chunk))
        redis.call('HDEL', hk[3], unpack(chunk))
    end
end

-- Note a status change in the job history (see history.py), when the message is in it or
-- this write brings it (hist.entry: its message and origin, as JSON). hk holds the history's
-- keys: 1 the index (zset: id by enqueue time), 2 the entries (hash: id -> JSON),
-- 3 the record copies (hash: id -> the status record as JSON, so it outlives the record),
-- 4 the version counter, 5 the changes channel (pub/sub: what the Jupyter server waits on;
-- a publish nobody listens to costs next to nothing, unlike a stream entry).
-- New entries trim the history to hist.max jobs and hist.age ms.
local FINISHED = {succeeded = true, failed = true, skipped = true, aborted = true, dead = true}

local function history_note(record, message_id, hk, hist, now, status)
    if hist.entry == '' and redis.call('HEXISTS', hk[2], message_id) == 0 then
        return
    end
    local version = redis.call('INCR', hk[4])
    if hist.entry ~= '' then
        -- Scored by time, ties (sends in the same millisecond) in version order: a fraction
        -- of 1/4096 steps, which a double holds exactly beside epoch milliseconds.
        local score = string.format('%.4f', now + (version % 4096) / 4096)
        redis.call('ZADD', hk[1], 'NX', score, message_id)
        redis.call('HSET', hk[2], message_id, hist.entry)
        local old = redis.call('ZRANGEBYSCORE', hk[1], '-inf', '(' .. (now - hist.age),
            'LIMIT', 0, 1000)
        if #old > 0 then history_drop(hk, old) end
        local excess = redis.call('ZCARD', hk[1]) - hist.max
        if excess > 0 then history_drop(hk, redis.call('ZRANGE', hk[1], 0, excess - 1)) end
    end
    -- The record is copied once it has a final status (this write's, or an earlier one's when
    -- a producer's batched first write lands after a short job ended), to outlive it; until
    -- then readers read the live record itself (history.py): the hot path makes one copy.
    -- status: the record's status after the write, when the caller knows it.
    if status == nil then status = redis.call('HGET', record, 'status') end
    if FINISHED[status or ''] then
        local flat = redis.call('HGETALL', record)
        local copy = {}
        for i = 1, #flat, 2 do copy[flat[i]] = flat[i + 1] end
        redis.call('HSET', hk[3], message_id, cjson.encode(copy))
    end
    redis.call('PUBLISH', hk[5], version)
end

-- Apply one write of the live channel to a message's status record (hash) and events stream:
-- append its events, then update the record unless the write is stale (a change that applies
-- puts its backfill and deferred start before the events, its status event after them). From
-- argv[first], the write (plain arguments: decoding a JSON header cost more than the rest of a
-- short write):
--   +0 ttl (ms), +1 events kept, +2 now (ms), +3 mode ('', 'initial', 'start', ...),
--   +4 attempt, +5 its status event (JSON) or '', +6 progress (JSON) or '', +7 the status
--   event to backfill when the record has none, or '', +8 the status event of a deferred
--   start that goes out with this write, or '', +9 the history id ('': the store keeps no
--   history), +10 the history's max jobs, +11 its max age (ms), +12 the history entry or '',
--   +13 n, then n field and value pairs (set), then m, then m pairs (set unless the record
--   has them), then event kind and data pairs.
-- hk: the history's keys (see history_note), or nil. Returns 1 when written, 0 when the record
-- already moved past this write, -1 when a start finds an abort requested.
local function live_write(record, stream, argv, first, hk)
    local ttl, maxlen, now, mode = argv[first], argv[first + 1], argv[first + 2], argv[first + 3]
    local fields_at = first + 14
    local fields_end = fields_at + 2 * tonumber(argv[first + 13]) - 1
    local once_at = fields_end + 2
    local events_at = once_at + 2 * tonumber(argv[once_at - 1])

    -- One HMGET reads what the write depends on (status, attempt, abort flag, the event
    -- counter and the once-only fields), one HSET writes what it changes: a call per field
    -- and per event counted cost the server more than the fields themselves.
    local names = {'status', 'attempt', 'abort', 'seq'}
    for i = once_at, events_at - 1, 2 do names[#names + 1] = argv[i] end
    local cur = redis.call('HMGET', record, unpack(names))
    local seq = tonumber(cur[4]) or 0
    local first_seq = seq
    local set = {}

    local function add(kind, data)
      seq = seq + 1
      redis.call('XADD', stream, 'MAXLEN', '~', maxlen, seq .. '-0', 'k', kind, 'd', data, 't', now)
    end

    local result = 1
    local status = nil
    if mode ~= '' then
      status = cur[1] or nil  -- (HMGET gives false for a missing field)
      if mode == 'start' and cur[3] then
        result = -1
      elseif status == 'aborted' then
        result = 0
      elseif mode == 'initial' then
        if status and status ~= 'delayed' and status ~= 'retrying' then result = 0 end
      elseif tonumber(argv[first + 4]) < (tonumber(cur[2]) or 0) then
        result = 0
      end
      if result == 1 then
        -- what came before this write's events: the backfill, then a deferred start
        if not status and argv[first + 7] ~= '' then add('status', argv[first + 7]) end
        if argv[first + 8] ~= '' then add('status', argv[first + 8]) end
      end
    end
    -- the events go in even when the status change is stale
    for i = events_at, #argv, 2 do
      add(argv[i], argv[i + 1])
    end
    if argv[first + 6] ~= '' then
      set[#set + 1] = 'progress'
      set[#set + 1] = argv[first + 6]
    end
    if mode ~= '' then
      if result == 1 then
        for i = fields_at, fields_end, 2 do
          set[#set + 1] = argv[i]
          set[#set + 1] = argv[i + 1]
          if argv[i] == 'status' then status = argv[i + 1] end
        end
        local j = 5
        for i = once_at, events_at - 1, 2 do
          if not cur[j] then
            set[#set + 1] = argv[i]
            set[#set + 1] = argv[i + 1]
          end
          j = j + 1
        end
        if argv[first + 5] ~= '' then add('status', argv[first + 5]) end
      end
    end
    if seq ~= first_seq then
      set[#set + 1] = 'seq'
      set[#set + 1] = tostring(seq)
    end
    if #set > 0 then redis.call('HSET', record, unpack(set)) end
    redis.call('PEXPIRE', record, ttl)
    redis.call('PEXPIRE', stream, ttl)
    -- A new entry goes in even when its write is stale: a worker may have started the
    -- message before the producer's (batched) first write landed.
    local entry = argv[first + 12]
    if hk and argv[first + 9] ~= '' and (entry ~= '' or (result == 1 and mode ~= '')) then
      local limits = {max = tonumber(argv[first + 10]), age = tonumber(argv[first + 11])}
      limits.entry = entry
      history_note(record, argv[first + 9], hk, limits, now, status)
    end
    return result
end

-- Store a result, replacing any earlier one in one atomic step: a one-element list that
-- expires after ttl ms, as Dramatiq stores it.
local function store_result(key, data, ttl)
    redis.call('DEL', key)
    redis.call('LPUSH', key, data)
    redis.call('PEXPIRE', key, ttl)
end
