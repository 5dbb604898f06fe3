-- KEYS: 1 record, 2 expiry set, 3 epoch. ARGV: 1 now, 2 require epoch,
-- 3 tag, 4 id, 5 key ms, 6 retention ms, 7 new expiry µs.
-- Reply: {1, now, expiry} moved; {0, now} unknown, settled or expired (a
-- live ticket found past its expiry is refunded, as the sweep would);
-- {-1} epoch lost. It sets an absolute expiry, so it needs no request id.
if epoch_lost() then return {-1} end
local now = now_us()
local t = tk_load(KEYS[1])
if not t or t.st ~= 'l' then return {0, now} end
local tag, id, keyms = ARGV[3], ARGV[4], ARGV[5]
if t.e <= now then
  tk_expire(tag, KEYS[2], KEYS[1], id, t, keyms, ARGV[6])
  return {0, now}
end
t.e = tonumber(ARGV[7])
redis.call('SET', KEYS[1], cmsgpack.pack(t), 'PX', keyms)
redis.call('ZADD', KEYS[2], s(t.e), id)
redis.call('PEXPIRE', KEYS[2], keyms)
return {1, now, t.e}
