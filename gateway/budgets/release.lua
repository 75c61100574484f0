-- Drop a reservation without billing. KEYS: reservation record, then per window: counter
-- hash, expiry zset, holdings hash. ARGV: request_id, n.
local rid = ARGV[1]
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  local bkey, zkey, hkey = KEYS[2 + i * 3], KEYS[3 + i * 3], KEYS[4 + i * 3]
  local held = redis.call('HGET', hkey, rid)
  if held then
    redis.call('HINCRBY', bkey, 'reserved', -tonumber(held))
    redis.call('HDEL', hkey, rid)
    redis.call('ZREM', zkey, rid)
  end
end
redis.call('DEL', KEYS[1])
return 1
