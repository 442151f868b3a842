-- Claim one tick of a schedule and record it as the schedule's last run (see ticks.py).
--
-- KEYS: 1 the schedule's state hash (last, next, worker)
-- ARGV: 1 the tick (ms since the epoch), 2 the tick after it (ms), 3 the claiming worker,
--       4 how long the state lives after the next tick (ms)
--
-- Returns 1 when this call claimed the tick, 0 when it or a later tick was claimed before:
-- claims only move forward, so no tick is ever sent twice.
local last = redis.call("hget", KEYS[1], "last")
if last and tonumber(last) >= tonumber(ARGV[1]) then
    return 0
end
redis.call("hset", KEYS[1], "last", ARGV[1], "next", ARGV[2], "worker", ARGV[3])
redis.call("pexpireat", KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[4]))
return 1
