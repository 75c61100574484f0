-- Drop a reservation without billing. KEYS: reservation record, then per window: counter
-- hash, expiry zset, holdings hash. ARGV: request_id, n. Uses common.lua.
local rid = ARGV[1]
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  local bkey, zkey, hkey = KEYS[2 + i * 3], KEYS[3 + i * 3], KEYS[4 + i * 3]
  drop_holding(bkey, zkey, hkey, rid)
end
redis.call('DEL', KEYS[1])
return 1
