-- Apply one write of the live channel: append its events, then update the status record
-- unless the write is stale.
--
-- KEYS: 1 the status record (hash), 2 the events stream
-- ARGV: 1 a JSON header (one argument keeps redis-py's packing cheap): ttl, max, now, mode,
--       attempt, status, progress, backfill, fields, once; 2.. event kind and data pairs
-- Returns 1 when written, 0 when the record already moved past this write, -1 when a start
-- finds an abort requested.
local record, stream = KEYS[1], KEYS[2]
local h = cjson.decode(ARGV[1])
local now = h.now

local function add(kind, data)
  local seq = redis.call('HINCRBY', record, 'seq', 1)
  redis.call('XADD', stream, 'MAXLEN', '~', h.max, seq .. '-0', 'k', kind, 'd', data, 't', now)
end

for i = 2, #ARGV, 2 do
  add(ARGV[i], ARGV[i + 1])
end
if h.progress ~= '' then
  redis.call('HSET', record, 'progress', h.progress)
end
local result = 1
if h.mode ~= '' then
  local cur = redis.call('HMGET', record, 'status', 'attempt', 'abort')
  local status = cur[1]
  if h.mode == 'start' and cur[3] then
    result = -1
  elseif status == 'aborted' then
    result = 0
  elseif h.mode == 'initial' then
    if status and status ~= 'delayed' and status ~= 'retrying' then result = 0 end
  elseif h.attempt < (tonumber(cur[2]) or 0) then
    result = 0
  end
  if result == 1 then
    if not status and h.backfill ~= '' then add('status', h.backfill) end
    for key, value in pairs(h.fields) do
      redis.call('HSET', record, key, value)
    end
    for key, value in pairs(h.once) do
      redis.call('HSETNX', record, key, value)
    end
    if h.status ~= '' then add('status', h.status) end
  end
end
redis.call('PEXPIRE', record, h.ttl)
redis.call('PEXPIRE', stream, h.ttl)
return result
