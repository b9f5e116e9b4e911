-- probe_renew: a probe still running keeps its lease (see RedisStore in redis.rs).
-- ARGV: prefix, breaker, token, lease_ms. A lease that lapsed, or whose half-open period
-- ended (the set was deleted with it), is not taken again.
local t = redis.call('TIME')
local now_ms = math.floor((tonumber(t[1]) * 1000000 + tonumber(t[2])) / 1000)
local function n(x) return string.format('%.0f', x) end
local key = ARGV[1] .. ':probes:' .. ARGV[2]
local lease = tonumber(ARGV[4])
local expires = tonumber(redis.call('ZSCORE', key, ARGV[3]) or '0') or 0
if expires <= now_ms then return 0 end
redis.call('ZADD', key, 'XX', n(now_ms + lease), ARGV[3])
if redis.call('PTTL', key) < lease then redis.call('PEXPIRE', key, n(lease)) end
return 1
