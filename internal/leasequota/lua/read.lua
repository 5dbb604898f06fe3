-- KEYS: 1 state, 2 leases. ARGV: 1 now.
-- Reply: {now, state as HGETALL's flat list, then per lease: instance,
-- expiry, count, then (meter, held, pinned, window, deadline) per meter}.
-- It changes nothing (expired leases show until a reclaim).
local now = now_us()
local out = {now, redis.call('HGETALL', KEYS[1])}
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local l = cmsgpack.unpack(all[i + 1])
  local m = {}
  for k = 0, 6 do
    local held
    if is_rate(k) then held = num(l['n' .. k]) else held = num(l['g' .. k]) end
    if held > 0 then
      m[#m + 1] = k
      m[#m + 1] = held
      m[#m + 1] = math.min(num(l['p' .. k]), held) -- what a reclaim would keep
      m[#m + 1] = num(l['w' .. k])
      m[#m + 1] = num(l['dl' .. k])
    end
  end
  out[#out + 1] = {all[i], l.e, m}
end
return out
