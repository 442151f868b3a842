-- Helpers shared by nbqueue's Redis scripts; the loader (load_scripts in client.py) prepends
-- this file to each of them. Key names are never built here: callers pass every key in KEYS,
-- built in one place (keys.py).

-- The Redis server's clock in milliseconds. Liveness is judged by this clock alone, so clock
-- skew between worker machines cannot make a live worker look dead.
local function now_ms()
    local t = redis.call("time")
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Leave up to `count` wake-up tokens on a wake list (at most `cap` in all) that expires after
-- `ttl` ms. Idle nbqueue consumers block on these lists instead of polling.
local function wake(key, count, cap, ttl)
    local room = cap - redis.call("llen", key)
    local n = math.min(count, room)
    for _ = 1, n do
        redis.call("lpush", key, "1")
    end
    if n > 0 then
        redis.call("pexpire", key, ttl)
    end
end

-- Leave one token on a queue's drained list when neither the queue nor its delay queue holds
-- a message any more; broker.join() blocks on it.
local function signal_if_drained(messages, delayed_messages, drained, cap, ttl)
    if redis.call("hlen", messages) == 0 and redis.call("hlen", delayed_messages) == 0 then
        wake(drained, 1, cap, ttl)
    end
end
