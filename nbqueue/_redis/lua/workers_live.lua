-- Drop the expired records of the worker registry, then list the live ones.
--
-- KEYS: 1 the hash of records, 2 the sorted set of expiries (see worker_beat.lua)
-- Returns, for each live worker: its id, its expiry (ms, server clock) and its record (JSON).
local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #expired > 0 then
  redis.call('HDEL', KEYS[1], unpack(expired))
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
local live = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf', 'WITHSCORES')
local reply = {}
for i = 1, #live, 2 do
  reply[#reply + 1] = live[i]
  reply[#reply + 1] = live[i + 1]
  reply[#reply + 1] = redis.call('HGET', KEYS[1], live[i]) or false
end
return reply
