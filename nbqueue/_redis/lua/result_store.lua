-- Store a result (see store_result in _lib.lua).
--
-- KEYS: 1 the result's key
-- ARGV: 1 the encoded result, 2 its time to live (ms)
store_result(KEYS[1], ARGV[1], ARGV[2])
