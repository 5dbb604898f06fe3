-- prelude: shared by every script (the Go side prepends it to each body).
--
-- Lua numbers are doubles, exact for integers up to 2^53. Every value kept
-- here stays inside that: times are handled relative to now in integer ns
-- (exact within ±2^53 ns, about 104 days, of now) and stored as Unix
-- seconds and ns, or as decimal strings of Unix ns; products that may
-- exceed 2^53 go through muldiv, exact for 106-bit intermediates.
local call = redis.call
local floor = math.floor
local tonumber = tonumber
local mpack, munpack = cmsgpack.pack, cmsgpack.unpack
local TWO52 = 4503599627370496  -- 2^52: the largest span, limit or amount
local SAT = 9007199254740992    -- 2^53: counters and quotients saturate here
local LB = 16777216             -- limb base 2^24
local LB2 = 281474976710656     -- 2^48

local NOWS, NOWN, NOWUS, NOWMS -- now: Unix seconds, ns within the second, whole µs, whole ms

-- epoch_lost reports whether the caller passed the epoch key as its last
-- key (a backend with RequireEpoch) and that key is missing: this Redis
-- lost its state (restarted empty, a fresh replica, FLUSHALL), so every
-- counter would start from nothing. The scripts that decide then change
-- nothing and reply {-9, nowS, nowN}. No other key is P .. 'epoch'.
local function epoch_lost(P)
  local k = KEYS[#KEYS]
  return k == P .. 'epoch' and call('EXISTS', k) == 0
end

-- setnow takes now from Redis (TIME) unless the caller passed one (tests).
-- TIME in a script that writes is safe: Redis 5+ replicates a script's
-- effects, not the script.
local function setnow(s, n)
  if s == '' then
    local t = call('TIME')
    NOWS, NOWN = tonumber(t[1]), tonumber(t[2]) * 1000
  else
    NOWS, NOWN = tonumber(s), tonumber(n)
  end
  NOWUS = NOWS * 1000000 + floor(NOWN / 1000)
  NOWMS = NOWS * 1000 + floor(NOWN / 1000000)
end

-- idiv returns floor(a/b) and a mod b, exactly, for integers |a| < 2^53
-- and 0 < b.
local function idiv(a, b)
  local q = floor(a / b)
  local r = a - q * b
  if r < 0 then
    q, r = q - 1, r + b
  elseif r >= b then
    q, r = q + 1, r - b
  end
  return q, r
end

-- rel returns the ns from now to s, a decimal string of Unix ns.
local function rel(s)
  local n = #s
  if n <= 9 then
    return tonumber(s) - NOWN - NOWS * 1e9
  end
  return (tonumber(string.sub(s, 1, n - 9)) - NOWS) * 1e9 + (tonumber(string.sub(s, n - 8)) - NOWN)
end

-- abs returns now+r as a decimal string of Unix ns.
local function abs(r)
  local q, ns = idiv(NOWN + r, 1e9)
  return string.format('%d%09d', NOWS + q, ns)
end

-- usec returns now+r in whole µs (floor): a sorted-set score.
local function usec(r)
  local q = idiv(NOWN + r, 1000)
  return NOWS * 1000000 + q
end

-- secrel returns the ns from now to the Unix second s.
local function secrel(s)
  return (s - NOWS) * 1e9 - NOWN
end

local function limbs(x)
  local x0 = x % LB
  return x0, ((x - x0) / LB) % LB, floor(x / LB2)
end

-- muldiv returns floor((a*b + r)/c) and the remainder, exactly, for integers
-- 0 <= a, b <= 2^53, 0 <= r < 2^52 and 0 < c <= 2^52. A quotient of 2^53 or
-- more saturates to SAT with remainder 0.
local function muldiv(a, b, r, c)
  local p = a * b
  if p < TWO52 then
    -- The product is exact (a double below 2^52 is an exact product), and
    -- so is the sum; a quotient rounded up is corrected by the remainder.
    local q = floor((p + r) / c)
    local m = (p + r) - q * c
    if m < 0 then
      q, m = q - 1, m + c
    elseif m >= c then
      q, m = q + 1, m - c
    end
    return q, m
  end
  -- The estimate is within 3 of the quotient (3 roundings of 2^-53 each);
  -- start 4 below, compute the remainder exactly in 24-bit limbs (every
  -- partial sum stays below 2^51), then step up.
  local qf = (p + r) / c
  if qf >= SAT - 16 then
    return SAT, 0
  end
  local q = floor(qf) - 4
  if q < 0 then q = 0 end
  local a0, a1, a2 = limbs(a)
  local b0, b1, b2 = limbs(b)
  local r0, r1, r2 = limbs(r)
  local q0, q1, q2 = limbs(q)
  local c0, c1, c2 = limbs(c)
  local t, k, d0, d1, d2, d3
  t = a0 * b0 + r0 - q0 * c0
  d0 = t % LB; k = (t - d0) / LB
  t = a0 * b1 + a1 * b0 + r1 - q0 * c1 - q1 * c0 + k
  d1 = t % LB; k = (t - d1) / LB
  t = a0 * b2 + a1 * b1 + a2 * b0 + r2 - q0 * c2 - q1 * c1 - q2 * c0 + k
  d2 = t % LB; k = (t - d2) / LB
  t = a1 * b2 + a2 * b1 - q1 * c2 - q2 * c1 + k
  d3 = t % LB; k = (t - d3) / LB
  t = a2 * b2 - q2 * c2 + k
  if t ~= 0 or d3 ~= 0 then
    error('muldiv: estimate out of range')
  end
  -- remainder d = dh*LB + dl (< 2^56), divisor c = ch*LB + cl
  local dh, dl = d2 * LB + d1, d0
  local ch, cl = floor(c / LB), c0
  while dh > ch or (dh == ch and dl >= cl) do
    dh, dl = dh - ch, dl - cl
    if dl < 0 then
      dh, dl = dh - 1, dl + LB
    end
    q = q + 1
  end
  return q, dh * LB + dl
end

local function sadd(a, b)
  local s = a + b
  if s > SAT then return SAT end
  return s
end

local function max0(a)
  if a < 0 then return 0 end
  return a
end

-- GCRA, as quota's gcra.go: the theoretical arrival time is g.t ns after
-- now plus g.f/g.l ns (g.t nil: never set). g.l and g.p are the limit and
-- period (ns) divided by their gcd, g.b the burst, (g.cq, g.cr) the
-- capacity b*p/l. g.K names the raw limit and period, and g.A is
-- "b l p cq cr" as the Go side wrote it (compared, parsed only on change).

local function rate_params(g, A)
  local b, l, p, cq, cr = string.match(A, '^(%d+) (%d+) (%d+) (%d+) (%d+)$')
  g.b, g.l, g.p, g.cq, g.cr = tonumber(b), tonumber(l), tonumber(p), tonumber(cq), tonumber(cr)
end

local function glevel(g)
  if g.l == nil or g.t == nil or g.t < 0 then return 0, 0 end
  if g.t > TWO52 then return TWO52, g.f end
  return g.t, g.f
end

local function gadd(g, aq, ar, bq, br)
  local q, r = aq + bq, ar + br
  if r >= g.l then
    q, r = q + 1, r - g.l
  end
  if q > TWO52 then q = TWO52 end
  return q, r
end

-- gcheck returns the level after admitting n and whether that fits; if not,
-- wait is the exact time until it would, or -1 if it never would.
local function gcheck(g, n)
  if n > g.b then return 0, 0, -1, false end
  local iq, ir = muldiv(n, g.p, 0, g.l)
  local lq, lr = glevel(g)
  local q, r = gadd(g, lq, lr, iq, ir)
  if q < g.cq or (q == g.cq and r <= g.cr) then
    return q, r, 0, true
  end
  local wait = q - g.cq
  if r > g.cr then wait = wait + 1 end
  return q, r, wait, false
end

local function gset(g, q, r)
  g.t, g.f = q, r
end

local function gunits(g, q, r, up)
  local u, m = muldiv(q, g.l, r, g.p)
  if up and m ~= 0 then u = u + 1 end
  return u
end

local function gused(g)
  local lq, lr = glevel(g)
  return gunits(g, lq, lr, true)
end

local function gavail(g)
  local lq, lr = glevel(g)
  if lq > g.cq or (lq == g.cq and lr >= g.cr) then return 0 end
  local aq, ar = g.cq - lq, g.cr - lr
  if g.cr < lr then
    aq, ar = aq - 1, g.cr + g.l - lr
  end
  local u = gunits(g, aq, ar, false)
  if u > g.b then return g.b end
  return u
end

-- gempty returns when the bucket has drained, in ns after now.
local function gempty(g)
  local lq, lr = glevel(g)
  if lr ~= 0 then lq = lq + 1 end
  return lq
end

-- gnext returns when one more unit would be admitted, in ns after now.
local function gnext(g)
  if g.l == nil then return 0 end
  local _, _, wait, ok = gcheck(g, 1)
  if ok or wait < 0 then return 0 end
  return wait
end

local function gcharge(g, n)
  local q, r = gcheck(g, n)
  gset(g, q, r)
end

-- gadjust changes the level by delta units without a check.
local function gadjust(g, delta)
  if g.l == nil or delta == 0 then return end
  local lq, lr = glevel(g)
  if delta > 0 then
    local iq, ir = muldiv(delta, g.p, 0, g.l)
    gset(g, gadd(g, lq, lr, iq, ir))
    return
  end
  if lq == 0 and lr == 0 then return end
  local iq, ir = muldiv(-delta, g.p, 0, g.l)
  if iq > lq or (iq == lq and ir >= lr) then
    gset(g, 0, 0)
    return
  end
  local q, r = lq - iq, lr - ir
  if lr < ir then
    q, r = q - 1, lr + g.l - ir
  end
  gset(g, q, r)
end

-- guse adopts a rate's parameters. When the limit or period changes, the
-- units in the bucket (rounded up) carry over.
local function guse(g, K, A)
  if g.K == K and g.A == A then return end
  if g.l ~= nil and g.K ~= K then
    local u = gused(g)
    rate_params(g, A)
    gset(g, muldiv(u, g.p, 0, g.l))
  else
    rate_params(g, A)
  end
  g.K, g.A = K, A
end

-- Scopes. A scope's state is one msgpack array under s:<scope>: its zone,
-- day and month windows (Unix seconds), budget counters, x, and two rates
-- (K, A, b, l, p, cq, cr, then the arrival time as Unix seconds and ns
-- and its fraction). x is a lower bound of the expiries (µs) of the scope's
-- live tickets, which are in two sorted sets scored by expiry: l:<scope>
-- those holding a concurrency slot (the leases), r:<scope> the others that
-- reserved something. Before x, nothing has expired: most calls need not
-- look.

-- scope_load returns a scope's state. The msgpack array is unpacked into
-- locals (not a table) and every field a script may add later (o, inflight)
-- has its slot from the start: tables that grow are rehashed.
local function rate_new(K, A, b, l, p, cq, cr, ts, tn, f)
  local t
  if ts then t = (ts - NOWS) * 1e9 + (tn - NOWN) end
  return {K = K, A = A, b = b, l = l, p = p, cq = cq, cr = cr, t = t, f = f}
end

local function scope_load(P, key)
  local h = P .. 's:' .. key
  local v = call('GET', h)
  if not v then
    return {key = key, h = h, td = 0, tm = 0, g = 0, c = 0, req = {}, tok = {}, o = false, inflight = false,
      z = nil, dS = nil, dE = nil, mS = nil, mE = nil, x = nil}
  end
  local z, dS, dE, mS, mE, td, tm, g, c, x,
    K1, A1, b1, l1, p1, cq1, cr1, ts1, tn1, f1,
    K2, A2, b2, l2, p2, cq2, cr2, ts2, tn2, f2 = munpack(v)
  return {
    key = key, h = h,
    z = z, dS = dS, dE = dE, mS = mS, mE = mE,
    td = td, tm = tm, g = g, c = c, x = x,
    req = rate_new(K1, A1, b1, l1, p1, cq1, cr1, ts1, tn1, f1),
    tok = rate_new(K2, A2, b2, l2, p2, cq2, cr2, ts2, tn2, f2),
    o = false, inflight = false,
  }
end

-- scope_save writes the state back, to live until its windows end, its
-- buckets drain and any ticket that charged it expires (base, the longest
-- ticket life, covers those) plus the margin, and at least least ms. The
-- array is packed from locals: a rate's K..cr, then (only while its
-- arrival time is set) that time as Unix seconds and ns and its fraction.
local function scope_save(s, base, margin, least)
  local ms = base
  if least and least > ms then ms = least end
  local e = ((s.dE or 0) - NOWS) * 1000 + margin
  if e > ms then ms = e end
  e = ((s.mE or 0) - NOWS) * 1000 + margin
  if e > ms then ms = e end
  local r, k = s.req, s.tok
  local rt, rs, rn, rf = r.t
  if rt ~= nil then
    local q
    q, rn = idiv(NOWN + rt, 1e9)
    rs, rf = NOWS + q, r.f
    e = floor(rt / 1e6) + 1 + margin
    if e > ms then ms = e end
  end
  local kt, ks, kn, kf = k.t
  if kt ~= nil then
    local q
    q, kn = idiv(NOWN + kt, 1e9)
    ks, kf = NOWS + q, k.f
    e = floor(kt / 1e6) + 1 + margin
    if e > ms then ms = e end
  end
  call('SET', s.h, mpack(s.z, s.dS, s.dE, s.mS, s.mE, s.td, s.tm, s.g, s.c, s.x,
    r.K, r.A, r.b, r.l, r.p, r.cq, r.cr, rs, rn, rf,
    k.K, k.A, k.b, k.l, k.p, k.cq, k.cr, ks, kn, kf), 'PX', ms)
