-- instances: record a heartbeat and count the instances seen within ttl,
-- on Redis's clock so that instances' clocks do not matter.
--
-- KEYS: the registry (sorted set: instance id by last beat, Unix ms).
-- ARGV: id ('' to count only) ttl (ms).
-- Reply: the number of instances whose last beat is within ttl.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
if ARGV[1] ~= '' then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return redis.call('ZCOUNT', KEYS[1], string.format('(%d', now - ttl), '+inf')
