-- KEYS: 1 record. ARGV: 1 now. Reply: tk_reply with status 1, or {0, now}
-- unknown. It changes nothing: a live ticket past its expiry shows as
-- live with its expiry (the caller reads it as expired).
local now = now_us()
local t = tk_load(KEYS[1])
if not t then return {0, now} end
return tk_reply(1, now, t)
