-- Register a worker's notebook actors until a deadline. Liveness is judged by the server's
-- clock, so workers with skewed clocks still agree.
--
-- KEYS: the capability sorted set of each queue
-- ARGV: 1 ttl (ms), 2.. the member (<worker id>|<actor>) for each key, in the same order
-- Returns the deadline (ms, server clock).
local expiry = now_ms() + tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, expiry, ARGV[i + 1])
  redis.call('PEXPIRE', key, tonumber(ARGV[1]) * 2)
end
return expiry
