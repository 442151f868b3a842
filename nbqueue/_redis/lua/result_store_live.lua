-- Store a result and apply its message's last live write (status and output) in one atomic
-- step: whoever sees the one sees the other (see results.py).
--
-- KEYS: 1 the result's key, 2 the status record, 3 the events stream, 4-8 the job history's
--       keys (see history_note in _lib.lua), when the store keeps one
-- ARGV: 1 the encoded result, 2 its time to live (ms), 3.. the live write (see live_write in
--       _lib.lua)
-- Returns what live_write returns.
store_result(KEYS[1], ARGV[1], ARGV[2])
local hk = nil
if #KEYS >= 8 then hk = {KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]} end
return live_write(KEYS[2], KEYS[3], ARGV, 3, hk)
