-- KEYS: 1 record, 2 expiry set, 3 epoch. ARGV: 1 now, 2 require epoch,
-- 3 tag, 4 id, 5 key ms, 6 retention ms, 7 input, 8 output, 9 gpu, 10
-- cost, 11 zone count, then per zone: name, day start, day end, month
-- start, month end (Unix s, the windows holding now in that zone); then,
-- to settle ahead of the record (the ticket is known on another of its
-- tags, and its issuer may still be recording it on this one), '1' and
-- the ticket as that tag holds it: owner, expiry µs, meta, tokens, gpu,
-- cost, settled at µs, late and overrun (0 or 1).
-- Reply: tk_reply with status 1 settled now, 2 settled before (the first
-- settlement, nothing changed) or 3 settled ahead: the record is not
-- there, so a settled one with no reservation (h = 1) is kept in its place
-- for the retention; the issuer's record, when it lands, settles its
-- reservations at once (ticket_record.lua). {0, now} unknown (never
-- recorded, or its retention is over); {-1} epoch lost; {-3, now,
-- zone...}: a reservation's window has ended by now and use must go to the
-- current window of these zones, which the caller computes and sends
-- (nothing was changed).
--
-- Per budget reservation, with use the meter's part of the usage: if the
-- counter still counts the reservation's window, u += use - amount (a
-- stranded reservation: only use beyond it; an expired ticket, refunded:
-- use alone); otherwise use alone goes to the current window, restarting a
-- counter of an ended window without the reservation. A live ticket's
-- concurrency is freed. A ticket past its expiry is refunded first (as the
-- sweep would) and settled late.
if epoch_lost() then return {-1} end
local now = now_us()
local t = tk_load(KEYS[1])
local tag, id, keyms, retms = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local tin, tout, gpu, cost = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
if not t then
  local a = 12 + 5 * tonumber(ARGV[11])
  if ARGV[a] ~= '1' then return {0, now} end
  t = {o = ARGV[a + 1], e = tonumber(ARGV[a + 2]), m = ARGV[a + 3], t = tonumber(ARGV[a + 4]), g = tonumber(ARGV[a + 5]),
    c = tonumber(ARGV[a + 6]), st = 's', r = {}, h = 1, ui = tin, uo = tout, ug = gpu, uc = cost,
    sa = tonumber(ARGV[a + 7]), late = tonumber(ARGV[a + 8]), ov = tonumber(ARGV[a + 9])}
  redis.call('SET', KEYS[1], cmsgpack.pack(t), 'PX', retms)
  return tk_reply(3, now, t)
end
if t.st == 's' then return tk_reply(2, now, t) end
local use = {[2] = tin + tout, [3] = tin + tout, [4] = gpu, [5] = cost}
local zones = {}
for i = 0, tonumber(ARGV[11]) - 1 do
  local b = 12 + i * 5
  zones[ARGV[b]] = {tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])}
end
-- The current window of each budget reservation whose window ended by now.
local cur, need, nneed = {}, {}, 0
for q, r in ipairs(t.r) do
  if is_budget(r.m) and use[r.m] > 0 and now >= r.we * 1000000 then
    local z = zones[r.z]
    local lo, hi = 0, 0
    if z then
      if r.m == 2 then lo, hi = z[1], z[2] else lo, hi = z[3], z[4] end
    end
    if z and lo * 1000000 <= now and now < hi * 1000000 then
      cur[q] = lo
    elseif not need[r.z] then
      need[r.z] = true
      nneed = nneed + 1
    end
  end
end
if nneed > 0 then
  local out = {-3, now}
  for z in pairs(need) do out[#out + 1] = z end
  return out
end
local late = t.st == 'x'
if not late and t.e <= now then
  tk_refund(tag, t, keyms)
  late = true
end
for q, r in ipairs(t.r) do
  tk_charge(tag, r, use, cur[q] or r.w, late, keyms)
end
t.st = 's'
t.ui, t.uo, t.ug, t.uc, t.sa = tin, tout, gpu, cost, now
t.late = late and 1 or 0
t.ov = (tin + tout > num(t.t) or gpu > num(t.g) or cost > num(t.c)) and 1 or 0
redis.call('SET', KEYS[1], cmsgpack.pack(t), 'PX', retms)
redis.call('ZREM', KEYS[2], id)
return tk_reply(1, now, t)
