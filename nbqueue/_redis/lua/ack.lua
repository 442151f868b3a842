-- Acknowledge messages: they were processed and are deleted.
--
-- KEYS: 1 this worker's ack set, 2 messages hash, 3 scores hash,
--       4 canonical queue's messages hash, 5 its delay queue's messages hash, 6 drained list
-- ARGV: 1 drained cap, 2 drained ttl (ms), 3.. redis message ids
--
-- The body is deleted even when the id had left the ack set (this worker was presumed dead
-- and the message recovered): the work is done, and a copy waiting in the list is then
-- dropped at fetch instead of running twice.
-- Returns the ids that were no longer in the ack set.
local lost = {}
for i = 3, #ARGV do
    local id = ARGV[i]
    if redis.call("srem", KEYS[1], id) == 0 then
        lost[#lost + 1] = id
    end
    redis.call("hdel", KEYS[2], id)
    redis.call("hdel", KEYS[3], id)
end
signal_if_drained(KEYS[4], KEYS[5], KEYS[6], tonumber(ARGV[1]), ARGV[2])
return lost
