-- lookup: describe a ticket without changing it.
--
-- KEYS: the ticket. ARGV: nowS nowN prefix.
-- Reply: {1, nowS, nowN, expiry, tokens, gpu, cost, meta} (live), the
-- same with 3 (expired unsettled: a settle would be late), {2, nowS, nowN,
-- settlement} (settled; see settle), or {0, nowS, nowN} (unknown or voided).
setnow(ARGV[1], ARGV[2])
local P = ARGV[3]
local id = string.sub(KEYS[1], #P + 3)
local t, raw = ticket_load(P, id)
if t then
  local kind = 1
  if rel(t.e) <= 0 then kind = 3 end
  return {kind, NOWS, NOWN, t.e, t.x, t.g, t.c, t.meta}
end
if not raw then return {0, NOWS, NOWN} end
if string.sub(raw, 1, 2) == 'S ' then return {2, NOWS, NOWN, string.sub(raw, 3)} end
if string.sub(raw, 1, 2) == 'V ' then return {0, NOWS, NOWN} end
local x = expired_load(raw)
return {3, NOWS, NOWN, x.e, x.x, x.g, x.c, x.meta}
