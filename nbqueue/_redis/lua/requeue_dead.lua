-- Take one dead letter out of a queue's dead letters, to be enqueued again.
--
-- KEYS: 1 dead-letter zset (.XQ), 2 dead-letter messages hash, 3 dead-letter reasons hash
-- ARGV: 1 the letter's redis message id
--
-- Returns its body, or false when it is not (or no longer) a dead letter: of two callers
-- requeueing the same letter, one gets it.
if redis.call("zrem", KEYS[1], ARGV[1]) == 0 then
    return false
end
local body = redis.call("hget", KEYS[2], ARGV[1])
redis.call("hdel", KEYS[2], ARGV[1])
redis.call("hdel", KEYS[3], ARGV[1])
return body
