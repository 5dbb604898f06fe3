-- KEYS: 1 expiry set, 2 epoch. ARGV: 1 now, 2 require epoch, 3 tag, 4 key
-- ms, 5 retention ms. Reply: {0, now, tickets expired} or {-1} epoch
-- lost. It refunds the reservations of the tag's tickets past their expiry
-- (at most 64 a call) and keeps their records, marked expired, for the
-- retention.
if epoch_lost() then return {-1} end
local now = now_us()
return {0, now, tk_sweep(ARGV[3], KEYS[1], now, ARGV[4], ARGV[5])}
