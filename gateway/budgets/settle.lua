-- Replace a reservation by the actual cost and append the ledger event, atomically.
-- KEYS: settled marker, reservation record, ledger stream, then per window: counter hash,
-- expiry zset, holdings hash.
-- ARGV: request_id, actual, n, marker_ttl, event JSON.
-- Returns {1, spent after, ...} (one per window) when settled now, {0} when this request was
-- already settled (idempotent).
local rid = ARGV[1]
local actual = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[4])) == false then
  return {0}
end
local after = {1}
for i = 0, n - 1 do
  local bkey, zkey, hkey = KEYS[4 + i * 3], KEYS[5 + i * 3], KEYS[6 + i * 3]
  local held = redis.call('HGET', hkey, rid)
  if held then
    redis.call('HINCRBY', bkey, 'reserved', -tonumber(held))
    redis.call('HDEL', hkey, rid)
    redis.call('ZREM', zkey, rid)
  end
  after[#after + 1] = redis.call('HINCRBY', bkey, 'spent', actual)
end
redis.call('DEL', KEYS[2])
redis.call('XADD', KEYS[3], '*', 'event', ARGV[5])
return after
