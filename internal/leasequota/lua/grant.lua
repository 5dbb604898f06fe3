-- One Grant (Store.Grant's callers that need no batch: chargeRates).
-- KEYS: 1 state, 2 leases, 3 expiries, 4 stranded, 5 request, 6 the tag's
-- ticket expiry set, 7 epoch. ARGV: 1-8 as grant_call's, 9 the want
-- count, then per want 8 values (grant_call.lua). Reply: grant_call's, or
-- {-1} when the epoch is lost.
if epoch_lost() then return {-1} end
return grant_call(0, 9)
