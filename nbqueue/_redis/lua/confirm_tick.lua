-- Record that the message of a claimed tick was sent, so that nobody takes the tick over
-- (see ticks.py): its pending claim goes.
--
-- KEYS: 1 the schedule's state hash
-- ARGV: 1 the tick (ms since the epoch)
return redis.call("hdel", KEYS[1], "p:" .. ARGV[1])
