-- void: resolve an acquire whose reply was lost (a timeout, a broken
-- connection, a caller that gave up). If Redis granted it, release the
-- ticket exactly as a settle with zero use would (reservations refunded,
-- the slot freed) but record no settlement; if it never arrived, or has
-- not arrived yet, leave a tombstone so that acquire.lua refuses it when
-- it does. Either way the ticket key then holds "V " for the tombstone's
-- life. A ticket already settled or expired is left alone.
--
-- KEYS: the ticket. ARGV: nowS nowN prefix base margin tombstone (ms).
-- Reply: {1, nowS, nowN} (granted, now released), {0, nowS, nowN} (not
-- granted: tombstone written), {2, nowS, nowN} (settled, expired or voided
-- before: nothing changed).
setnow(ARGV[1], ARGV[2])
local P = ARGV[3]
local base, margin, keep = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local id = string.sub(KEYS[1], #P + 3)
local t, raw = ticket_load(P, id)
if t == nil then
  if raw then return {2, NOWS, NOWN} end
  call('SET', KEYS[1], 'V ', 'PX', keep)
  return {0, NOWS, NOWN}
end
if rel(t.e) <= 0 then
  release(P, id, t, nil, nil, nil, base, margin) -- the refund expiry makes
else
  release(P, id, t, {0, 0, 0}, nil, nil, base, margin)
end
call('SET', KEYS[1], 'V ', 'PX', keep)
return {1, NOWS, NOWN}