end

-- Tickets: one key holding a msgpack array: expiry (Unix ns, string),
-- tokens, GPU ms and cost reserved, 1 if it holds a slot, the latest end
-- of the month windows it charged (s), the number of scopes n, then their
-- n keys, n day window starts, n month window starts, n flags (1 when
-- tokens_rate was charged), then the caller's meta and the settled
-- retention (ms). Settled, the key holds "S ", the settlement, a newline
-- and the meta, for the retention period. Expired unsettled, it holds "E "
-- and a msgpack array (see ticket_expire), for the retention period, so
-- that a late settle can charge the use. Voided (an acquire whose reply
-- was lost, released by void), it holds "V " for a while, so that the
-- acquire, should it reach Redis late, is refused.

local function ticket_load(P, id)
  local v = call('GET', P .. 't:' .. id)
  if not v then return nil, v end
  local k = string.sub(v, 1, 2)
  if k == 'S ' or k == 'E ' or k == 'V ' then return nil, v end
  local a = {munpack(v)}
  local n = a[7]
  local t = {e = a[1], x = a[2], g = a[3], c = a[4], s = a[5], mx = a[6], n = n, ch = {},
    meta = a[8 + 4 * n] or '', ret = a[9 + 4 * n]}
  for i = 1, n do
    t.ch[i] = {key = a[7 + i], d = a[7 + n + i], m = a[7 + 2 * n + i], rated = a[7 + 3 * n + i] == 1}
  end
  return t
