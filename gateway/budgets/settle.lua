-- Replace a reservation by the actual cost and append the ledger event, atomically.
-- KEYS: settled marker, reservation record, ledger stream, then per window: counter hash,
-- expiry zset, holdings hash.
-- ARGV: request_id, actual, n, marker_ttl, event JSON, lease holder ('' when the request
-- reserved in Redis itself), mode ('orphan' when a surviving process settles a dead one's
-- request from the in-flight journal, else '').
-- A request reserved from a lease spends out of the lease: the lease shrinks by the actual
-- cost (as far as it still holds that much), so the budget's total held does not move;
-- the rest of what the request reserved stays in the lease, free for the next request.
-- Returns {1, spent after..., taken from the lease...} (one of each per window) when
-- settled now, {0, marker} when this request was already settled (idempotent); the marker
-- records what was taken from the lease, comma-separated. An orphan settlement's marker is
-- 'o<its cost>:' then that: the request's own settlement, should its process come back
-- (it was stalled, not dead), replaces it: the windows are charged the difference, the
-- event is marked to replace the ledger row, and the reply is {2, spent after...,
-- taken..., the orphan settlement's cost}. Uses common.lua.
local rid = ARGV[1]
local actual = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local holder = ARGV[6]
local mode = ARGV[7] or ''
local prior = nil  -- the cost of the orphan settlement this one replaces
if redis.call('EXISTS', KEYS[1]) == 1 then
  local marker = redis.call('GET', KEYS[1])
  if mode == 'orphan' or string.sub(marker, 1, 1) ~= 'o' then
    return {0, marker}
  end
  prior = tonumber(string.match(marker, '^o(%-?%d+):'))
end
local after = {1}
if prior then after[1] = 2 end
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
  after[#after + 1] = redis.call('HINCRBY', bkey, 'spent', actual - (prior or 0))
end
for _, t in ipairs(taken) do
  after[#after + 1] = t
end
local marker = table.concat(taken, ',')
if mode == 'orphan' then marker = 'o' .. ARGV[2] .. ':' .. marker end
redis.call('SET', KEYS[1], marker, 'EX', tonumber(ARGV[4]))
redis.call('DEL', KEYS[2])
if prior then
  redis.call('XADD', KEYS[3], '*', 'event', ARGV[5], 'supersedes', '1')
  after[#after + 1] = prior
else
  redis.call('XADD', KEYS[3], '*', 'event', ARGV[5])
end
return after
