-- One admission, atomically: the same steps as runtime/gate/admission.py `decide`.
-- Time comes from the server (TIME) so every gate agrees on expiry, GCRA and the UTC day.
--
-- KEYS[1] leases       sorted set: lease id -> expiry (ms)
-- KEYS[2] lease owner  hash: lease id -> replica id
-- KEYS[3] per replica  hash: replica id -> live leases
-- KEYS[4] GCRA TAT     string (ms) for this key
-- KEYS[5] day counter  prefix for this key ("..:<day index>" is appended)
-- ARGV: lease_id, ttl_ms, plan_max, rate_per_min|'', daily_cap|'', expires_at_ms|'', key_endpoint|'',
--       endpoint, n, id1, cap1, ...
-- Returns {admitted, reason, replica, limit, remaining, reset_ms, retry_ms, in_flight, expired}
-- (all strings: Lua numbers would be truncated to integers on the way out).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Purge leases whose gate stopped renewing them; report how many (ws_lease_leaks_total).
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, lid in ipairs(dead) do
  local rid = redis.call('HGET', KEYS[2], lid)
  if rid then
    redis.call('HINCRBY', KEYS[3], rid, -1)
    redis.call('HDEL', KEYS[2], lid)
  end
  redis.call('ZREM', KEYS[1], lid)
end
local expired = #dead

local lease_id = ARGV[1]
local ttl_ms = tonumber(ARGV[2])
local plan_max = tonumber(ARGV[3])
local rate = tonumber(ARGV[4])
local cap = tonumber(ARGV[5])
local expires_at = tonumber(ARGV[6])
local key_endpoint = ARGV[7]
local endpoint = ARGV[8]
local n = tonumber(ARGV[9])

local budget = 0
local ids, caps = {}, {}
for i = 1, n do
  ids[i] = ARGV[8 + 2 * i]
  caps[i] = tonumber(ARGV[9 + 2 * i])
  budget = budget + caps[i]
end
if budget > plan_max then budget = plan_max end
local total = redis.call('ZCARD', KEYS[1])
local function out(ok, reason, rid, limit, remaining, reset_ms, retry_ms)
  return {tostring(ok), reason, rid, tostring(limit), tostring(remaining), tostring(reset_ms),
          tostring(retry_ms), tostring(total + ok), tostring(expired)}
end
local conc_remaining = math.max(0, budget - total)

if key_endpoint ~= '' and key_endpoint ~= endpoint then
  return out(0, 'scope', '', budget, conc_remaining, 0, -1)
end
if expires_at and now >= expires_at then
  return out(0, 'expired', '', budget, conc_remaining, 0, -1)
end

local DAY = 86400000
local day = math.floor(now / DAY)
local day_key = KEYS[5] .. ':' .. day
local to_day_end = (day + 1) * DAY - now
local day_count = 0
if cap then
  day_count = tonumber(redis.call('GET', day_key) or '0')
  if day_count >= cap then
    return out(0, 'daily_cap', '', cap, 0, to_day_end, -1)
  end
end

local new_tat, r_limit, r_remaining, r_reset
if rate then
  local interval = 60000 / rate
  local burst = math.max(1, math.floor(rate))
  local tau = (burst - 1) * interval
  local tat = tonumber(redis.call('GET', KEYS[4]) or '')
  local base = now
  if tat and tat > now then base = tat end
  if base - now - tau > 0.001 then
    local retry = base - tau - now
    if retry > 120000 then retry = 120000 end
    return out(0, 'rate', '', burst, 0, base - now, retry)
  end
  new_tat = base + interval
  r_limit = burst
  r_remaining = math.max(0, math.floor((now + tau - (new_tat - interval)) / interval + 1e-9))
  r_reset = new_tat - now
end

if n == 0 then
  return out(0, 'no_replicas', '', budget, conc_remaining, 0, -1)
end
if total >= budget then
  if budget >= plan_max then
    return out(0, 'budget', '', budget, conc_remaining, 0, -1)
  end
  return out(0, 'capacity', '', budget, conc_remaining, 0, -1)
end
local loads = redis.call('HMGET', KEYS[3], unpack(ids))
local best, best_room = nil, 0
for i = 1, n do
  local room = caps[i] - tonumber(loads[i] or '0')
  if room > 0 and room > best_room then
    best, best_room = ids[i], room
  end
end
if not best then
  return out(0, 'capacity', '', budget, conc_remaining, 0, -1)
end

-- Every check passed: commit the lease and the quota.
redis.call('ZADD', KEYS[1], now + ttl_ms, lease_id)
redis.call('HSET', KEYS[2], lease_id, best)
redis.call('HINCRBY', KEYS[3], best, 1)
local limit, remaining, reset_ms = budget, budget - total - 1, 0
if rate then
  redis.call('SET', KEYS[4], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1000)
  limit, remaining, reset_ms = r_limit, r_remaining, r_reset
elseif cap then
  limit, remaining, reset_ms = cap, cap - day_count - 1, to_day_end
end
if cap then
  redis.call('INCR', day_key)
  redis.call('PEXPIRE', day_key, 2 * DAY)
end
return out(1, '', best, limit, remaining, reset_ms, 0)
