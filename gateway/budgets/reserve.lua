-- Reserve ARGV[2] nano-dollars against every budget window, all or none.
-- KEYS[1] = reservation record; then per window: counter hash, expiry zset, holdings hash.
-- ARGV: request_id, amount, now, ttl, n, then per window: limit, expire_at (0 = never).
-- Returns {1} reserved (or already reserved), {0, i, remaining} refused at window i,
-- {2, i} window i has no counter yet (the caller rebuilds it from the ledger and retries).
local rid = ARGV[1]
local amount = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {1}
end
for i = 0, n - 1 do
  local bkey, zkey, hkey = KEYS[2 + i * 3], KEYS[3 + i * 3], KEYS[4 + i * 3]
  if redis.call('EXISTS', bkey) == 0 then
    return {2, i}
  end
  -- reservations whose gateway never settled them expire here
  local expired = redis.call('ZRANGEBYSCORE', zkey, '-inf', now)
  for _, r in ipairs(expired) do
    local held = tonumber(redis.call('HGET', hkey, r) or '0')
    redis.call('HINCRBY', bkey, 'reserved', -held)
    redis.call('HDEL', hkey, r)
    redis.call('ZREM', zkey, r)
  end
  local spent = tonumber(redis.call('HGET', bkey, 'spent') or '0')
  local reserved = tonumber(redis.call('HGET', bkey, 'reserved') or '0')
  local limit = tonumber(ARGV[6 + i * 2])
  if spent + reserved + amount > limit then
    return {0, i, limit - spent - reserved}
  end
end
for i = 0, n - 1 do
  local bkey, zkey, hkey = KEYS[2 + i * 3], KEYS[3 + i * 3], KEYS[4 + i * 3]
  redis.call('HINCRBY', bkey, 'reserved', amount)
  redis.call('HSET', hkey, rid, amount)
  redis.call('ZADD', zkey, now + ttl, rid)
  local expire_at = tonumber(ARGV[7 + i * 2])
  if expire_at > 0 then
    redis.call('EXPIREAT', bkey, expire_at)
    redis.call('EXPIREAT', zkey, expire_at)
    redis.call('EXPIREAT', hkey, expire_at)
  end
end
redis.call('SET', KEYS[1], amount, 'EX', ttl)
return {1}
