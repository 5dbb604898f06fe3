-- KEYS: 1 state, 2 leases, 3 expiries, 4 stranded. ARGV: 1 now, 2 unused,
-- 3 maxttl µs. Reply: {leases reclaimed, now}. Idempotent: it only acts
-- on what has expired by now.
local now = now_us()
return {reclaim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], now, tonumber(ARGV[3])), now}
