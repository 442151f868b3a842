-- Enqueue messages onto one queue.
--
-- KEYS: 1 messages hash, 2 list, 3 prioritized zset, 4 scores hash, 5 sequence counter,
--       6 wake list, 7 heartbeats zset, 8 the queue's idle consumers zset
-- ARGV: 1 wake cap, 2 wake ttl (ms), 3 the messages, framed back to back (one argument, so
--       that a batch of thousands costs Redis and the client one argument, not thousands):
--       redis message id (36 bytes), priority ("%+05d", 5 bytes), body length ("%010d",
--       10 bytes), body.
--
-- When an nbqueue consumer is idle (fetch.lua registered it, until a deadline), the message
-- is handed straight to it: its id goes into that worker's ack set, as if fetched, and the id
-- and body onto its inbox, which it blocks on. A registration is "<worker>\n<ack set>\n<inbox>";
-- it is used only while the worker is in the heartbeats set, so nothing is ever handed to a
-- worker that was already recovered and forgotten.
--
-- Otherwise priority 0 goes to the list exactly as Dramatiq enqueues, and any other priority
-- to the prioritized zset, scored so that a larger priority sorts first and equal priorities
-- keep their order: score = -priority * 2^42 + sequence. The score is also remembered in the
-- scores hash, so that a requeued or recovered message returns to its place. Idle consumers
-- that are not handed a message are woken through the wake list.
--
-- An id that is already stored is skipped, which makes a retried enqueue harmless.
-- Returns how many messages were added.
local PRIORITY_STEP = 4398046511104 -- 2^42

local idle = redis.call("zcard", KEYS[8])
local now = nil

local function hand_off(id, body)
    if idle == 0 then
        return false
    end
    now = now or now_ms()
    while true do
        local found = redis.call("zrangebyscore", KEYS[8], now, "+inf", "LIMIT", 0, 1)
        if #found == 0 then
            redis.call("zremrangebyscore", KEYS[8], "-inf", "(" .. now)
            idle = 0
            return false
        end
        local member = found[1]
        redis.call("zrem", KEYS[8], member)
        local a = string.find(member, "\n", 1, true)
        local b = string.find(member, "\n", a + 1, true)
        if redis.call("zscore", KEYS[7], string.sub(member, 1, a - 1)) then
            local inbox = string.sub(member, b + 1)
            redis.call("sadd", string.sub(member, a + 1, b - 1), id)
            redis.call("rpush", inbox, id .. body)
            redis.call("pexpire", inbox, 60000)
            return true
        end
    end
end

local frames = ARGV[3]
local pos = 1
local added, waiting = 0, 0
local listed = {}
while pos <= #frames do
    local id = string.sub(frames, pos, pos + 35)
    local priority = tonumber(string.sub(frames, pos + 36, pos + 40))
    local size = tonumber(string.sub(frames, pos + 41, pos + 50))
    local body = string.sub(frames, pos + 51, pos + 50 + size)
    pos = pos + 51 + size
    if redis.call("hsetnx", KEYS[1], id, body) == 1 then
        added = added + 1
        if not hand_off(id, body) then
            waiting = waiting + 1
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
        end
    end
end
if #listed > 0 then
    redis.call("rpush", KEYS[2], unpack(listed))
end
wake(KEYS[6], waiting, tonumber(ARGV[1]), ARGV[2])
return added
