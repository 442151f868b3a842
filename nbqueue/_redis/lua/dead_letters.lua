-- Read the dead letters of a queue, oldest first.
--
-- KEYS: 1 dead-letter zset (.XQ), 2 dead-letter messages hash, 3 dead-letter reasons hash
-- ARGV: 1 how many at most (-1: all)
--
-- Returns {id1, body1, reason1, id2, ...}; a reason is false for letters nbqueue did not
-- write (a Dramatiq worker's), a body is false if only the id is left.
local ids = redis.call("zrange", KEYS[1], 0, tonumber(ARGV[1]))
local out = {}
for _, id in ipairs(ids) do
    out[#out + 1] = id
    out[#out + 1] = redis.call("hget", KEYS[2], id)
    out[#out + 1] = redis.call("hget", KEYS[3], id)
end
return out
