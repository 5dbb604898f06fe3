-- Shared by every lease script. Times are integer microseconds since the
-- Unix epoch (about 1.8e15, exact in a double); amounts are integers below
-- 2^53. ARGV[1] is now in µs, or "" for Redis's TIME; ARGV[2] is "1" when
-- the tag's epoch key (the last KEY) must exist, "=" and a value when it
-- must hold that value, "" for no check.
local function now_us()
  if ARGV[1] ~= '' then return tonumber(ARGV[1]) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function epoch_lost()
  local want = ARGV[2]
  if want == '' then return false end
  if want == '1' then return redis.call('EXISTS', KEYS[#KEYS]) == 0 end
  return redis.call('GET', KEYS[#KEYS]) ~= string.sub(want, 2)
end

-- replayed returns the stored reply of a request that was already carried
-- out, marked as a replay (status 1), or nil for a fresh request.
local function replayed(key)
  local prev = redis.call('GET', key)
  if not prev then return nil end
  local r = cmsgpack.unpack(prev)
  r[1] = 1
  return r
end

-- floor(a/b) for integers a >= 0, b > 0 with a < 2^53, corrected for the
-- double division's rounding.
local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end

local function ceildiv(a, b)
  local q = idiv(a, b)
  if q * b < a then q = q + 1 end
  return q
end

-- s formats an integer for redis.call: Lua's tostring keeps 14 digits.
-- s formats an integer-valued double for Redis; -0 (from -(g - p) with
-- g == p) would print as "-0", which HINCRBY refuses.
local function s(x)
  if x == 0 then return '0' end
  return string.format('%.0f', x)
end

local function num(v)
  if v == false or v == nil then return 0 end
  return tonumber(v)
end

-- Meters: 0 requests, 1 tokens_rate (rates); 2 tokens/day, 3 tokens/month,
-- 4 gpu, 5 cost (budgets); 6 concurrency.
local function is_rate(k) return k <= 1 end
local function is_budget(k) return k >= 2 and k <= 5 end

-- A lease record, one per (scope, instance) in the leases hash: e expiry;
-- per budget or concurrency meter k: g<k> held, p<k> pinned (what reclaim
-- keeps), w<k> budget window. Rate units are not recorded: they are slots
-- already in the bucket (t<k>, a quota.Bucket string), decided by the
-- caller and written by compare-and-set.
-- set_pin applies pin p with sequence number q (0: none) and release time
-- pu (µs; concurrency, 0: none) to meter k of lease l: with a sequence
-- number, it replaces the lease's pin (and pu<k>) if q is above the last
-- applied (ps<k>); without, it only raises the pin. Pins are not clamped
-- to g: a reclaim keeps min(p, g).
local function set_pin(l, k, p, q, pu)
  if q == 0 then
    l['p' .. k] = math.max(p, num(l['p' .. k]))
  elseif q > num(l['ps' .. k]) then
    l['p' .. k], l['ps' .. k] = p, q
    if pu and pu > 0 then l['pu' .. k] = pu end
  end
end

local function lease_load(lkey, inst)
  local v = redis.call('HGET', lkey, inst)
  if not v then return nil end
  return cmsgpack.unpack(v)
end

-- reclaim frees the leases that expired by now (at most 64 per call, the
-- oldest first): of budgets and concurrency what is held but not pinned
-- returns at once; the pinned part of a budget stays counted for the rest
-- of its window (it may have been spent), and that of concurrency until
-- the lease's expiry plus maxttl (no ticket it admitted outlives that).
-- Rate units are time in the bucket and lapse by themselves. The lease of
-- self, the live instance calling, is left alone: it is renewed or granted
-- by the same call. It returns how many leases it reclaimed.
local function reclaim(skey, lkey, xkey, zkey, now, maxttl, self)
  local n = 0
  local dead = redis.call('ZRANGEBYSCORE', xkey, '-inf', s(now), 'LIMIT', 0, 64)
  for _, inst in ipairs(dead) do
    local l = nil
    if inst ~= self then l = lease_load(lkey, inst) end
    if inst == self then
      -- kept
    elseif l then
      for k = 2, 6 do
        local g = num(l['g' .. k])
        if g > 0 then
          local p = math.min(num(l['p' .. k]), g)
          local cur = true
          if is_budget(k) then
            cur = num(redis.call('HGET', skey, 'w' .. k)) == num(l['w' .. k])
          end
          if cur then
            redis.call('HINCRBY', skey, 'u' .. k, s(-(g - p)))
            if p > 0 then
              redis.call('HINCRBY', skey, 's' .. k, s(p))
              if k == 6 then
                -- released when the tickets that may hold them have
                -- expired: the instance's word (pu6), else the longest TTL
                local rel = l.e + maxttl
                if num(l.pu6) > 0 then rel = math.min(rel, l.pu6) end
                redis.call('ZADD', zkey, s(rel), inst .. '|' .. s(l.e) .. '|' .. s(p))
              end
            end
          end
        end
      end
      redis.call('HDEL', lkey, inst)
      n = n + 1
    end
    if inst ~= self then redis.call('ZREM', xkey, inst) end
  end
  -- stranded concurrency whose tickets can no longer be alive
  local due = redis.call('ZRANGEBYSCORE', zkey, '-inf', s(now), 'LIMIT', 0, 64)
  for _, m in ipairs(due) do
    local p = tonumber(string.match(m, '|(%d+)$'))
    redis.call('HINCRBY', skey, 'u6', s(-p))
    redis.call('HINCRBY', skey, 's6', s(-p))
    redis.call('ZREM', zkey, m)
  end
  return n
end
