-- Apply one write of the live channel: append its events, then update the status record
-- unless the write is stale.
--
-- KEYS: 1 the status record (hash), 2 the events stream, 3-7 the job history's keys (see
--       history_note in _lib.lua), when the store keeps one
-- ARGV: the write, from 1 (see live_write in _lib.lua)
-- Returns 1 when written, 0 when the record already moved past this write, -1 when a start
-- finds an abort requested.
local hk = nil
if #KEYS >= 7 then hk = {KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]} end
return live_write(KEYS[1], KEYS[2], ARGV, 1, hk)
