-- Reserve ARGV[2] nano-dollars against every budget window, all or none.
-- KEYS[1] = reservation record; then per window: counter hash, expiry zset, holdings hash.
-- ARGV: request_id, amount, now, ttl, n, then per window: limit, expire_at (0 = never).
-- Returns {1} reserved (or already reserved), {0, i, remaining} refused at window i,
-- {2, i} window i has no counter yet (the caller rebuilds it from the ledger and retries).
-- Uses common.lua.
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
  drop_expired(bkey, zkey, hkey, now)
  local c = redis.call('HMGET', bkey, 'spent', 'reserved', 'leased')
  local held = tonumber(c[1] or '0') + tonumber(c[2] or '0') + tonumber(c[3] or '0')
  local limit = tonumber(ARGV[6 + i * 2])
  if held + amount > limit then
    return {0, i, limit - held}
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
