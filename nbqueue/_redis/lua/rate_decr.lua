-- Lower a rate limiter's counter unless that takes it below the minimum (see rate_incr.lua).
--
-- KEYS: 1 the counter
-- ARGV: 1 amount, 2 minimum, 3 ttl (ms)
-- Returns 1 when the counter was lowered, 0 when it was left alone.
local value = tonumber(redis.call("get", KEYS[1]) or "0") - tonumber(ARGV[1])
if value < tonumber(ARGV[2]) then
    return 0
end
redis.call("set", KEYS[1], value, "PX", ARGV[3])
return 1
