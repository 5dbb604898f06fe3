-- heartbeat: move a live ticket's expiry to now+ttl.
--
-- KEYS (the epoch's last, with RequireEpoch): the ticket. ARGV: nowS nowN prefix ttl base margin.
-- Reply: {1, nowS, nowN} or {0, nowS, nowN} (unknown, settled or expired).
setnow(ARGV[1], ARGV[2])
local P = ARGV[3]
if epoch_lost(P) then return {-9, NOWS, NOWN} end
local ttl, base, margin = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local id = string.sub(KEYS[1], #P + 3)
local t = ticket_load(P, id)
if t == nil then return {0, NOWS, NOWN} end
if rel(t.e) <= 0 then
  ticket_expire(P, id, t, release(P, id, t, nil, nil, nil, base, margin))
  return {0, NOWS, NOWN}
end
t.e = abs(ttl)
local score = usec(ttl)
local kind = (t.s == 1) and 'l:' or 'r:'
local indexed = t.s == 1 or t.x > 0 or t.g > 0 or t.c > 0
local ms = floor(ttl / 1e6) + 1 + margin
for _, ch in ipairs(t.ch) do
  if indexed then
    local zk = P .. kind .. ch.key
    call('ZADD', zk, 'XX', score, id)
    call('PEXPIRE', zk, ms, 'GT')
  end
  -- The scope must outlive the ticket (its refund needs the windows), and
  -- its lower bound of expiries must hold a shortened one.
  local s = indexed and scope_load(P, ch.key)
  if s and s.z and (s.x == nil or score < s.x) then
    s.x = score
    scope_save(s, base, margin) -- for at least base > ttl + margin
  else
    call('PEXPIRE', P .. 's:' .. ch.key, ms, 'GT')
  end
end
ticket_save(P, id, t, ticket_ttl(t, margin))
return {1, NOWS, NOWN}
