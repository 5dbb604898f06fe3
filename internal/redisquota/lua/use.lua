-- use: report a scope's counters after releasing its expired tickets.
--
-- KEYS: the scope's state. ARGV: nowS nowN prefix key base margin.
-- Reply: {1, nowS, nowN, z, dS, dE, mS, mE, td, tm, g, c, inflight, then
-- per rate (requests, tokens_rate): set (0/1), level, next, empty (ns after
-- now)}; window fields are '' when unset.
setnow(ARGV[1], ARGV[2])
local P, key = ARGV[3], ARGV[4]
local s = scope_load(P, key)
if sweep(P, s, tonumber(ARGV[5]), tonumber(ARGV[6])) then
  s = scope_load(P, key)
end
local function str(v)
  if v == nil then return '' end
  return string.format('%d', v)
end
local out = {1, NOWS, NOWN, s.z or '', str(s.dS), str(s.dE), str(s.mS), str(s.mE), s.td, s.tm, s.g, s.c,
  call('ZCARD', P .. 'l:' .. key)}
for i, g in ipairs({s.req, s.tok}) do
  local b = 13 + 4 * (i - 1)
  if g.l == nil then
    out[b + 1], out[b + 2], out[b + 3], out[b + 4] = 0, 0, 0, 0
  else
    out[b + 1], out[b + 2], out[b + 3], out[b + 4] = 1, gused(g), gnext(g), gempty(g)
  end
end
return out
