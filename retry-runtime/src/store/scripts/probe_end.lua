-- probe_end: a leased probe's result ends its half-open period (see RedisStore in redis.rs).
-- ARGV: prefix, breaker, token, cooldown_ms ('': the probe succeeded, close). Only while
-- the lease is still in the set, i.e. the period is the one it was leased in and no lease was
-- taken after it lapsed: a result that comes after the period ended changes nothing.
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local function n(x) return string.format('%.0f', x) end
local key = ARGV[1] .. ':breaker:' .. ARGV[2]
local leases = ARGV[1] .. ':probes:' .. ARGV[2]
if not redis.call('ZSCORE', leases, ARGV[3]) then return 0 end
if ARGV[4] == '' then
  redis.call('DEL', key, leases)
  return 1
end
local cooldown = tonumber(ARGV[4])
local gen = tonumber(redis.call('HGET', key, 'gen') or '0') or 0
redis.call('HSET', key, 'until', n(now_ms + cooldown), 'gen', n(math.max(now_us, gen + 1)))
redis.call('PEXPIRE', key, n(cooldown + math.max(cooldown, 60000)))
redis.call('DEL', leases)
return 1
