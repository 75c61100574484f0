-- Keep live requests' reservations from expiring: each gets a new expiry of now + ttl.
-- KEYS per request: reservation record, then per window: expiry zset, holdings hash.
-- ARGV: now, ttl, count, then per request: request_id, n (its windows).
-- A reservation already settled, released or expired is left alone (its record is gone).
-- Returns how many reservations were renewed. Uses common.lua (nothing of it needed).
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local count = tonumber(ARGV[3])
local k = 1
local a = 4
local renewed = 0
for _ = 1, count do
  local rid, n = ARGV[a], tonumber(ARGV[a + 1])
  a = a + 2
  if redis.call('EXPIRE', KEYS[k], ttl) == 1 then
    renewed = renewed + 1
    for i = 0, n - 1 do
      local zkey, hkey = KEYS[k + 1 + i * 2], KEYS[k + 2 + i * 2]
      if redis.call('HEXISTS', hkey, rid) == 1 then
        redis.call('ZADD', zkey, 'XX', now + ttl, rid)
      end
    end
  end
  k = k + 1 + n * 2
end
return renewed