end

local function ticket_save(P, id, t, ms)
  local a = {t.e, t.x, t.g, t.c, t.s, t.mx, t.n}
  local n = t.n
  for i = 1, n do
    local ch = t.ch[i]
    a[7 + i], a[7 + n + i], a[7 + 2 * n + i] = ch.key, ch.d, ch.m
    a[7 + 3 * n + i] = ch.rated and 1 or 0
  end
  a[8 + 4 * n], a[9 + 4 * n] = t.meta or '', t.ret or 0
  call('SET', P .. 't:' .. id, mpack(unpack(a, 1, 9 + 4 * n)), 'PX', ms)
end

-- ticket_ttl returns how long (ms) a ticket's key must live: until it
-- expires and, while it holds a reservation, until the month windows it
-- charged have ended (a lazy sweep may still refund it), plus the margin
-- or, if longer, the settled retention (a late settle may still come).
local function ticket_ttl(t, margin)
  local ms = floor(rel(t.e) / 1e6) + 1
  if (t.x > 0 or t.g > 0 or t.c > 0) and (t.mx - NOWS) * 1000 > ms then ms = (t.mx - NOWS) * 1000 end
  if t.ret and t.ret > margin then return ms + t.ret end
  return ms + margin
end

-- ticket_expire replaces the key of a ticket released at expiry with what
-- a late settle needs, for the retention period: "E " and a msgpack array
-- of expiry, the reservations, meta, the number of scopes n, their n keys
-- and n zone names ('' unknown). zn holds the zone names release found.
local function ticket_expire(P, id, t, zn)
  local k = P .. 't:' .. id
  if not t.ret or t.ret <= 0 then
    call('DEL', k) -- stored before tickets carried their retention
    return
  end
  local a = {t.e, t.x, t.g, t.c, t.meta or '', t.n}
  for i = 1, t.n do
    a[6 + i], a[6 + t.n + i] = t.ch[i].key, zn[i] or ''
  end
  call('SET', k, 'E ' .. mpack(unpack(a, 1, 6 + 2 * t.n)), 'PX', t.ret)
