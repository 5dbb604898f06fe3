-- KEYS: 1 expiry set, 2..1+n the lease hashes of the n scopes named, then
-- per record its key, last epoch.
-- ARGV: 1 now, 2 require epoch, 3 tag, 4 key ms, 5 retention ms, 6 n
-- scopes, 7 records, then the n scope keys, then per record: id, owner,
-- expiry µs, meta, tokens, gpu, cost, reservation count, and per
-- reservation 7 values: scope index (1-based), meter, amount, window start
-- s, window end s, zone (budgets; 0, 0, '' for concurrency), 1 when the
-- caller knows the reservation is not in its lease (stranded already).
-- Reply: {status, now, swept, then per record: 0 recorded or 1 already
-- present, count, the 0-based indices of its stranded reservations}, status
-- 0, or {-1} epoch lost. A record already present changes nothing and
-- reports the stranded reservations it was recorded with.
-- A fresh record moves each reservation out of the owner's lease on its
-- scope (g -= amount; the pin stays, reclaim keeps min(pin, g)) when the lease holds it in the same
-- window; otherwise the lease was reclaimed (or moved to a later window)
-- and the amount, counted as stranded or in an ended window, is not moved:
-- the reservation is marked stranded. The counters do not change.
-- A record settled ahead (h = 1: another instance settled the ticket
-- through its other tags before this record landed, ticket_settle.lua) is
-- recorded with the reservations now, moved as for a fresh record, and
-- settled at once with the usage it holds: concurrency freed, a budget
-- charged use - amount (use beyond a stranded amount; use alone to the
-- current window once the reservation's window had ended when it was
-- settled). Reported as recorded: the issuer drops the reservations from
-- its leases as for any record.
if epoch_lost() then return {-1} end
local now = now_us()
local tag, keyms, retms = ARGV[3], ARGV[4], ARGV[5]
local ns, nrec = tonumber(ARGV[6]), tonumber(ARGV[7])
local names = {}
for j = 1, ns do names[j] = ARGV[7 + j] end
local leases = {}
local out = {0, now, 0}
local a = 8 + ns

-- take reads the nres reservations of the record at ARGV[a] into t.r,
-- moving each from its owner's lease when the lease holds it, and returns
-- the 0-based indices of the stranded ones.
local function take(t, owner, nres)
  local strand = {}
  for q = 1, nres do
    local j, k, amt = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    local r = {k = names[j], m = k, a = amt, w = tonumber(ARGV[a + 3]), we = tonumber(ARGV[a + 4]), z = ARGV[a + 5], x = 0}
    local lost = ARGV[a + 6] == '1'
    a = a + 7
    if lost and amt > 0 then
      r.x = 1
      strand[#strand + 1] = q - 1
    elseif amt > 0 then
      local lk = j .. '|' .. owner
      local c = leases[lk]
      if not c then
        c = {j = j, o = owner, l = lease_load(KEYS[1 + j], owner)}
        leases[lk] = c
      end
      local l = c.l
      local g = 0
      if l then g = num(l['g' .. k]) end
      if l and g >= amt and (k == 6 or num(l['w' .. k]) == r.w) then
        g = g - amt
        l['g' .. k] = g
        c.dirty = true
      else
        r.x = 1
        strand[#strand + 1] = q - 1
      end
    end
    t.r[q] = r
  end
  return strand
end

-- settle_taken settles the reservations take just recorded on t, settled
-- ahead, as ticket_settle.lua would have (the ticket was live then).
local function settle_taken(t)
  local use = {[2] = num(t.ui) + num(t.uo), [3] = num(t.ui) + num(t.uo), [4] = num(t.ug), [5] = num(t.uc)}
  for _, r in ipairs(t.r) do
    local c = r.w
    if is_budget(r.m) and num(t.sa) >= r.we * 1000000 then c = r.we end -- settled in the next window
    tk_charge(tag, r, use, c, false, keyms)
  end
end

for i = 1, nrec do
  local id, owner, e = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  local nres = tonumber(ARGV[a + 7])
  local key = KEYS[1 + ns + i]
  local t = tk_load(key)
  if t and t.h == 1 then
    a = a + 8
    local strand = take(t, owner, nres)
    settle_taken(t)
    t.h = nil
    redis.call('SET', key, cmsgpack.pack(t), 'PX', retms)
    out[#out + 1], out[#out + 2] = 0, #strand
    for _, q in ipairs(strand) do out[#out + 1] = q end
  elseif t then
    local strand = {}
    for q, r in ipairs(t.r) do
      if r.x == 1 then strand[#strand + 1] = q - 1 end
    end
    out[#out + 1], out[#out + 2] = 1, #strand
    for _, q in ipairs(strand) do out[#out + 1] = q end
    a = a + 8 + nres * 7
  else
    t = {o = owner, e = e, m = ARGV[a + 3], t = tonumber(ARGV[a + 4]), g = tonumber(ARGV[a + 5]),
      c = tonumber(ARGV[a + 6]), st = 'l', r = {}}
    a = a + 8
    local strand = take(t, owner, nres)
    redis.call('SET', key, cmsgpack.pack(t), 'PX', keyms)
    redis.call('ZADD', KEYS[1], s(e), id)
    out[#out + 1], out[#out + 2] = 0, #strand
    for _, q in ipairs(strand) do out[#out + 1] = q end
  end
end
for _, c in pairs(leases) do
  if c.dirty then
    redis.call('HSET', KEYS[1 + c.j], c.o, cmsgpack.pack(c.l))
    redis.call('PEXPIRE', KEYS[1 + c.j], keyms)
  end
end
out[3] = tk_sweep(tag, KEYS[1], now, keyms, retms)
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], keyms) end
return out
