-- Shared by the ticket scripts (tickets.go), after prelude.lua. A ticket
-- record is the string <tag>:k:<id>, msgpack: o owner instance, e expiry
-- µs, m meta, t g c the reserved tokens, GPU ms and cost µ$ (the ticket's
-- figures), st 'l' live, 's' settled or 'x' expired (refunded); r the
-- reservations on scopes of the tag, each {k scope key, m meter, a amount,
-- w window start s and we window end s (budgets), z the window's time zone,
-- x 1 when stranded: not found in the owner's lease when recorded, so not
-- moved, and so neither refunded nor given back by the ticket}. Once
-- settled also ui uo ug uc the usage, sa when (µs), late and ov (overrun)
-- 0 or 1. <tag>:kx is the sorted set of live tickets by expiry µs.

local function tk_load(key)
  local v = redis.call('GET', key)
  if not v then return nil end
  return cmsgpack.unpack(v)
end

-- tk_refund gives back what a live ticket's reservations hold in the
-- counters: concurrency at once, a budget while its counter still counts
-- the reservation's window (a restarted counter never had it).
local function tk_refund(tag, t, keyms)
  for _, r in ipairs(t.r) do
    if r.x ~= 1 and r.a > 0 then
      local sk = tag .. ':s:' .. r.k
      local cur
      if r.m == 6 then
        cur = redis.call('HEXISTS', sk, 'u6') == 1
      else
        cur = num(redis.call('HGET', sk, 'w' .. r.m)) == r.w
      end
      if cur then
        redis.call('HINCRBY', sk, 'u' .. r.m, s(-r.a))
        redis.call('PEXPIRE', sk, keyms)
      end
    end
  end
end

-- tk_expire refunds live ticket t (key, id) and keeps its record, marked
-- expired, for the retention: a settle then is late.
local function tk_expire(tag, kx, key, id, t, keyms, retms)
  tk_refund(tag, t, keyms)
  t.st = 'x'
  redis.call('SET', key, cmsgpack.pack(t), 'PX', retms)
  redis.call('ZREM', kx, id)
end

-- tk_sweep expires the tag's tickets whose expiry is past by now (at most
-- 64 a call, the oldest first) and returns how many.
local function tk_sweep(tag, kx, now, keyms, retms)
  local n = 0
  local due = redis.call('ZRANGEBYSCORE', kx, '-inf', s(now), 'LIMIT', 0, 64)
  for _, id in ipairs(due) do
    local key = tag .. ':k:' .. id
    local t = tk_load(key)
    if t and t.st == 'l' and t.e <= now then
      tk_expire(tag, kx, key, id, t, keyms, retms)
      n = n + 1
    elseif t and t.st == 'l' then
      redis.call('ZADD', kx, s(t.e), id)
    else
      redis.call('ZREM', kx, id)
    end
  end
  return n
end

-- tk_reply is {status, now, owner, expiry, meta, tokens, gpu, cost, state,
-- in, out, gpu used, cost used, settled at, late, overrun, count, then
-- per reservation: scope, meter, amount, window, stranded}.
local function tk_reply(status, now, t)
  local out = {status, now, t.o, t.e, t.m or '', num(t.t), num(t.g), num(t.c), t.st,
    num(t.ui), num(t.uo), num(t.ug), num(t.uc), num(t.sa), num(t.late), num(t.ov), #t.r}
  for _, r in ipairs(t.r) do
    out[#out + 1], out[#out + 2], out[#out + 3], out[#out + 4], out[#out + 5] = r.k, r.m, r.a, num(r.w), num(r.x)
  end
  return out
end

-- tk_charge settles one reservation r of a ticket on tag: use holds the
-- ticket's use per budget meter, c is the window the use counts in (r's
-- own, or the current one when r's ended), late says the reservation was
-- already refunded (its slot freed, its amount no longer counted). A slot
-- is freed; a budget counter gets use − reserved while it still holds r's
-- window (use alone past a stranded reservation's amount, or once late),
-- else restarts in window c with the use.
local function tk_charge(tag, r, use, c, late, keyms)
  local sk = tag .. ':s:' .. r.k
  if r.m == 6 then
    if not late and r.x ~= 1 and r.a > 0 and redis.call('HEXISTS', sk, 'u6') == 1 then
      redis.call('HINCRBY', sk, 'u6', s(-r.a))
      redis.call('PEXPIRE', sk, keyms)
    end
  elseif is_budget(r.m) then
    local u = use[r.m]
    local sw = num(redis.call('HGET', sk, 'w' .. r.m))
    local held = sw == r.w
    if sw < c and u > 0 then
      -- the counter's window has ended: it restarts without the reservation
      redis.call('HSET', sk, 'w' .. r.m, s(c), 'u' .. r.m, 0, 's' .. r.m, 0)
      held = false
    end
    local delta = u
    if held then
      if r.x == 1 then
        delta = math.max(u - r.a, 0)
      elseif not late then
        delta = u - r.a
      end
    end
    if delta ~= 0 then
      redis.call('HINCRBY', sk, 'u' .. r.m, s(delta))
      redis.call('PEXPIRE', sk, keyms)
    end
  end
end
