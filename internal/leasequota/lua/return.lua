-- KEYS: 1 state, 2 leases, 3 expiries, 4 stranded, 5 request, 6 epoch.
-- ARGV: 1 now, 2 require epoch, 3 instance, 4 replay ms, 5 maxttl µs,
-- 6 count, then per item 5 values: meter, amount, window (budgets), and
-- for rates the bucket as the instance's grant left it and the bucket to
-- put back.
-- Reply: {status, now, then per item returned, held} with status as in
-- grant.lua. A return for a lease that is gone (reclaimed) or from an
-- ended window returns 0; a rate's units go back only while the bucket is
-- still as the grant left them (no decision has followed it).
if epoch_lost() then return {-1} end
local prev = replayed(KEYS[5])
if prev then return prev end
local now = now_us()
local inst = ARGV[3]
reclaim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], now, tonumber(ARGV[5]), inst)
local l = lease_load(KEYS[2], inst)
local out = {0, now}
local cnt = tonumber(ARGV[6])
for i = 0, cnt - 1 do
  local b = 7 + i * 5
  local k, amt, x = tonumber(ARGV[b]), tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local back, held = 0, 0
  if is_rate(k) then
    if (redis.call('HGET', KEYS[1], 't' .. k) or '') == ARGV[b + 3] then
      redis.call('HSET', KEYS[1], 't' .. k, ARGV[b + 4])
      back = amt
    end
  elseif l then
    local g = num(l['g' .. k])
    local cur = true
    if is_budget(k) then
      cur = num(l['w' .. k]) == x and num(redis.call('HGET', KEYS[1], 'w' .. k)) == x
    end
    if cur then
      back = math.min(amt, g)
      if back > 0 then
        redis.call('HINCRBY', KEYS[1], 'u' .. k, s(-back))
        g = g - back
        l['g' .. k] = g -- the pin stays: reclaim keeps min(pin, held)
      end
      held = g
    end
  end
  out[#out + 1], out[#out + 2] = back, held
end
if l then redis.call('HSET', KEYS[2], inst, cmsgpack.pack(l)) end
redis.call('SET', KEYS[5], cmsgpack.pack(out), 'PX', ARGV[4])
return out
