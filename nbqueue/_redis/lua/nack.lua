-- Reject a message: move it to the dead-letter queue, with why.
--
-- KEYS: 1 this worker's ack set, 2 messages hash, 3 scores hash, 4 dead-letter zset (.XQ),
--       5 dead-letter messages hash (.XQ.msgs), 6 dead-letter reasons hash,
--       7 canonical queue's messages hash, 8 its delay queue's messages hash, 9 drained list
-- ARGV: 1 redis message id, 2 reason (JSON), 3 drained cap, 4 drained ttl (ms)
--
-- The .XQ zset and hash are exactly what a Dramatiq worker writes; the reason goes to a hash
-- of nbqueue's own, so Dramatiq tools see an ordinary dead letter.
-- Returns 1 when the message was dead-lettered, 0 when this worker no longer held it: it was
-- handed back (a stop that outlived its actor) or recovered from a worker presumed dead, so a
-- copy waits in the queue to run again and must not be dead-lettered by this late verdict.
local id = ARGV[1]
local moved = 0
if redis.call("srem", KEYS[1], id) == 1 then
    redis.call("hdel", KEYS[3], id)
    local body = redis.call("hget", KEYS[2], id)
    if body then
        redis.call("zadd", KEYS[4], now_ms(), id)
        redis.call("hset", KEYS[5], id, body)
        redis.call("hset", KEYS[6], id, ARGV[2])
        redis.call("hdel", KEYS[2], id)
        moved = 1
    end
end
signal_if_drained(KEYS[7], KEYS[8], KEYS[9], tonumber(ARGV[3]), ARGV[4])
return moved
