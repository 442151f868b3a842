-- Enqueue messages onto one queue.
--
-- KEYS: 1 messages hash, 2 list, 3 prioritized zset, 4 scores hash, 5 sequence counter,
--       6 wake list
-- ARGV: 1 wake cap, 2 wake ttl (ms), 3 the messages, framed back to back (one argument, so
--       that a batch of thousands costs Redis and the client one argument, not thousands):
--       redis message id (36 bytes), priority ("%+05d", 5 bytes), body length ("%010d",
--       10 bytes), body.
--
-- Priority 0 goes to the list exactly as Dramatiq enqueues. Any other priority goes to the
-- prioritized zset, scored so that a larger priority sorts first and equal priorities keep
-- their order: score = -priority * 2^42 + sequence. The score is also remembered in the
-- scores hash, so that a requeued or recovered message returns to its place.
--
-- An id that is already stored is skipped, which makes a retried enqueue harmless.
-- Returns how many messages were added.
local PRIORITY_STEP = 4398046511104 -- 2^42

local frames = ARGV[3]
local pos = 1
local added = 0
local listed = {}
while pos <= #frames do
    local id = string.sub(frames, pos, pos + 35)
    local priority = tonumber(string.sub(frames, pos + 36, pos + 40))
    local size = tonumber(string.sub(frames, pos + 41, pos + 50))
    local body = string.sub(frames, pos + 51, pos + 50 + size)
    pos = pos + 51 + size
    if redis.call("hsetnx", KEYS[1], id, body) == 1 then
        if priority == 0 then
            listed[#listed + 1] = id
            if #listed == 1000 then
                redis.call("rpush", KEYS[2], unpack(listed))
                listed = {}
            end
        else
            local score = -priority * PRIORITY_STEP + redis.call("incr", KEYS[5])
            redis.call("zadd", KEYS[3], score, id)
            redis.call("hset", KEYS[4], id, score)
        end
        added = added + 1
    end
end
if #listed > 0 then
    redis.call("rpush", KEYS[2], unpack(listed))
end
wake(KEYS[6], added, tonumber(ARGV[1]), ARGV[2])
return added
