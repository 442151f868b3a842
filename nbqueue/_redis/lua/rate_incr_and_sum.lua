-- Raise a window's current counter unless that takes it, or the sum of the window, above the
-- maximum (see rate_incr.lua).
--
-- KEYS: 1 the key to increment, 2.. the window's keys (KEYS[1] among them)
-- ARGV: 1 amount, 2 maximum, 3 ttl (ms)
-- Returns 1 when the counter was raised, 0 when it was left alone.
local amount, maximum = tonumber(ARGV[1]), tonumber(ARGV[2])
local value = tonumber(redis.call("get", KEYS[1]) or "0") + amount
if value > maximum then
    return 0
end
local total = amount
for i = 2, #KEYS do
    total = total + tonumber(redis.call("get", KEYS[i]) or "0")
end
if total > maximum then
    return 0
end
redis.call("set", KEYS[1], value, "PX", ARGV[3])
return 1
