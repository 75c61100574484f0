-- Replace a reservation by the actual cost and append the ledger event, atomically.
-- KEYS: settled marker, reservation record, ledger stream, then per window: counter hash,
-- expiry zset, holdings hash.
-- ARGV: request_id, actual, n, marker_ttl, event JSON, lease holder ('' when the request
-- reserved in Redis itself).
-- A request reserved from a lease spends out of the lease: the lease shrinks by the actual
-- cost (as far as it still holds that much), so the budget's total held does not move;
-- the rest of what the request reserved stays in the lease, free for the next request.
-- Returns {1, spent after..., taken from the lease...} (one of each per window) when
-- settled now, {0, marker} when this request was already settled (idempotent); the marker
-- records what was taken from the lease, comma-separated. Uses common.lua.
local rid = ARGV[1]
local actual = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local holder = ARGV[6]
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('GET', KEYS[1])}
end
local after = {1}
local taken = {}
for i = 0, n - 1 do
  local bkey, zkey, hkey = KEYS[4 + i * 3], KEYS[5 + i * 3], KEYS[6 + i * 3]
  local take = 0
  if holder ~= '' then
    local held = tonumber(redis.call('HGET', hkey, holder) or '0')
    take = math.min(held, actual)
    if take > 0 then
      redis.call('HINCRBY', bkey, 'leased', -take)
      if held > take then
        redis.call('HSET', hkey, holder, held - take)
      else
        redis.call('HDEL', hkey, holder)
        redis.call('ZREM', zkey, holder)
      end
    end
  else
    drop_holding(bkey, zkey, hkey, rid)
  end
  taken[#taken + 1] = take
  after[#after + 1] = redis.call('HINCRBY', bkey, 'spent', actual)
end
for _, t in ipairs(taken) do
  after[#after + 1] = t
end
redis.call('SET', KEYS[1], table.concat(taken, ','), 'EX', tonumber(ARGV[4]))
redis.call('DEL', KEYS[2])
redis.call('XADD', KEYS[3], '*', 'event', ARGV[5])
return after
