-- KEYS: the states of one or more scopes. ARGV: 1 now. Reply: {now, then
-- per scope its requests bucket and tokens_rate bucket} ("" when never
-- used). It changes nothing.
local out = {now_us()}
for _, k in ipairs(KEYS) do
  out[#out + 1] = redis.call('HGET', k, 't0') or ''
  out[#out + 1] = redis.call('HGET', k, 't1') or ''
end
return out
