-- Store a result, replacing any earlier one in one atomic step: a one-element list that
-- expires, as Dramatiq stores it.
--
-- KEYS: 1 the result's key
-- ARGV: 1 the encoded result, 2 its time to live (ms)
redis.call('DEL', KEYS[1])
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
