-- KEYS: per scope 4 keys (state, leases, expiries, stranded), then epoch.
-- ARGV: 1 now, 2 require epoch, 3 instance, 4 ttl µs, 5 maxttl µs, then
-- per scope: pin count, then (meter, pin, window start s, pin sequence,
-- until µs) quints; a pin applies as set_pin says, to a budget only in its
-- window.
-- Reply: {status, now, expiry, then per scope 1 renewed or 0 lost}.
-- Renewing is idempotent (an absolute expiry, pins ordered by sequence),
-- so it needs no request id. A lease already reclaimed stays lost: the instance must drop it.
if epoch_lost() then return {-1} end
local now = now_us()
local inst, ttl, maxttl = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local exp = now + ttl
local out = {0, now, exp}
local a = 6
for j = 0, (#KEYS - 1) / 4 - 1 do
  local sk, lk, xk, zk = KEYS[j * 4 + 1], KEYS[j * 4 + 2], KEYS[j * 4 + 3], KEYS[j * 4 + 4]
  reclaim(sk, lk, xk, zk, now, maxttl, inst)
  local l = lease_load(lk, inst)
  local pins = tonumber(ARGV[a])
  if l then
    for q = 0, pins - 1 do
      local b = a + 1 + q * 5
      local k, p, w = tonumber(ARGV[b]), tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
      if not is_budget(k) or num(l['w' .. k]) == w then
        set_pin(l, k, p, tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]))
      end
    end
    l.e = exp
    redis.call('HSET', lk, inst, cmsgpack.pack(l))
    redis.call('ZADD', xk, s(exp), inst)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  a = a + 1 + pins * 5
end
return out
