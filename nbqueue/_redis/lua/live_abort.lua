-- Request that a message be aborted.
--
-- KEYS: 1 the status record (hash), 2 the events stream, 3 the aborts stream, 4-8 the job
--       history's keys (see history_note in _lib.lua), when the store keeps one
-- ARGV: 1 now (ms), 2 ttl (ms), 3 events kept, 4 message id, 5 the status event (JSON),
--       6 the aborts stream's ttl (ms), 7 the aborts stream's length
-- Returns 0 when the message has finished, 2 when it is running or a worker took it to run it
-- (live_take.lua; the worker is told through the aborts stream), 1 when it was aborted before
-- any worker took it.
local record, stream, aborts = KEYS[1], KEYS[2], KEYS[3]
local now, ttl, maxlen, message_id, event = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local cur = redis.call('HMGET', record, 'status', 'taken')
local status, taken = cur[1], cur[2]
if status == 'succeeded' or status == 'failed' or status == 'skipped' or status == 'aborted'
    or status == 'dead' then
  return 0
end
redis.call('HSET', record, 'abort', now)
if status == 'running' or (taken and taken ~= '') then
  redis.call('XADD', aborts, 'MAXLEN', '~', ARGV[7], '*', 'id', message_id)
  redis.call('PEXPIRE', aborts, ARGV[6])
  return 2
end
redis.call('HSET', record, 'status', 'aborted', 'finished_at', now)
local seq = redis.call('HINCRBY', record, 'seq', 1)
redis.call('XADD', stream, 'MAXLEN', '~', maxlen, seq .. '-0', 'k', 'status', 'd', event, 't', now)
local pttl = redis.call('PTTL', record)
if pttl < 0 then
  pttl = tonumber(ttl)
  redis.call('PEXPIRE', record, pttl)
end
redis.call('PEXPIRE', stream, pttl)
if #KEYS >= 8 then
  history_note(record, message_id, {KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]},
    {entry = ''}, tonumber(now))
end
return 1
