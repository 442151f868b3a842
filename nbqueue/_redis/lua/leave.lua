-- A consumer leaves the idle set and takes back what was handed to it meanwhile.
--
-- KEYS: 1 the queue's idle consumers zset, 2 this worker's inbox for the queue
-- ARGV: 1 the registration
--
-- Returns {id1, body1, id2, body2, ...}: messages already in this worker's ack set, which the
-- consumer then requeues.
redis.call("zrem", KEYS[1], ARGV[1])
local out = {}
for _, frame in ipairs(redis.call("lrange", KEYS[2], 0, -1)) do
    out[#out + 1] = string.sub(frame, 1, 36)
    out[#out + 1] = string.sub(frame, 37)
end
redis.call("del", KEYS[2])
return out
