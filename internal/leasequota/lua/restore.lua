-- KEYS: 1 state, 2 leases, 3 epoch. ARGV: 1 now, 2 require epoch, 3 key
-- ms, 4 meter (a budget), 5 window start (Unix s), 6 settled use, 7 the
-- calling instance, 8 what its lease holds unspent.
-- Reply: {status, counter after} with status 0 done, 1 ignored (a past
-- window), -1 epoch lost. The counter becomes the settled use plus what
-- other instances' live leases and stranded amounts of the window hold,
-- plus the caller's unspent lease, so restoring from the ledger never
-- frees what an instance holds.
if epoch_lost() then return {-1} end
local k, x, used = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]) + tonumber(ARGV[8])
local w = num(redis.call('HGET', KEYS[1], 'w' .. k))
if x < w then return {1, num(redis.call('HGET', KEYS[1], 'u' .. k))} end
local held = 0
if x == w then
  held = num(redis.call('HGET', KEYS[1], 's' .. k))
  local all = redis.call('HGETALL', KEYS[2])
  for i = 2, #all, 2 do
    local l = cmsgpack.unpack(all[i])
    if all[i - 1] ~= ARGV[7] and num(l['w' .. k]) == x then held = held + num(l['g' .. k]) end
  end
else
  redis.call('HSET', KEYS[1], 's' .. k, 0)
end
redis.call('HSET', KEYS[1], 'w' .. k, s(x), 'u' .. k, s(used + held))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {0, used + held}
