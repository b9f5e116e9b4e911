-- admit: one attempt's admission, all or nothing (see RedisStore in redis.rs).
-- ARGV: prefix, breaker, deposit, withdraw, ratio_ppm, floor_per_window, pool, window_ms,
-- limit, expected, pacer, interval_us, burst, max_wait_us, probe_token, probes, lease_ms
-- ('' names and token: not asked).
-- Returns {verdict, breaker_found, generation, open_ms, committed, window, wait_us, leased}.
-- A stored open state whose cooldown is over is the fleet's half-open period: an attempt
-- that asks with a probe token takes one of its `probes` leases (a sorted set of tokens
-- scored by expiry, ms) or is refused (verdict 5).
-- The retry budget's window (seconds) is a placeholder, substituted by RedisStore::new.
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local p = ARGV[1]
local bname, deposit, withdraw = ARGV[2], ARGV[3], ARGV[4]
local ratio, floor = tonumber(ARGV[5]), tonumber(ARGV[6])
local pool, wms, limit, expected = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local pace, interval, burst, max_wait = ARGV[11], tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local ptoken, pmax, plms = ARGV[15], tonumber(ARGV[16]), tonumber(ARGV[17])
local function n(x) return string.format('%.0f', x) end
local verdict = 0
local b_found, b_gen, b_open = 0, 0, 0
local probe_key, leased = nil, 0
if bname ~= '' then
  local v = redis.call('HMGET', p .. ':breaker:' .. bname, 'until', 'gen')
  if v[1] then
    b_found = 1
    b_gen = tonumber(v[2]) or 0
    local until_ms = tonumber(v[1]) or 0
    if until_ms > now_ms then
      b_open = until_ms - now_ms
      verdict = 1
    elseif ptoken ~= '' then
      probe_key = p .. ':probes:' .. bname
      if redis.call('ZCOUNT', probe_key, '(' .. n(now_ms), '+inf') >= pmax then verdict = 5 end
    end
  end
end
local sec = math.floor(now_us / 1000000)
if verdict == 0 and bname ~= '' and withdraw == '1' then
  local d, r = 0, 0
  for s = sec - WINDOW_SECS + 1, sec do
    local v = redis.call('HMGET', p .. ':retry:' .. bname .. ':' .. n(s), 'd', 'r')
    d = d + (tonumber(v[1]) or 0)
    r = r + (tonumber(v[2]) or 0)
  end
  if (r + 1) * 1000000 > d * ratio + floor * 1000000 then verdict = 2 end
end
local pace_key, new_tat, wait_us = nil, nil, 0
if verdict == 0 and pace ~= '' then
  pace_key = p .. ':pace:' .. pace
  local tat = tonumber(redis.call('GET', pace_key) or '0') or 0
  local at = math.max(tat - (burst - 1) * interval, now_us)
  wait_us = at - now_us
  if wait_us > max_wait then
    verdict = 4
  else
    new_tat = math.max(tat, at) + interval
  end
end
local committed, widx, pool_key = 0, 0, nil
if pool ~= '' then
  widx = math.floor(now_ms / wms)
  pool_key = p .. ':pool:' .. pool .. ':' .. n(widx)
  committed = math.max(tonumber(redis.call('GET', pool_key) or '0') or 0, 0)
  if verdict == 0 and (committed >= limit or committed + expected > limit) then verdict = 3 end
end
if verdict == 0 then
  if pool_key then
    committed = redis.call('INCRBY', pool_key, n(expected))
    redis.call('PEXPIRE', pool_key, n(2 * wms))
  end
  if new_tat then
    redis.call('SET', pace_key, n(new_tat), 'PX', n(math.ceil((new_tat - now_us) / 1000) + 1000))
  end
  if bname ~= '' and (deposit == '1' or withdraw == '1') then
    local rk = p .. ':retry:' .. bname .. ':' .. n(sec)
    if deposit == '1' then redis.call('HINCRBY', rk, 'd', 1) end
    if withdraw == '1' then redis.call('HINCRBY', rk, 'r', 1) end
    redis.call('EXPIRE', rk, WINDOW_SECS + 1)
  end
  if probe_key then
    redis.call('ZREMRANGEBYSCORE', probe_key, '-inf', n(now_ms))
    redis.call('ZADD', probe_key, n(now_ms + plms), ptoken)
    if redis.call('PTTL', probe_key) < plms then redis.call('PEXPIRE', probe_key, n(plms)) end
    leased = 1
  end
end
return {verdict, b_found, b_gen, b_open, committed, widx, wait_us, leased}
