-- Fetch up to n messages for one consumer, and heartbeat.
--
-- KEYS: 1 list, 2 messages hash, 3 prioritized zset, 4 this worker's ack set for the queue,
--       5 heartbeats zset, 6 this worker's queue registry, 7 the queue's idle consumers zset,
--       8 this worker's inbox for the queue
-- ARGV: 1 n, 2 worker id, 3 queue name, 4 registry ttl (ms), 5 "1" to register as idle when
--       nothing is found, 6 how long an idle registration lasts (ms), 7 the registration,
--       8 the broker's max_message_size in bytes (0: no limit), 9 how many messages of lost
--       fetches to reclaim at most (0: none), 10.. the ids this worker holds (handed out and
--       not settled yet)
--
-- Messages handed off to this worker's inbox by enqueue.lua come first (they already are in
-- the ack set). Then: positive priorities (negative scores), the Dramatiq list, negative
-- priorities. Fetched ids go into the worker's ack set, as Dramatiq's fetch does, and the
-- queue name into the worker's registry, so that whoever recovers this worker after it died
-- knows which ack sets to look at without scanning the keyspace.
--
-- Reclaiming: a fetch (or a pop from the inbox) whose reply was lost, when the connection
-- dropped or timed out, moved messages into this worker's ack set that no consumer knows of;
-- this worker keeps heartbeating, so nobody would recover them. After such a failure the
-- worker's next fetch of the queue passes what it holds, and every other member of the ack set
-- is delivered again in this reply (unless the inbox or this fetch delivers it anyway).
--
-- When nothing is found the consumer registers as idle: the next enqueue hands a message
-- straight to its inbox, which it blocks on, saving the fetch round trip.
--
-- Returns {dropped, messages, oversized, reclaimed}: `dropped` counts ids that had no body (a
-- foreign producer's mistake, or a message flushed meanwhile), which are forgotten; `messages`
-- is one string of frames, each the id's length ("%010d"), the id, the body's length ("%010d")
-- and the body, because one string costs the client far less to parse than two per message;
-- `oversized` lists id, size, id, size... of bodies above the limit (HSTRLEN, before HMGET):
-- they stay in the ack set, unread, for the consumer to dead-letter as too_large, so a huge
-- body never crosses the network nor sits in the consumer's memory; `reclaimed` counts the
-- ids delivered again.
local now = now_ms()
redis.call("zadd", KEYS[5], now, ARGV[2])
redis.call("sadd", KEYS[6], ARGV[3])
redis.call("pexpire", KEYS[6], ARGV[4])
redis.call("zrem", KEYS[7], ARGV[7])

local want = tonumber(ARGV[1])
local dropped = 0
local out = {}

local function add(id, body)
    out[#out + 1] = string.format("%010d", #id)
    out[#out + 1] = id
    out[#out + 1] = string.format("%010d", #body)
    out[#out + 1] = body
end

local known = {}
local inboxed = redis.call("lrange", KEYS[8], 0, -1)
if #inboxed > 0 then
    redis.call("del", KEYS[8])
    for _, frame in ipairs(inboxed) do
        local id = string.sub(frame, 1, 36)
        known[id] = true
        add(id, string.sub(frame, 37))
    end
    want = want - #inboxed
end

local ids = {}
local reclaimed = 0
local reclaim = tonumber(ARGV[9]) or 0
if reclaim > 0 then
    for i = 10, #ARGV do
        known[ARGV[i]] = true
    end
    for _, id in ipairs(redis.call("smembers", KEYS[4])) do
        if not known[id] and reclaimed < reclaim then
            ids[#ids + 1] = id
            reclaimed = reclaimed + 1
        end
    end
end
if #ids < want then
    local high = redis.call("zrangebyscore", KEYS[3], "-inf", "(0", "LIMIT", 0, want - #ids)
    if #high > 0 then
        redis.call("zrem", KEYS[3], unpack(high))
        for _, id in ipairs(high) do
            ids[#ids + 1] = id
        end
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

local oversized = {}
local limit = tonumber(ARGV[8]) or 0
if #ids > 0 and limit > 0 then
    local fitting = {}
    for _, id in ipairs(ids) do
        local size = redis.call("hstrlen", KEYS[2], id)
        if size > limit then
            redis.call("sadd", KEYS[4], id)
            oversized[#oversized + 1] = id
            oversized[#oversized + 1] = size
        else
            fitting[#fitting + 1] = id
        end
    end
    ids = fitting
end

if #ids > 0 then
    redis.call("sadd", KEYS[4], unpack(ids))
    local bodies = redis.call("hmget", KEYS[2], unpack(ids))
    for i, id in ipairs(ids) do
        local body = bodies[i]
        if body then
            add(id, body)
        else
            redis.call("srem", KEYS[4], id)
            dropped = dropped + 1
        end
    end
end

if #out == 0 and #oversized == 0 and ARGV[5] == "1" then
    redis.call("zadd", KEYS[7], now + tonumber(ARGV[6]), ARGV[7])
end
return {dropped, table.concat(out), oversized, reclaimed}
