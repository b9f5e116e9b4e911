-- settle: replace a pool reservation by the real cost (see RedisStore in redis.rs).
-- ARGV: prefix, pool, window_ms, window (-1: none, i.e. reconciled spend), reserved, real.
local t = redis.call('TIME')
local now_ms = math.floor((tonumber(t[1]) * 1000000 + tonumber(t[2])) / 1000)
local p, pool = ARGV[1], ARGV[2]
local wms, window, reserved, real = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local function n(x) return string.format('%.0f', x) end
local current = math.floor(now_ms / wms)
local key, delta
if current == window then
  key, delta = p .. ':pool:' .. pool .. ':' .. n(window), real - reserved
else
  key, delta = p .. ':pool:' .. pool .. ':' .. n(current), real
end
local v = redis.call('INCRBY', key, n(delta))
if v < 0 then redis.call('SET', key, 0) end
redis.call('PEXPIRE', key, n(2 * wms))
return v
