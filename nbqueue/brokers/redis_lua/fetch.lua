-- Fetch up to n messages for one consumer, and heartbeat.
--
-- KEYS: 1 list, 2 messages hash, 3 prioritized zset, 4 this worker's ack set for the queue,
--       5 heartbeats zset, 6 this worker's queue registry
-- ARGV: 1 n, 2 worker id, 3 queue name, 4 registry ttl (ms)
--
-- Order: positive priorities (negative scores), then the Dramatiq list, then negative
-- priorities. Fetched ids go into the worker's ack set, as Dramatiq's fetch does, and the
-- queue name into the worker's registry, so that whoever recovers this worker after it died
-- knows which ack sets to look at without scanning the keyspace.
--
-- Returns {dropped, id1, body1, id2, body2, ...}; `dropped` counts ids that had no body (a
-- foreign producer's mistake, or a message flushed meanwhile): they are forgotten.
redis.call("zadd", KEYS[5], now_ms(), ARGV[2])
redis.call("sadd", KEYS[6], ARGV[3])
redis.call("pexpire", KEYS[6], ARGV[4])

local want = tonumber(ARGV[1])
local ids = {}

local high = redis.call("zrangebyscore", KEYS[3], "-inf", "(0", "LIMIT", 0, want)
if #high > 0 then
    redis.call("zrem", KEYS[3], unpack(high))
    for _, id in ipairs(high) do
        ids[#ids + 1] = id
    end
end

if #ids < want then
    local listed = redis.call("lpop", KEYS[1], want - #ids)
    if listed then
        for _, id in ipairs(listed) do
            ids[#ids + 1] = id
        end
    end
end

if #ids < want then
    local low = redis.call("zpopmin", KEYS[3], want - #ids)
    for i = 1, #low, 2 do
        ids[#ids + 1] = low[i]
    end
end

if #ids == 0 then
    return {0}
end

redis.call("sadd", KEYS[4], unpack(ids))
local bodies = redis.call("hmget", KEYS[2], unpack(ids))
local out = {0}
for i, id in ipairs(ids) do
    local body = bodies[i]
    if body then
        out[#out + 1] = id
        out[#out + 1] = body
    else
        redis.call("srem", KEYS[4], id)
        out[1] = out[1] + 1
    end
end
return out
