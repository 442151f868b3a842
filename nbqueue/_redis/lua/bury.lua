-- Forget a dead worker once its ack sets were recovered.
--
-- KEYS: 1 heartbeats zset, 2 the dead worker's queue registry
-- ARGV: 1 the dead worker's id, 2 heartbeat timeout (ms)
--
-- The worker is removed only if it is still dead: one that came back meanwhile (a paused
-- process) heartbeated again and keeps its entry.
-- Returns 1 when the worker was removed.
local score = redis.call("zscore", KEYS[1], ARGV[1])
if score and tonumber(score) <= now_ms() - tonumber(ARGV[2]) then
    redis.call("zrem", KEYS[1], ARGV[1])
    redis.call("del", KEYS[2])
    return 1
end
return 0
