-- Lease upkeep for the gate. ARGV[1] selects the operation; time from TIME.
-- KEYS[1] leases zset, KEYS[2] lease owner hash, KEYS[3] per-replica hash.
--   release  ARGV[2]=lease id                 -> 1 the first time, 0 after (exactly once)
--   renew    ARGV[2]=ttl_ms, ARGV[3..]=ids    -> the ids still live (now renewed)
--   stats                                     -> {expired, replica1, n1, ...}
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function drop(lid)
  if redis.call('ZREM', KEYS[1], lid) == 1 then
    local rid = redis.call('HGET', KEYS[2], lid)
    if rid then
      redis.call('HINCRBY', KEYS[3], rid, -1)
      redis.call('HDEL', KEYS[2], lid)
    end
    return 1
  end
  return 0
end

if op == 'release' then
  return drop(ARGV[2])
end

local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, lid in ipairs(dead) do drop(lid) end

if op == 'renew' then
  local ttl = tonumber(ARGV[2])
  local alive = {tostring(#dead)}
  for i = 3, #ARGV do
    if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
      redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i])
      alive[#alive + 1] = ARGV[i]
    end
  end
  return alive
end

local res = {tostring(#dead)}
local per = redis.call('HGETALL', KEYS[3])
for i = 1, #per, 2 do
  if tonumber(per[i + 1]) > 0 then
    res[#res + 1] = per[i]
    res[#res + 1] = per[i + 1]
  else
    redis.call('HDEL', KEYS[3], per[i])
  end
end
return res
