-- Drop the expired members of a capability sorted set, then list the live ones.
--
-- KEYS: 1 the capability sorted set
-- Returns the live members (<worker id>|<actor>).
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
