-- Store a result and apply its message's last live write (status and output) in one atomic
-- step: whoever sees the one sees the other (see results.py).
--
-- KEYS: 1 the result's key, 2 the status record, 3 the events stream
-- ARGV: 1 the encoded result, 2 its time to live (ms), 3 the live write's header, 4.. its
--       event kind and data pairs (see live_write in _lib.lua)
-- Returns what live_write returns.
store_result(KEYS[1], ARGV[1], ARGV[2])
return live_write(KEYS[2], KEYS[3], ARGV, 3)
