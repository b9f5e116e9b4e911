-- breaker_open: store a breaker's open state (see RedisStore in redis.rs).
-- ARGV: prefix, breaker, cooldown_ms, force ('1': replace a running open state).
-- A new open state ends the half-open period: its probe leases go with it.
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local function n(x) return string.format('%.0f', x) end
local key = ARGV[1] .. ':breaker:' .. ARGV[2]
local cooldown = tonumber(ARGV[3])
local v = redis.call('HMGET', key, 'until', 'gen')
local until_ms, gen = tonumber(v[1]) or 0, tonumber(v[2]) or 0
if ARGV[4] ~= '1' and until_ms > now_ms then return 0 end
redis.call('HSET', key, 'until', n(now_ms + cooldown), 'gen', n(math.max(now_us, gen + 1)))
redis.call('PEXPIRE', key, n(cooldown + math.max(cooldown, 60000)))
redis.call('DEL', ARGV[1] .. ':probes:' .. ARGV[2])
return 1
