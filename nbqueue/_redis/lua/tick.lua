-- The periodic heartbeat and maintenance of one worker process (cheap when nobody died).
--
-- KEYS: 1 heartbeats zset, then one triple per consumed queue: dead-letter zset (.XQ),
--       dead-letter messages hash (.XQ.msgs), dead-letter reasons hash
-- ARGV: 1 worker id, 2 heartbeat timeout (ms), 3 dead message ttl (ms), 4 how many dead
--       workers to report at most, 5 how many expired dead letters to prune per queue
--
-- Returns the ids of workers whose last heartbeat, by the server's clock, is older than the
-- heartbeat timeout; the broker then recovers their ack sets with requeue.lua and removes
-- them with bury.lua.
local now = now_ms()
redis.call("zadd", KEYS[1], now, ARGV[1])

local cutoff = now - tonumber(ARGV[3])
local batch = tonumber(ARGV[5])
for i = 2, #KEYS, 3 do
    local expired = redis.call("zrangebyscore", KEYS[i], "-inf", cutoff, "LIMIT", 0, batch)
    if #expired > 0 then
        redis.call("zrem", KEYS[i], unpack(expired))
        redis.call("hdel", KEYS[i + 1], unpack(expired))
        redis.call("hdel", KEYS[i + 2], unpack(expired))
    end
end

return redis.call(
    "zrangebyscore", KEYS[1], "-inf", now - tonumber(ARGV[2]), "LIMIT", 0, tonumber(ARGV[4])
)
