-- Grants on several scopes of one tag (Store.GrantBatch), each carried out
-- as grant.lua would, with its own request id: a call replays, or
-- conflicts, on its own. KEYS: per call 5 (state, leases, expiries,
-- stranded, request), then the tag's ticket expiry set and epoch. ARGV:
-- 1-8 as grant_call's, 9 the number of calls, then per call its want
-- count and 8 values a want. Reply: {-1} when the epoch is lost, else per
-- call the length of its reply, then the reply (grant_call's).
if epoch_lost() then return {-1} end
local out, p = {}, 10
for c = 0, tonumber(ARGV[9]) - 1 do
  local r = grant_call(5 * c, p)
  out[#out + 1] = #r
  for _, v in ipairs(r) do out[#out + 1] = v end
  p = p + 1 + 8 * tonumber(ARGV[p])
end
return out
