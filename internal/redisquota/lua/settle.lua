-- settle: replace a ticket's reservations with actual use, once; or, for a
-- ticket that expired (its reservations refunded) within the retention,
-- charge the actual use to the current windows as it is (a late settle).
--
-- KEYS (the epoch's last, with RequireEpoch): the ticket (replaced by its settlement).
-- ARGV: nowS nowN prefix input output gpu cost retention base margin
-- nZones, the zones (see readzones).
-- Reply: {1, nowS, nowN, settlement} (settled now), {2, nowS, nowN,
-- settlement} (settled before), {0, nowS, nowN} (unknown, voided, or expired
-- longer ago), {-1, nowS, nowN, zone...} (a charged scope's window has
-- ended and the current one of these zones is needed: nothing was changed
-- but, perhaps, the release of the ticket at its expiry). A settlement is
-- "in out gpu cost rtok rgpu rcost overrun at late", a newline and the
-- ticket's meta.
setnow(ARGV[1], ARGV[2])
local P = ARGV[3]
if epoch_lost(P) then return {-9, NOWS, NOWN} end
local tin, tout, gpu, cost = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local retention, base, margin = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local _, zones = readzones(tonumber(ARGV[11]), 11)
if not zones then return {-1, NOWS, NOWN} end

local id = string.sub(KEYS[1], #P + 3)
local tok = sadd(tin, tout)

-- late charges the use of an expired ticket x (see expired_load) to the
-- current windows of the scopes it charged, and replaces it with its
-- settlement.
local function late(x)
  if tok > 0 or gpu > 0 or cost > 0 then
    local states, missing = {}, {}
    for i = 1, x.n do
      local s = scope_load(P, x.keys[i])
      states[i] = s
      local zn = s.z or x.zones[i]
      local over = not s.z or not (s.dE and NOWS < s.dE) or not (s.mE and NOWS < s.mE)
      if zn ~= '' and over and not zones[zn] then missing[zn] = true end
    end
    local need = {-1, NOWS, NOWN}
    for z in pairs(missing) do need[#need + 1] = z end
    if #need > 3 then return need end
    for i = 1, x.n do
      local s = states[i]
      local zn = s.z or x.zones[i]
      if zn ~= '' then
        if zones[zn] then scope_roll(s, zones[zn]) end
        s.td, s.tm = sadd(s.td, tok), sadd(s.tm, tok)
        s.g, s.c = sadd(s.g, gpu), sadd(s.c, cost)
        scope_save(s, base, margin)
      end
    end
  end
  local over = (tok > x.x or gpu > x.g or cost > x.c) and 1 or 0
  local s = string.format('%d %d %d %d %d %d %d %d %s 1', tin, tout, gpu, cost, x.x, x.g, x.c, over, abs(0)) .. '\n' .. x.meta
  call('SET', KEYS[1], 'S ' .. s, 'PX', retention)
  return {1, NOWS, NOWN, s}
end

local t, raw = ticket_load(P, id)
if t == nil then
  if not raw then return {0, NOWS, NOWN} end
  local k = string.sub(raw, 1, 2)
  if k == 'S ' then return {2, NOWS, NOWN, string.sub(raw, 3)} end
  if k == 'V ' then return {0, NOWS, NOWN} end -- voided: never granted to anyone
  return late(expired_load(raw))
end
if rel(t.e) <= 0 then
  ticket_expire(P, id, t, release(P, id, t, nil, nil, nil, base, margin))
  local v = call('GET', KEYS[1])
  if not v then return {0, NOWS, NOWN} end
  return late(expired_load(v))
end

-- Every charged scope whose window has ended needs its zone's current one.
local states, missing = {}, {}
for i, ch in ipairs(t.ch) do
  local s = scope_load(P, ch.key)
  states[i] = s
  local dayOver = not (s.dE and NOWS < s.dE)
  local monthOver = not (s.mE and NOWS < s.mE)
  if s.z and not zones[s.z] and ((tok > 0 and dayOver) or ((tok > 0 or gpu > 0 or cost > 0) and monthOver)) then
    missing[s.z] = true
  end
end
local need = {-1, NOWS, NOWN}
for z in pairs(missing) do need[#need + 1] = z end
if #need > 3 then return need end

local over = (tok > t.x or gpu > t.g or cost > t.c) and 1 or 0
release(P, id, t, {tok, gpu, cost}, zones, states, base, margin)
local s = string.format('%d %d %d %d %d %d %d %d %s 0', tin, tout, gpu, cost, t.x, t.g, t.c, over, abs(0)) .. '\n' .. t.meta
call('SET', KEYS[1], 'S ' .. s, 'PX', retention)
return {1, NOWS, NOWN, s}
