-- Count the starts of message attempts, and delete the counters of attempts that finished
-- (CrashLimit's start counters; see counters.py).
--
-- KEYS: 1..n the counters to increment, n+1.. the counters to delete
-- ARGV: 1 ttl of an incremented counter (ms), 2 n
--
-- Returns the count of each incremented counter, in order.
local n = tonumber(ARGV[2])
local counts = {}
for i = 1, n do
    counts[i] = redis.call("incr", KEYS[i])
    redis.call("pexpire", KEYS[i], ARGV[1])
end
for i = n + 1, #KEYS do
    redis.call("del", KEYS[i])
end
return counts
