-- acquire: check an ask against every scope of a chain and, if every check
-- passes, charge it to every scope and create the ticket; otherwise charge
-- nothing. The checks and their order are quota.Memory's.
--
-- KEYS (the epoch's last, with RequireEpoch): the ticket, then per scope its state, leases and reservations (all
-- in one hash slot; so are the other scopes of tickets it releases).
-- ARGV: nowS nowN prefix id ttl base margin requests tokens minTokens gpu
-- cost concurrency nScopes nZones, the zones (see readzones), then 14
-- arguments per scope:
--   key zone flags (0 no limits, 1 limits, 2 limits that refuse the model)
--   requests rate: mode (0 none, 1 valid, 2 refuse all) K A
--   tokens rate: the same
--   limits (-1 none): tokens/day tokens/month gpu cost concurrency
-- and last the ticket's meta, the settled retention (ms) and, optionally,
-- '1' for a readmission: a live ticket that this Redis lost (restarted
-- empty) taken back with its id, its slot and its reservations, checking
-- nothing and charging no rate; a ticket key that exists (readmitted
-- already, settled, voided) makes it change nothing and reply {3, nowS,
-- nowN}.
-- Reply: {1, nowS, nowN, grant, then per meter: scope index (0 none),
-- remaining, reset (ns after now), then per scope its budget counters as
-- this admission left them: tokens/day, tokens/month, gpu, cost, and the
-- ends of its day and month windows (Unix seconds)} or {0, nowS, nowN, scope index, check,
-- used, requested, reset, wait} or {-1, nowS, nowN} (clock skew) or {-8,
-- nowS, nowN} (the ticket id is taken: this acquire reached Redis after
-- it was voided, see void.lua; nothing was changed).
setnow(ARGV[1], ARGV[2])
local P, id = ARGV[3], ARGV[4]
if epoch_lost(P) then return {-9, NOWS, NOWN} end
local n, nz = tonumber(ARGV[14]), tonumber(ARGV[15])
local o0 = 15 + 9 * nz
local SA = 14
local force = ARGV[o0 + n * SA + 3] == '1'
if call('EXISTS', KEYS[1]) == 1 then
  if force then return {3, NOWS, NOWN} end
  return {-8, NOWS, NOWN}
end
local ttl, base, margin = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local areq, atok, amin = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local agpu, acost, aconc = tonumber(ARGV[11]), tonumber(ARGV[12]), ARGV[13] == '1'
local zones = readzones(nz, 15)
if not zones then return {-1, NOWS, NOWN} end

-- Load every scope, releasing expired tickets first: every operation
-- observes expiry as of its now. A release can touch any loaded scope, so
-- after one, load again.
local S = {}
local swept = false
for i = 1, n do
  S[i] = scope_load(P, ARGV[o0 + (i - 1) * SA + 1])
end
for i = 1, n do
  if sweep(P, S[i], base, margin) then swept = true end
end
if swept then
  for i = 1, n do
    S[i] = scope_load(P, ARGV[o0 + (i - 1) * SA + 1])
  end
end

-- Roll every scope's windows to now.
for i = 1, n do
  local o = o0 + (i - 1) * SA
  local s = S[i]
  scope_roll(s, zones[tonumber(ARGV[o + 2])])
  s.o = o
end

local function inflight(s)
  if not s.inflight then
    s.inflight = call('ZCARD', P .. 'l:' .. s.key)
  end
  return s.inflight
end

local function deny(i, check, used, req, reset, wait)
  return {0, NOWS, NOWN, i, check, used, req, reset, wait}
end

-- checkrate returns a denial reply, or nil when n fits or no rate applies.
local function checkrate(i, check, g, o, n)
  local mode = ARGV[o]
  if mode == '0' then return nil end
  if mode == '2' then return deny(i, check, 0, n, 0, 0) end
  guse(g, ARGV[o + 1], ARGV[o + 2])
  local _, _, wait, ok = gcheck(g, n)
  if ok then return nil end
  if wait < 0 then wait = 0 end
  return deny(i, check, gused(g), n, gempty(g), wait)
end

local function checkbudget(i, check, lim, used, n, e)
  if lim < 0 or n <= lim - used then return nil end
  local reset = secrel(e)
  local wait = 0
  if n <= lim then wait = reset end
  return deny(i, check, used, n, reset, wait)
end

-- Check everything before charging anything. With a minimum the checks ask
-- for it, and fit tracks the most tokens that fit everywhere.
local need, clamp = atok, amin > 0 and amin < atok
if clamp then need = amin end
local fit = atok
for i = 1, force and 0 or n do
  local s, o = S[i], S[i].o
  local flags = ARGV[o + 3]
  if flags ~= '0' then
    if flags == '2' then return deny(i, 1, 0, 0, 0, 0) end
    local d
    if areq > 0 then
      d = checkrate(i, 2, s.req, o + 4, areq)
      if d then return d end
    end
    if need > 0 then
      d = checkrate(i, 3, s.tok, o + 7, need)
      if d then return d end
      if clamp and ARGV[o + 7] ~= '0' then
        local a = gavail(s.tok)
        if a < fit then fit = a end
      end
      local ld, lm = tonumber(ARGV[o + 10]), tonumber(ARGV[o + 11])
      d = checkbudget(i, 4, ld, s.td, need, s.dE) or checkbudget(i, 5, lm, s.tm, need, s.mE)
      if d then return d end
      if clamp then
        if ld >= 0 and ld - s.td < fit then fit = ld - s.td end
        if lm >= 0 and lm - s.tm < fit then fit = lm - s.tm end
      end
    end
    if agpu > 0 then
      d = checkbudget(i, 6, tonumber(ARGV[o + 12]), s.g, agpu, s.mE)
      if d then return d end
    end
    if acost > 0 then
      d = checkbudget(i, 7, tonumber(ARGV[o + 13]), s.c, acost, s.mE)
      if d then return d end
    end
    if aconc then
      local lim = tonumber(ARGV[o + 14])
      if lim >= 0 and inflight(s) >= lim then
        return deny(i, 8, s.inflight, 1, 0, 0)
      end
    end
  end
