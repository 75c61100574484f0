-- Size one gateway process's leases: per budget window, a slice of the budget reserved for
-- that process, which it hands out to its requests without asking Redis each time.
-- KEYS per window: counter hash, expiry zset, holdings hash.
-- ARGV: holder, now, ttl, share, n, then per window: want, floor, expected, limit, expire_at.
--   want: the lease the process would like to hold; floor: what its requests in flight hold
--   of it (never given back here); expected: what the process believes it holds.
-- The new lease is min(want, share x headroom), where headroom counts the lease itself
-- but not the other processes' leases or reservations, and never less than what is held
-- for requests in flight. It expires at now + ttl unless renewed. Uses common.lua.
-- Returns per window {lease, change, lost, cap}: lost = 1 when the process believed it held
-- a lease that is gone (expired or Redis emptied; then nothing is granted this time);
-- cap = share x headroom.
local holder = ARGV[1]
local now = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local share = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local out = {}
for i = 0, n - 1 do
  local bkey, zkey, hkey = KEYS[1 + i * 3], KEYS[2 + i * 3], KEYS[3 + i * 3]
  local a = 6 + i * 5
  local want, floor, expected = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local limit, expire_at = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  if redis.call('EXISTS', bkey) == 0 then
    -- no counter (never rebuilt, or Redis emptied): nothing can be leased from it
    local lost = 0
    if expected > 0 then lost = 1 end
    out[#out + 1] = {0, 0, lost, 0}
  else
    drop_expired(bkey, zkey, hkey, now)
    local held = tonumber(redis.call('HGET', hkey, holder) or '0')
    local lost = 0
    if held == 0 and expected > 0 then lost = 1 end
    local c = redis.call('HMGET', bkey, 'spent', 'reserved', 'leased')
    local spent, reserved, leased = tonumber(c[1] or '0'), tonumber(c[2] or '0'), tonumber(c[3] or '0')
    local headroom = limit - spent - reserved - (leased - held)
    local cap = 0
    if headroom > 0 then cap = math.floor(headroom * share) end
    local new = math.min(want, cap)
    local keep = math.min(held, floor)
    if new < keep then new = keep end
    -- a lost lease is granted anew only on the next call, once the process has set its
    -- count to zero: a settlement in flight then takes from the new lease consistently
    if lost == 1 then new = 0 end
    local change = new - held
    if change ~= 0 then
      redis.call('HINCRBY', bkey, 'leased', change)
    end
    if new > 0 then
      redis.call('HSET', hkey, holder, new)
      redis.call('ZADD', zkey, now + ttl, holder)
      if expire_at > 0 then
        redis.call('EXPIREAT', zkey, expire_at)
        redis.call('EXPIREAT', hkey, expire_at)
      end
    else
      redis.call('HDEL', hkey, holder)
      redis.call('ZREM', zkey, holder)
    end
    out[#out + 1] = {new, change, lost, cap}
  end
end
return out
