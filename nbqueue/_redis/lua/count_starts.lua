-- Count the starts of message attempts, and delete the counters of attempts that finished
-- (CrashLimit's start counters; see counters.py).
--
-- KEYS: 1..n the counters to increment, n+1.. the counters to delete
-- ARGV: 1 ttl of an incremented counter (ms), 2 n, 3 (optional) "first": count a start only
--       where none is recorded yet
--
-- Returns, for each counter in order, its starts with this one: counted, or, with "first" and
-- starts already recorded, what counting it would make (recorded + 1, not written).
local n = tonumber(ARGV[2])
local first = ARGV[3] == "first"
local counts = {}
for i = 1, n do
    local recorded = first and redis.call("get", KEYS[i])
    if recorded then
        counts[i] = tonumber(recorded) + 1
    else
        counts[i] = redis.call("incr", KEYS[i])
        redis.call("pexpire", KEYS[i], ARGV[1])
    end
end
for i = n + 1, #KEYS do
    redis.call("del", KEYS[i])
end
return counts
