-- charge: add use that happened outside this backend's tickets to every
-- scope of a chain, once per charge id. Use counts in a scope's day or
-- month window that holds at, when that window is the current one; use in
-- a window that has ended limits nothing.
--
-- KEYS (the epoch's last, with RequireEpoch): the charge id's marker, then per scope its state, leases and
-- reservations (the sweep reads them; so are the other scopes of tickets
-- it releases, all in one hash slot).
-- ARGV: nowS nowN prefix base margin retention tokens gpu cost at (Unix
-- seconds, floor) nScopes nZones, the zones (see readzones), then per
-- scope its key and zone index, then optionally (ChargeRates) per scope
-- six more: requests units, K, A, tokens_rate units, K, A. Rate units are
-- added to the scope's bucket as of now, as an acquire past the limit
-- would charge them, never refused: the bucket's level rises by them
-- (from empty if it had drained) and takes its rate from K and A. Units
-- of 0 or an empty K leave a bucket alone.
-- Reply: {1, nowS, nowN} (charged), {2, nowS, nowN} (charged before:
-- nothing was changed), {-1, nowS, nowN} (clock skew: nothing was changed).
setnow(ARGV[1], ARGV[2])
local P = ARGV[3]
if epoch_lost(P) then return {-9, NOWS, NOWN} end
local base, margin, retention = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local tok, gpu, cost, at = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local n, nz = tonumber(ARGV[11]), tonumber(ARGV[12])
local zones = readzones(nz, 12)
if not zones then return {-1, NOWS, NOWN} end
if not call('SET', KEYS[1], abs(0), 'NX', 'PX', retention) then
  return {2, NOWS, NOWN}
end
local o0 = 12 + 9 * nz

-- Release expired tickets first, as acquire does: every operation
-- observes expiry as of its now.
local S = {}
local swept = false
for i = 1, n do
  S[i] = scope_load(P, ARGV[o0 + 2 * i - 1])
end
for i = 1, n do
  if sweep(P, S[i], base, margin) then swept = true end
end
if swept then
  for i = 1, n do
    S[i] = scope_load(P, ARGV[o0 + 2 * i - 1])
  end
end

-- Window bounds are whole seconds, so at (floored to a second) is in
-- [start, end) exactly when the instant is.
local o1 = o0 + 2 * n
local rated = #ARGV >= o1 + 6 * n
local function rate(g, r)
  local units = tonumber(ARGV[r])
  if units > 0 and ARGV[r + 1] ~= '' then
    guse(g, ARGV[r + 1], ARGV[r + 2])
    gadjust(g, units)
  end
end
for i = 1, n do
  local s = S[i]
  scope_roll(s, zones[tonumber(ARGV[o0 + 2 * i])])
  if s.dS <= at and at < s.dE then
    s.td = sadd(s.td, tok)
  end
  if s.mS <= at and at < s.mE then
    s.tm, s.g, s.c = sadd(s.tm, tok), sadd(s.g, gpu), sadd(s.c, cost)
  end
  if rated then
    local r = o1 + 6 * (i - 1)
    rate(s.req, r + 1)
    rate(s.tok, r + 4)
  end
  scope_save(s, base, margin)
end
return {1, NOWS, NOWN}
