-- KEYS: 1 state, 2 leases, 3 expiries, 4 stranded, 5 request, 6 the tag's
-- ticket expiry set (its expired tickets are refunded first, as the ticket
-- sweep does: what they held is back before the grant), 7 epoch.
-- ARGV: 1 now, 2 require epoch, 3 instance, 4 ttl µs, 5 validity µs,
-- 6 replay ms, 7 key ms, 8 maxttl µs, 9 count, then per want 8 values.
-- Budgets and concurrency: meter, amount, min, pin, limit, window
-- (budgets), pin sequence (0: none; see set_pin), 0. Rates, decided by
-- the caller with the exact GCRA arithmetic of quota.Bucket on the state
-- it read: meter, granted,
-- remaining, deadline µs, 0, 0, the bucket as read, the bucket after.
-- Reply: {status, now, expiry, then per want granted, remaining, held, x}
-- where status is 0 fresh, 1 replay, -1 epoch lost, -2 conflict (a rate's
-- bucket changed since it was read: nothing was done, read again), and x
-- is the lease's spend deadline for rates, the counter after the grant
-- for budgets and concurrency.
if epoch_lost() then return {-1} end
local prev = replayed(KEYS[5])
if prev then return prev end
local cnt = tonumber(ARGV[9])
for i = 0, cnt - 1 do
  local b = 10 + i * 8
  local k = tonumber(ARGV[b])
  if is_rate(k) and (redis.call('HGET', KEYS[1], 't' .. k) or '') ~= ARGV[b + 6] then
    return {-2, 0}
  end
end
local now = now_us()
local inst = ARGV[3]
local ttl = tonumber(ARGV[4])
reclaim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], now, tonumber(ARGV[8]), inst)
tk_sweep(string.sub(KEYS[6], 1, -4), KEYS[6], now, ARGV[7], ARGV[6])
-- One decision: when a budget or slot want cannot get its min, the
-- direct rate decisions of the call (deadline 0) are not applied (got 0),
-- as quota.Memory charges nothing on a denial.
local short = false
for i = 0, cnt - 1 do
  local b = 10 + i * 8
  local k, amt, mn = tonumber(ARGV[b]), tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  if not is_rate(k) and mn > 0 then
    local used = num(redis.call('HGET', KEYS[1], 'u' .. k))
    local x = tonumber(ARGV[b + 5])
    if is_budget(k) then
      local w = num(redis.call('HGET', KEYS[1], 'w' .. k))
      if x > w then used = 0 elseif x < w then short = true end
    end
    if math.min(amt, math.max(tonumber(ARGV[b + 4]) - used, 0)) < mn then short = true end
  end
end
local l = lease_load(KEYS[2], inst) or {}
local exp = now + ttl
local out = {0, now, exp}
for i = 0, cnt - 1 do
  local b = 10 + i * 8
  local k, amt, mn, pin = tonumber(ARGV[b]), tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local lim, x = tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
  local got, rem, held, extra = 0, 0, 0, 0
  if is_rate(k) then
    got, rem, extra = amt, mn, pin
    if short and pin == 0 then
      got = 0
    elseif ARGV[b + 7] ~= ARGV[b + 6] then
      redis.call('HSET', KEYS[1], 't' .. k, ARGV[b + 7])
    end
    held = got
  else
    local used = num(redis.call('HGET', KEYS[1], 'u' .. k))
    local ok = true
    if is_budget(k) then
      local w = num(redis.call('HGET', KEYS[1], 'w' .. k))
      if x > w then
        redis.call('HSET', KEYS[1], 'w' .. k, s(x), 'u' .. k, 0, 's' .. k, 0)
        used = 0
      elseif x < w then
        ok = false -- the caller's window has ended here
      end
      if ok and num(l['w' .. k]) ~= x then
        l['w' .. k], l['g' .. k], l['p' .. k] = x, 0, 0
      end
    end
    local fit = math.max(lim - used, 0)
    if ok then
      got = math.min(amt, fit)
      if got < mn or got <= 0 then got = 0 end
      if got > 0 then
        redis.call('HINCRBY', KEYS[1], 'u' .. k, s(got))
        l['g' .. k] = num(l['g' .. k]) + got
      end
      set_pin(l, k, pin, tonumber(ARGV[b + 6]))
      held = num(l['g' .. k])
    end
    rem = fit - got
    extra = used + got
  end
  out[#out + 1], out[#out + 2], out[#out + 3], out[#out + 4] = got, rem, held, extra
end
l.e = exp
redis.call('HSET', KEYS[2], inst, cmsgpack.pack(l))
redis.call('ZADD', KEYS[3], s(exp), inst)
local keep = ARGV[7]
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[2], keep)
redis.call('PEXPIRE', KEYS[3], keep)
redis.call('SET', KEYS[5], cmsgpack.pack(out), 'PX', ARGV[6])
return out
