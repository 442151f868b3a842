-- Put fetched messages back on their queue: at worker shutdown (this worker's own ack set, the
-- given ids) or when recovering a dead worker (its whole ack set, which is then deleted).
--
-- KEYS: 1 ack set, 2 messages hash, 3 list, 4 prioritized zset, 5 scores hash, 6 wake list
-- ARGV: 1 wake cap, 2 wake ttl (ms), 3 "ids" or "all", 4.. redis message ids (for "ids")
--
-- Prioritized messages return to their old score; the others go to the head of the list in
-- the order given, since they were fetched before anything still waiting. Ids whose body is
-- gone (acknowledged meanwhile) are dropped.
-- Returns how many messages went back.
local ids
if ARGV[3] == "all" then
    ids = redis.call("smembers", KEYS[1])
    redis.call("del", KEYS[1])
else
    ids = {}
    for i = 4, #ARGV do
        if redis.call("srem", KEYS[1], ARGV[i]) == 1 then
            ids[#ids + 1] = ARGV[i]
        end
    end
end

local head = {}
local moved = 0
for _, id in ipairs(ids) do
    if redis.call("hexists", KEYS[2], id) == 1 then
        local score = redis.call("hget", KEYS[5], id)
        if score then
            redis.call("zadd", KEYS[4], score, id)
        else
            head[#head + 1] = id
        end
        moved = moved + 1
    end
end
for i = #head, 1, -1 do
    redis.call("lpush", KEYS[3], head[i])
end
wake(KEYS[6], moved, tonumber(ARGV[1]), ARGV[2])
return moved
