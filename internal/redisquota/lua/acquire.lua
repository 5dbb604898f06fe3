-- acquire: check an ask against every scope of a chain and, if every check
-- passes, charge it to every scope and create the ticket; otherwise charge
-- nothing. The checks and their order are quota.Memory's.
--
-- KEYS: the ticket, then per scope its state, leases and reservations (all
-- in one hash slot; so are the other scopes of tickets it releases).
-- ARGV: nowS nowN prefix id ttl base margin requests tokens minTokens gpu
-- cost concurrency nScopes nZones, the zones (see readzones), then 14
-- arguments per scope:
--   key zone flags (0 no limits, 1 limits, 2 limits that refuse the model)
--   requests rate: mode (0 none, 1 valid, 2 refuse all) K A
--   tokens rate: the same
--   limits (-1 none): tokens/day tokens/month gpu cost concurrency
-- Reply: {1, nowS, nowN, grant, then per meter: scope index (0 none),
-- remaining, reset (ns after now)} or {0, nowS, nowN, scope index, check,
-- used, requested, reset, wait} or {-1, nowS, nowN} (clock skew).
setnow(ARGV[1], ARGV[2])
local P, id = ARGV[3], ARGV[4]
local ttl, base, margin = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local areq, atok, amin = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local agpu, acost, aconc = tonumber(ARGV[11]), tonumber(ARGV[12]), ARGV[13] == '1'
local n, nz = tonumber(ARGV[14]), tonumber(ARGV[15])
local zones = readzones(nz, 15)
if not zones then return {-1, NOWS, NOWN} end
local o0 = 15 + 9 * nz
local SA = 14

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
  if s.inflight == nil then
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
for i = 1, n do
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
-- scope on ties).
local score = usec(ttl)
local reserves = grant > 0 or agpu > 0 or acost > 0
local rem = {}
local function offer(m, i, left, reset)
  local r = rem[m]
  if r and left >= r[2] then return end
  rem[m] = {i, max0(left), reset}
end
local function offerrate(m, i, g, o)
  local mode = ARGV[o]
  if mode == '0' then return end
  if mode == '2' then
    offer(m, i, 0, 0)
    return
  end
  guse(g, ARGV[o + 1], ARGV[o + 2])
  offer(m, i, gavail(g), gempty(g))
end
local t = {e = abs(ttl), x = grant, g = agpu, c = acost, s = aconc and 1 or 0, mx = 0, n = n, ch = {}}
for i = 1, n do
  local s, o = S[i], S[i].o
  local limited = ARGV[o + 3] ~= '0'
  local rated = false
  if limited then
    if areq > 0 and ARGV[o + 4] ~= '0' then gcharge(s.req, areq) end
    if grant > 0 and ARGV[o + 7] ~= '0' then
      gcharge(s.tok, grant)
      rated = true
    end
  end
  s.td, s.tm = sadd(s.td, grant), sadd(s.tm, grant)
  s.g, s.c = sadd(s.g, agpu), sadd(s.c, acost)
  if aconc or reserves then
    local zk = P .. (aconc and 'l:' or 'r:') .. s.key
    call('ZADD', zk, score, id)
    call('PEXPIRE', zk, base)
    if aconc then s.inflight = inflight(s) + 1 end
    if s.x == nil or score < s.x then s.x = score end
  end
  t.ch[i] = {key = s.key, d = s.dS, m = s.mS, rated = rated}
  if s.mE > t.mx then t.mx = s.mE end
  if limited then
    offerrate(1, i, s.req, o + 4)
    offerrate(2, i, s.tok, o + 7)
    local l = tonumber(ARGV[o + 10])
    if l >= 0 then offer(3, i, l - s.td, secrel(s.dE)) end
    l = tonumber(ARGV[o + 11])
    if l >= 0 then offer(4, i, l - s.tm, secrel(s.mE)) end
    l = tonumber(ARGV[o + 12])
    if l >= 0 then offer(5, i, l - s.g, secrel(s.mE)) end
    l = tonumber(ARGV[o + 13])
    if l >= 0 then offer(6, i, l - s.c, secrel(s.mE)) end
    l = tonumber(ARGV[o + 14])
    if l >= 0 then offer(7, i, l - inflight(s), 0) end
  end
  scope_save(s, base, margin)
end
ticket_save(P, id, t, ticket_ttl(t, margin))

local out = {1, NOWS, NOWN, grant}
for m = 1, 7 do
  local r = rem[m]
  local b = 4 + 3 * (m - 1)
  if r then
    out[b + 1], out[b + 2], out[b + 3] = r[1], r[2], r[3]
  else
    out[b + 1], out[b + 2], out[b + 3] = 0, 0, 0
  end
end
return out