end

-- expired_load decodes an "E " value.
local function expired_load(v)
  local a = {munpack(string.sub(v, 3))}
  local n = a[6]
  local x = {e = a[1], x = a[2], g = a[3], c = a[4], meta = a[5], n = n, keys = {}, zones = {}}
  for i = 1, n do
    x.keys[i], x.zones[i] = a[6 + i], a[6 + n + i]
  end
  return x
end

-- release replaces a ticket's reservations with actual use u (nil for an
-- expiry) on every scope it charged and frees its slot; the caller deletes
-- or replaces the ticket's key. A reservation made in a window that has
-- since ended died with it; actual use goes to the current window, taken
-- from zones (by zone name) when the stored one has ended. A stored window
-- that has ended and receives no use is left as is: every reader rolls it
-- before looking. It returns the zone names of the scopes ('' unknown).
local function release(P, id, t, u, zones, states, base, margin)
  local tres, gres, cres = t.x, t.g, t.c
  local tok, gpu, cost = 0, 0, 0
  if u then tok, gpu, cost = u[1], u[2], u[3] end
  local lease = (t.s == 1) and 'l:' or 'r:'
  local zn = {}
  for i, ch in ipairs(t.ch) do
    local s = (states and states[i]) or scope_load(P, ch.key)
    zn[i] = s.z or ''
    if s.dE and NOWS < s.dE then
      if s.dS == ch.d then
        s.td = max0(sadd(s.td, tok - tres))
      else
        s.td = sadd(s.td, tok)
      end
    elseif tok > 0 and s.z and zones and zones[s.z] then
      local w = zones[s.z]
      s.dS, s.dE, s.td = w.ds, w.de, tok
    end
    if s.mE and NOWS < s.mE then
      if s.mS == ch.m then
        s.tm = max0(sadd(s.tm, tok - tres))
        s.g = max0(sadd(s.g, gpu - gres))
        s.c = max0(sadd(s.c, cost - cres))
      else
        s.tm, s.g, s.c = sadd(s.tm, tok), sadd(s.g, gpu), sadd(s.c, cost)
      end
    elseif (tok > 0 or gpu > 0 or cost > 0) and s.z and zones and zones[s.z] then
      local w = zones[s.z]
      s.mS, s.mE, s.tm, s.g, s.c = w.ms, w.me, tok, gpu, cost
    end
    if u and ch.rated then
      gadjust(s.tok, tok - tres)
    end
    if t.s == 1 or tres > 0 or gres > 0 or cres > 0 then
      call('ZREM', P .. lease .. ch.key, id)
    end
    if s.z then
      scope_save(s, base, margin)
    end
  end
  return zn
