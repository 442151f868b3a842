-- Claim one tick of a schedule and record it as the schedule's last run (see ticks.py).
--
-- KEYS: 1 the schedule's state hash (last, next, worker, message, paused, and p:<tick> = the
--       lease end of each claim not confirmed yet)
-- ARGV: 1 the tick (ms since the epoch), 2 the tick after it (ms), 3 the claiming worker,
--       4 how long the state lives after the next tick (ms), 5 the tick's message id,
--       6 the lease: how long the claim holds unless confirmed (ms)
--
-- Returns {outcome, lease end}: outcome 1 when this call claimed the tick, 2 when it took
-- over a tick whose claimant did not confirm its send before its lease ended, 0 when it or a
-- later tick was claimed before (lease end: when that claim's lease ends if it is still
-- unconfirmed, else 0), -1 when the schedule is paused. Claims only move forward, so no tick
-- is sent twice but by a take-over, which sends the same message again.
local key = KEYS[1]
if redis.call("hexists", key, "paused") == 1 then
    return {-1, 0}
end
local tick = tonumber(ARGV[1])
local now = now_ms()
local pending = "p:" .. ARGV[1]
local last = redis.call("hget", key, "last")
if last and tonumber(last) >= tick then
    local lease = redis.call("hget", key, pending)
    if not lease then
        return {0, 0}
    end
    if tonumber(lease) > now then
        return {0, tonumber(lease)}
    end
    redis.call("hset", key, pending, now + tonumber(ARGV[6]))
    return {2, 0}
end
-- Claims nobody confirmed nor took over for a minute after their lease are given up.
for _, field in ipairs(redis.call("hkeys", key)) do
    if string.sub(field, 1, 2) == "p:" and tonumber(redis.call("hget", key, field)) + 60000 < now then
        redis.call("hdel", key, field)
    end
end
redis.call(
    "hset", key, "last", ARGV[1], "next", ARGV[2], "worker", ARGV[3], "message", ARGV[5],
    pending, now + tonumber(ARGV[6])
)
redis.call("pexpireat", key, tonumber(ARGV[2]) + tonumber(ARGV[4]))
return {1, 0}
