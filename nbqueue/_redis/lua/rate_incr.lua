-- Raise a rate limiter's counter unless that takes it above the maximum. A script, so it is
-- atomic without Dramatiq's WATCH/MULTI retry loop; the key and value are Dramatiq's (a plain
-- integer string with a PX expiry), so nbqueue and Dramatiq processes share limits.
--
-- KEYS: 1 the counter
-- ARGV: 1 amount, 2 maximum, 3 ttl (ms)
-- Returns 1 when the counter was raised, 0 when it was left alone.
local value = tonumber(redis.call("get", KEYS[1]) or "0") + tonumber(ARGV[1])
if value > tonumber(ARGV[2]) then
    return 0
end
redis.call("set", KEYS[1], value, "PX", ARGV[3])
return 1