end
local grant = atok
if clamp and fit < grant then grant = fit end -- >= amin: every check passed with it

-- Charge, and gather the tightest remaining amount per meter (outermost
-- scope on ties): remI, remL and remR hold each meter's scope index,
-- remaining amount and reset (false: none yet); a reset is computed only
-- for an offer that is kept.
local score = usec(ttl)
local reserves = grant > 0 or agpu > 0 or acost > 0
local remI = {false, false, false, false, false, false, false}
local remL = {false, false, false, false, false, false, false}
local remR = {false, false, false, false, false, false, false}
local function offerrate(m, i, g, o)
  local mode = ARGV[o]
  if mode == '0' then return end
  local left = 0
  if mode ~= '2' then
    guse(g, ARGV[o + 1], ARGV[o + 2])
    left = gavail(g)
  end
  local r = remL[m]
  if r and left >= r then return end
  remI[m], remL[m] = i, max0(left)
  if mode == '2' then remR[m] = 0 else remR[m] = gempty(g) end
end
local function offerbudget(m, i, l, used, e)
  if l < 0 then return end
  local left = l - used
  local r = remL[m]
  if r and left >= r then return end
  remI[m], remL[m], remR[m] = i, max0(left), secrel(e)
end
-- The ticket's array (see ticket_save), filled in as the scopes are
-- charged; its latest month end, a[6], is set at the end.
local t = {e = abs(ttl), x = grant, g = agpu, c = acost, mx = 0}
local ta = {t.e, grant, agpu, acost, aconc and 1 or 0, 0, n}
local lease = aconc and 'l:' or 'r:'
for i = 1, n do
  local s, o = S[i], S[i].o
  local limited = ARGV[o + 3] ~= '0'
  local rated = false
  if limited and not force then
    if areq > 0 and ARGV[o + 4] ~= '0' then gcharge(s.req, areq) end
    if grant > 0 and ARGV[o + 7] ~= '0' then
      gcharge(s.tok, grant)
      rated = true
    end
  end
  s.td, s.tm = sadd(s.td, grant), sadd(s.tm, grant)
  s.g, s.c = sadd(s.g, agpu), sadd(s.c, acost)
  if aconc or reserves then
    local zk = P .. lease .. s.key
    call('ZADD', zk, score, id)
    call('PEXPIRE', zk, base)
    -- A count not read while checking is read below only if it is not
    -- this ticket's lease set.
    if aconc and s.inflight then s.inflight = s.inflight + 1 end
    if s.x == nil or score < s.x then s.x = score end
  end
  ta[7 + i], ta[7 + n + i], ta[7 + 2 * n + i], ta[7 + 3 * n + i] = s.key, s.dS, s.mS, rated and 1 or 0
  if s.mE > t.mx then t.mx = s.mE end
  if limited then
    offerrate(1, i, s.req, o + 4)
    offerrate(2, i, s.tok, o + 7)
    offerbudget(3, i, tonumber(ARGV[o + 10]), s.td, s.dE)
    offerbudget(4, i, tonumber(ARGV[o + 11]), s.tm, s.mE)
    offerbudget(5, i, tonumber(ARGV[o + 12]), s.g, s.mE)
    offerbudget(6, i, tonumber(ARGV[o + 13]), s.c, s.mE)
    local l = tonumber(ARGV[o + 14])
    if l >= 0 then
      local left = l - inflight(s)
      local r = remL[7]
      if not (r and left >= r) then remI[7], remL[7], remR[7] = i, max0(left), 0 end
    end
  end
  scope_save(s, base, margin)
end
ta[6] = t.mx
t.ret = tonumber(ARGV[o0 + n * SA + 2])
ta[8 + 4 * n], ta[9 + 4 * n] = ARGV[o0 + n * SA + 1], t.ret
call('SET', KEYS[1], mpack(unpack(ta, 1, 9 + 4 * n)), 'PX', ticket_ttl(t, margin))

local out = {1, NOWS, NOWN, grant}
for m = 1, 7 do
  local b = 4 + 3 * (m - 1)
  if remI[m] then
    out[b + 1], out[b + 2], out[b + 3] = remI[m], remL[m], remR[m]
  else
    out[b + 1], out[b + 2], out[b + 3] = 0, 0, 0
  end
end
for i = 1, n do
  local s, b = S[i], 25 + 6 * (i - 1)
  out[b + 1], out[b + 2], out[b + 3], out[b + 4], out[b + 5], out[b + 6] = s.td, s.tm, s.g, s.c, s.dE, s.mE
end
return out
