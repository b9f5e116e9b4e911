-- release: give a pool reservation back; never creates a key (see RedisStore in redis.rs).
-- ARGV: prefix, pool, window, reserved.
local key = ARGV[1] .. ':pool:' .. ARGV[2] .. ':' .. ARGV[3]
if redis.call('EXISTS', key) == 1 then
  local v = redis.call('DECRBY', key, ARGV[4])
  if v < 0 then redis.call('SET', key, 0, 'KEEPTTL') end
end
return 0
