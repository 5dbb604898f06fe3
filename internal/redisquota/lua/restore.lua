-- restore: set a budget counter for a window if that window is current.
--
-- KEYS: the scope's state. ARGV: nowS nowN prefix field (td, tm, g or c)
-- window (d or m) start (Unix seconds) used base margin nZones, the zones.
-- Reply: {1, nowS, nowN} or {-1, nowS, nowN, zone} (the scope's window
-- has ended and its zone's current one is needed: nothing was changed).
setnow(ARGV[1], ARGV[2])
local P, field, win = ARGV[3], ARGV[4], ARGV[5]
local ws, used = tonumber(ARGV[6]), tonumber(ARGV[7])
local base, margin = tonumber(ARGV[8]), tonumber(ARGV[9])
local _, zones = readzones(tonumber(ARGV[10]), 10)
if not zones then return {-1, NOWS, NOWN} end
local key = string.sub(KEYS[1], #P + 3)
local s = scope_load(P, key)
if s.z then
  local dayOver, monthOver = NOWS >= s.dE, NOWS >= s.mE
  if dayOver or monthOver then
    local w = zones[s.z]
    if not w then return {-1, NOWS, NOWN, s.z} end
    if dayOver then s.dS, s.dE, s.td = w.ds, w.de, 0 end
    if monthOver then s.mS, s.mE, s.tm, s.g, s.c = w.ms, w.me, 0, 0, 0 end
  end
  if (win == 'd' and ws ~= s.dS) or (win == 'm' and ws ~= s.mS) then
    if dayOver or monthOver then scope_save(s, base, margin) end
    return {1, NOWS, NOWN}
  end
  s[field] = used
  scope_save(s, base, margin)
  return {1, NOWS, NOWN}
end
-- Not yet seen in a chain, so its zone is unknown: keep the counter if the
-- window is plausibly current (started within 26 hours for a day, 32 days
-- for a month); the first chain that names the scope checks it exactly.
local DAY, MONTH = 26 * 3600, 32 * 86400
local span = (win == 'm') and MONTH or DAY
if ws > NOWS or ws + span <= NOWS then return {1, NOWS, NOWN} end
if win == 'd' then
  s.dS = ws
elseif s.mS ~= ws then
  s.mS, s.tm, s.g, s.c = ws, 0, 0, 0
end
s[field] = used
local least = 0
if s.dS then least = (s.dS + DAY - NOWS) * 1000 + margin end
if s.mS and (s.mS + MONTH - NOWS) * 1000 + margin > least then least = (s.mS + MONTH - NOWS) * 1000 + margin end
scope_save(s, base, margin, least)
return {1, NOWS, NOWN}
