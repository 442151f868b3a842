-- Publish or refresh a worker's record in the worker registry, and drop the expired ones.
-- Liveness is judged by the server's clock, so workers with skewed clocks still agree.
--
-- KEYS: 1 the hash of records (worker id -> JSON), 2 the sorted set of expiries (worker id ->
--       ms, server clock)
-- ARGV: 1 the worker id, 2 ttl (ms), 3 the record (JSON)
-- Returns the server time of the beat (ms): the record's last_seen.
local now = now_ms()
local ttl = tonumber(ARGV[2])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #expired > 0 then
  redis.call('HDEL', KEYS[1], unpack(expired))
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
-- The keys outlive their longest-lived record, so a fleet that died leaves nothing behind.
local keep = ttl * 2
for _, key in ipairs(KEYS) do
  if redis.call('PTTL', key) < keep then
    redis.call('PEXPIRE', key, keep)
  end
end
return now
