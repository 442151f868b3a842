-- Leave the heartbeats set when a worker stops cleanly, so that nobody has to recover it.
--
-- KEYS: 1 heartbeats zset, 2 this worker's queue registry, 3.. this worker's ack sets
-- ARGV: 1 worker id
--
-- If any ack set still holds a message (an actor still running, a requeue that failed), the
-- worker stays in the set: its heartbeat goes stale and others recover those messages.
-- Returns 1 when the worker signed off.
for i = 3, #KEYS do
    if redis.call("scard", KEYS[i]) > 0 then
        return 0
    end
end
redis.call("zrem", KEYS[1], ARGV[1])
redis.call("del", KEYS[2])
return 1
