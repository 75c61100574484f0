-- Shared by the budget scripts (prepended to each when it is registered).
-- A counter hash holds 'spent', 'reserved' (per-request reservations) and 'leased' (slices
-- held by gateway processes, whose holdings are named 'lease:...'); the holdings hash maps
-- each holder to its amount, the expiry zset each holder to when it lapses.

-- Drop what a holder holds in one window; returns the amount (0 when it held nothing).
local function drop_holding(bkey, zkey, hkey, holder)
  local held = tonumber(redis.call('HGET', hkey, holder) or '0')
  if held ~= 0 then
    local field = 'reserved'
    if string.sub(holder, 1, 6) == 'lease:' then field = 'leased' end
    redis.call('HINCRBY', bkey, field, -held)
  end
  redis.call('HDEL', hkey, holder)
  redis.call('ZREM', zkey, holder)
  return held
end

-- Reservations and leases whose gateway never settled or renewed them expire here.
local function drop_expired(bkey, zkey, hkey, now)
  for _, holder in ipairs(redis.call('ZRANGEBYSCORE', zkey, '-inf', now)) do
    drop_holding(bkey, zkey, hkey, holder)
  end
end

