-- Enqueue messages onto one queue.
--
-- KEYS: 1 messages hash, 2 list, 3 prioritized zset, 4 scores hash, 5 sequence counter,
--       6 wake list
-- ARGV: 1 wake cap, 2 wake ttl (ms), then one triple per message:
--       redis message id, encoded message, priority (integer, larger runs first)
--
-- Priority 0 goes to the list exactly as Dramatiq enqueues. Any other priority goes to the
-- prioritized zset, scored so that a larger priority sorts first and equal priorities keep
-- their order: score = -priority * 2^42 + sequence. The score is also remembered in the
-- scores hash, so that a requeued or recovered message returns to its place.
--
-- An id that is already stored is skipped, which makes a retried enqueue harmless.
-- Returns how many messages were added.
local PRIORITY_STEP = 4398046511104 -- 2^42

local added = 0
for i = 3, #ARGV, 3 do
    local id = ARGV[i]
    local priority = tonumber(ARGV[i + 2])
    if redis.call("hsetnx", KEYS[1], id, ARGV[i + 1]) == 1 then
        if priority == 0 then
            redis.call("rpush", KEYS[2], id)
        else
            local score = -priority * PRIORITY_STEP + redis.call("incr", KEYS[5])
            redis.call("zadd", KEYS[3], score, id)
            redis.call("hset", KEYS[4], id, score)
        end
        added = added + 1
    end
end
wake(KEYS[6], added, tonumber(ARGV[1]), ARGV[2])
return added
