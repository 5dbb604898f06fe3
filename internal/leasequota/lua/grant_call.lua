-- Shared by the grant scripts, after prelude.lua and ticket_prelude.lua.
-- grant_call carries out one scope's Grant: KEYS[o+1] state, [o+2] leases,
-- [o+3] expiries, [o+4] stranded, [o+5] request; KEYS[#KEYS-1] the tag's
-- ticket expiry set (its expired tickets are refunded first, as the ticket
-- sweep does: what they held is back before the grant), KEYS[#KEYS] epoch
-- (checked by the caller, once a script). ARGV 1-8: now, require epoch,
-- instance, ttl µs, validity µs, replay ms, key ms, maxttl µs; ARGV[p] the
-- call's want count, then per want 8 values.
-- Budgets and concurrency: meter, amount, min, pin, limit, window
-- (budgets), pin sequence (0: none; see set_pin), 0. Rates, decided by
-- the caller with the exact GCRA arithmetic of quota.Bucket on the state
-- it read: meter, granted,
-- remaining, deadline µs, 0, 0, the bucket as read, the bucket after.
-- Reply: {status, now, expiry, then per want granted, remaining, held, x}
-- where status is 0 fresh, 1 replay, -2 conflict (a rate's bucket changed
-- since it was read: nothing was done, read again; the reply is {-2, 0}),
-- and x is the lease's spend deadline for rates, the counter after the
-- grant for budgets and concurrency.
local function grant_call(o, p)
  local kx = KEYS[#KEYS - 1]
  local prev = replayed(KEYS[o + 5])
  if prev then return prev end
  local cnt = tonumber(ARGV[p])
  for i = 0, cnt - 1 do
    local b = p + 1 + i * 8
    local k = tonumber(ARGV[b])
    if is_rate(k) and (redis.call('HGET', KEYS[o + 1], 't' .. k) or '') ~= ARGV[b + 6] then
      return {-2, 0}
    end
  end
  local now = now_us()
  local inst = ARGV[3]
  local ttl = tonumber(ARGV[4])
  reclaim(KEYS[o + 1], KEYS[o + 2], KEYS[o + 3], KEYS[o + 4], now, tonumber(ARGV[8]), inst)
  tk_sweep(string.sub(kx, 1, -4), kx, now, ARGV[7], ARGV[6])
  -- One decision: when a budget or slot want cannot get its min, the
  -- direct rate decisions of the call (deadline 0) are not applied (got 0),
  -- as quota.Memory charges nothing on a denial.
  local short = false
  for i = 0, cnt - 1 do
    local b = p + 1 + i * 8
    local k, amt, mn = tonumber(ARGV[b]), tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
    if not is_rate(k) and mn > 0 then
      local used = num(redis.call('HGET', KEYS[o + 1], 'u' .. k))
      local x = tonumber(ARGV[b + 5])
      if is_budget(k) then
        local w = num(redis.call('HGET', KEYS[o + 1], 'w' .. k))
        if x > w then used = 0 elseif x < w then short = true end
      end
      if math.min(amt, math.max(tonumber(ARGV[b + 4]) - used, 0)) < mn then short = true end
    end
  end
  local l = lease_load(KEYS[o + 2], inst) or {}
  local exp = now + ttl
  local out = {0, now, exp}
  for i = 0, cnt - 1 do
    local b = p + 1 + i * 8
    local k, amt, mn, pin = tonumber(ARGV[b]), tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
    local lim, x = tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
    local got, rem, held, extra = 0, 0, 0, 0
    if is_rate(k) then
      got, rem, extra = amt, mn, pin
      if short and pin == 0 then
        got = 0
      elseif ARGV[b + 7] ~= ARGV[b + 6] then
        redis.call('HSET', KEYS[o + 1], 't' .. k, ARGV[b + 7])
      end
      held = got
    else
      local used = num(redis.call('HGET', KEYS[o + 1], 'u' .. k))
      local ok = true
      if is_budget(k) then
        local w = num(redis.call('HGET', KEYS[o + 1], 'w' .. k))
        if x > w then
          redis.call('HSET', KEYS[o + 1], 'w' .. k, s(x), 'u' .. k, 0, 's' .. k, 0)
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
          redis.call('HINCRBY', KEYS[o + 1], 'u' .. k, s(got))
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
  redis.call('HSET', KEYS[o + 2], inst, cmsgpack.pack(l))
  redis.call('ZADD', KEYS[o + 3], s(exp), inst)
  local keep = ARGV[7]
  redis.call('PEXPIRE', KEYS[o + 1], keep)
  redis.call('PEXPIRE', KEYS[o + 2], keep)
  redis.call('PEXPIRE', KEYS[o + 3], keep)
  redis.call('SET', KEYS[o + 5], cmsgpack.pack(out), 'PX', ARGV[6])
  return out
end
