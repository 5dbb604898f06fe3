-- KEYS: 1 state, 2 epoch. ARGV: 1 now, 2 require epoch, 3 key ms, 4 meter,
-- 5 the bucket as read, 6 the bucket after the caller's adjustment.
-- Reply: {status} with status 0 done, -1 epoch lost, -2 conflict (the
-- bucket changed since it was read: nothing was done, read again).
if epoch_lost() then return {-1} end
local f = 't' .. ARGV[4]
if (redis.call('HGET', KEYS[1], f) or '') ~= ARGV[5] then return {-2} end
redis.call('HSET', KEYS[1], f, ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {0}
