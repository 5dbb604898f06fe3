-- settle: replace a ticket's reservations with actual use, once.
--
-- KEYS: the ticket (replaced by its settlement).
-- ARGV: nowS nowN prefix input output gpu cost retention base margin
-- nZones, the zones (see readzones).
-- Reply: {1, nowS, nowN, settlement} (settled now), {2, nowS, nowN,
-- settlement} (settled before), {0, nowS, nowN} (unknown or expired),
-- {-1, nowS, nowN, zone...} (a charged scope's window has ended and the
-- current one of these zones is needed: nothing was changed).
setnow(ARGV[1], ARGV[2])
local P = ARGV[3]
local tin, tout, gpu, cost = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local retention, base, margin = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local _, zones = readzones(tonumber(ARGV[11]), 11)
if not zones then return {-1, NOWS, NOWN} end

local id = string.sub(KEYS[1], #P + 3)
local t, raw = ticket_load(P, id)
if t == nil then
  if raw then return {2, NOWS, NOWN, string.sub(raw, 3)} end
  return {0, NOWS, NOWN}
end
if rel(t.e) <= 0 then
  release(P, id, t, nil, nil, nil, base, margin)
  call('DEL', KEYS[1])
  return {0, NOWS, NOWN}
end

local tok = sadd(tin, tout)
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
local s = string.format('%d %d %d %d %d %d %d %d %s', tin, tout, gpu, cost, t.x, t.g, t.c, over, abs(0))
call('SET', KEYS[1], 'S ' .. s, 'PX', retention)
return {1, NOWS, NOWN, s}
