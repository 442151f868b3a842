-- Pause or resume a schedule for the whole fleet (see ticks.py): claim_tick.lua refuses every
-- tick of a paused schedule. A paused schedule's state never expires; a resumed one expires
-- again as a running one does (its next tick plus the state ttl), or at once if it never ran.
--
-- KEYS: 1 the schedule's state hash
-- ARGV: 1 "1" to pause, "0" to resume, 2 how long the state lives after the next tick (ms)
if ARGV[1] == "1" then
    redis.call("hset", KEYS[1], "paused", "1")
    redis.call("persist", KEYS[1])
    return 1
end
redis.call("hdel", KEYS[1], "paused")
local nxt = redis.call("hget", KEYS[1], "next")
if nxt then
    redis.call("pexpireat", KEYS[1], tonumber(nxt) + tonumber(ARGV[2]))
else
    redis.call("del", KEYS[1])
end
return 0