end

-- sweep releases a scope's expired tickets, exactly as of now, if its lower
-- bound says some may have expired, and reports whether it looked.
local function sweep(P, s, base, margin)
  if s.x == nil or NOWUS < s.x then return false end
  local low
  for _, kind in ipairs({'l:', 'r:'}) do
    local zk = P .. kind .. s.key
    local ids = call('ZRANGEBYSCORE', zk, '-inf', NOWUS, 'WITHSCORES')
    for j = 1, #ids, 2 do
      local id, score = ids[j], tonumber(ids[j + 1])
      local t = ticket_load(P, id)
      if t == nil then
        call('ZREM', zk, id) -- settled, or its key outlived every refund
      elseif score < NOWUS or rel(t.e) <= 0 then
        ticket_expire(P, id, t, release(P, id, t, nil, nil, nil, base, margin))
      end
    end
    local first = call('ZRANGE', zk, 0, 0, 'WITHSCORES')
    if first[2] then
      local sc = tonumber(first[2])
      if low == nil or sc < low then low = sc end
    end
  end
  -- The releases may have changed this scope too: load it again.
  local fresh = scope_load(P, s.key)
  if fresh.z then
    fresh.x = low
    scope_save(fresh, base, margin)
  end
  return true
end

-- scope_roll binds a scope to the zone of w (its windows holding now) and
-- starts new windows whose predecessors have ended, as quota.Memory's bind
-- and roll do.
local function scope_roll(s, w)
  if s.z == w.name then
    if NOWS >= s.dE then s.dS, s.dE, s.td = w.ds, w.de, 0 end
    if NOWS >= s.mE then s.mS, s.mE, s.tm, s.g, s.c = w.ms, w.me, 0, 0, 0 end
    return
  end
  if s.z then
    -- The zone changed: finish the windows in the old zone, then carry
    -- the counts into the new zone's (a zone change frees no budget).
    if NOWS >= (s.dE or 0) then s.td = 0 end
    if NOWS >= (s.mE or 0) then s.tm, s.g, s.c = 0, 0, 0 end
  else
    -- First sight: counters exist only if restored, and count only if
    -- restored for the current window.
    if s.dS ~= w.ds then s.td = 0 end
    if s.mS ~= w.ms then s.tm, s.g, s.c = 0, 0, 0 end
  end
  s.z, s.dS, s.dE, s.mS, s.mE = w.name, w.ds, w.de, w.ms, w.me
end

-- pickwin returns the window among b[i]..b[i+3] (three consecutive windows'
-- bounds, Unix seconds) that holds now, or nil.
local function pickwin(b, i)
  local w0, w1, w2, w3 = tonumber(b[i]), tonumber(b[i + 1]), tonumber(b[i + 2]), tonumber(b[i + 3])
  if NOWS < w0 or NOWS >= w3 then return nil end
  if NOWS < w1 then return w0, w1 end
  if NOWS < w2 then return w1, w2 end
  return w2, w3
end

-- readzones reads nz zones from ARGV at offset o (9 arguments each: name,
-- 4 day bounds, 4 month bounds). It returns them by index and by name, or
-- nil if some zone's windows do not hold now.
local function readzones(nz, o)
  local byidx, byname = {}, {}
  for z = 1, nz do
    local ds, de = pickwin(ARGV, o + 2)
    local ms, me = pickwin(ARGV, o + 6)
    if not ds or not ms then return nil end
    local w = {name = ARGV[o + 1], ds = ds, de = de, ms = ms, me = me}
    byidx[z], byname[w.name] = w, w
    o = o + 9
  end
  return byidx, byname
end
