-- Take a message a worker is about to run, its start write deferred (see live/transport.py):
-- refuse it when an abort was requested, else mark its record taken by this attempt, so that
-- abort() from now on asks the worker, as for a running message (live_abort.lua), rather than
-- marking it aborted.
--
-- KEYS: 1 the status record (hash)
-- ARGV: 1 the attempt, 2 the record's ttl (ms), set when the take makes the record
-- Returns 1 when taken, -1 when an abort was requested.
local cur = redis.call('HMGET', KEYS[1], 'abort', 'status')
if cur[1] then
  return -1
end
redis.call('HSET', KEYS[1], 'taken', ARGV[1])
-- A record with a status has its ttl; one without may be new (the producer's first write has
-- not landed yet).
if not cur[2] and redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
