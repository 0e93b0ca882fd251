-- features/exposure.py: reserve a batch's claims against the exposure caps, atomically.
-- Mirrors features.exposure.allocate (a test holds the two to the same answers).
-- Per cap two keys: KEYS[2j-1] a sorted set of live entries, one per batch and counter
-- (member "<amount>:<count>:<batch token>:<value>", score its expiry in ms), KEYS[2j] a
-- hash of the live totals per value (fields "a:<value>", "c:<value>"). A batch costs a
-- few calls per cap plus one per entry that expired: not one per item or per counter.
--
-- ARGV[1] = 'reserve': now_ms, min_amount, token, J (caps), then per cap max_amount (-1:
--   none), max_count (-1: none), window_ms, refer (0/1); then C (counters), the counters'
--   cap numbers (packed u32, 1-based), the C values, the items' amounts (packed f64), the
--   items' starts (packed u32, m + 1) and their counters (packed u32, 0-based).
--   Returns {grants (packed f64 per item), reached (packed u32 pairs: item, counter, 0-based)}.
-- ARGV[1] = 'release': then per entry rewritten: cap number, value, the entry held, the
--   entry left ('' for none), amount and count released. An entry that is no longer there
--   (released already, or expired) is left alone. Returns the entries rewritten.

local function u32(blob, i) return struct.unpack('<I4', blob, 4 * i + 1) end

local function prune(z, t, now)
  -- Drop what has expired (score <= now) from the totals of its value.
  local gone = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  if #gone == 0 then return end
  for _, m in ipairs(gone) do
    local a, c, v = string.match(m, '^(%d+):(%d+):[^:]*:(.*)$')
    if redis.call('HINCRBY', t, 'c:' .. v, -tonumber(c)) <= 0 then
      redis.call('HDEL', t, 'a:' .. v, 'c:' .. v)
    else
      redis.call('HINCRBY', t, 'a:' .. v, -tonumber(a))
    end
  end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
end

local function totals(t, fields)
  -- HMGET in chunks: unpack is bounded by Lua's C stack.
  local out = {}
  for s = 1, #fields, 2000 do
    local part = redis.call('HMGET', t, unpack(fields, s, math.min(s + 1999, #fields)))
    for _, x in ipairs(part) do out[#out + 1] = tonumber(x or '0') or 0 end
  end
  return out
end

local function call_chunked(cmd, key, args, step)
  for s = 1, #args, step do
    redis.call(cmd, key, unpack(args, s, math.min(s + step - 1, #args)))
  end
end

local function reserve()
  local now, min_amount, token, ncap = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
  local cap = {}
  for j = 1, ncap do
    local b = 5 + 4 * (j - 1)
    cap[j] = {tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), ARGV[b + 4] == '1'}
    prune(KEYS[2 * j - 1], KEYS[2 * j], now)
  end
  local at = 6 + 4 * ncap
  local c, capno = tonumber(ARGV[at]), ARGV[at + 1]
  local value, of, fields = {}, {}, {}
  for j = 1, ncap do fields[j] = {} end
  for p = 1, c do
    value[p] = ARGV[at + 1 + p]
    local j = u32(capno, p - 1)
    of[p] = j
    local f = fields[j]
    f[#f + 1] = 'a:' .. value[p]
    f[#f + 1] = 'c:' .. value[p]
  end
  local used = {}
  for j = 1, ncap do
    if #fields[j] > 0 then
      local got, k = totals(KEYS[2 * j], fields[j]), 0
      for p = 1, c do
        if of[p] == j then
          used[p] = {got[2 * k + 1], got[2 * k + 2], 0, 0}  -- live amount, count; batch's amount, count
          k = k + 1
        end
      end
    end
  end
  local amounts, starts, counters = ARGV[at + 2 + c], ARGV[at + 3 + c], ARGV[at + 4 + c]
  local m = #amounts / 8
  local grants, hits = {}, {}
  for i = 0, m - 1 do
    local want = struct.unpack('<d', amounts, 8 * i + 1)
    local s, e = u32(starts, i), u32(starts, i + 1)
    local room, refer, hit = want, false, {}
    for q = s, e - 1 do
      local p = u32(counters, q) + 1
      local lim, u = cap[of[p]], used[p]
      if lim[2] >= 0 and u[2] + 1 > lim[2] then
        hit[#hit + 1] = p
        refer = true
      elseif lim[1] >= 0 and u[1] + want > lim[1] then
        hit[#hit + 1] = p
        room = math.min(room, lim[1] - u[1])
        refer = refer or lim[4]
      end
    end
    local grant = want
    if #hit > 0 then
      if refer or room < min_amount then grant = 0 else grant = room end
    end
    if grant > 0 then
      for q = s, e - 1 do
        local u = used[u32(counters, q) + 1]
        u[1], u[2], u[3], u[4] = u[1] + grant, u[2] + 1, u[3] + grant, u[4] + 1
      end
    end
    grants[#grants + 1] = struct.pack('<d', grant)
    for _, p in ipairs(hit) do hits[#hits + 1] = struct.pack('<I4I4', i, p - 1) end
  end
  local adds, sets = {}, {}
  for j = 1, ncap do adds[j], sets[j] = {}, {} end
  for p = 1, c do
    local u, j = used[p], of[p]
    if u[4] > 0 then
      local a, z = adds[j], sets[j]
      a[#a + 1] = now + cap[j][3]
      a[#a + 1] = string.format('%d:%d:', u[3], u[4]) .. token .. ':' .. value[p]
      z[#z + 1] = 'a:' .. value[p]
      z[#z + 1] = string.format('%d', u[1])
      z[#z + 1] = 'c:' .. value[p]
      z[#z + 1] = string.format('%d', u[2])
    end
  end
  for j = 1, ncap do
    if #adds[j] > 0 then
      call_chunked('ZADD', KEYS[2 * j - 1], adds[j], 2000)
      call_chunked('HSET', KEYS[2 * j], sets[j], 4000)
      -- Every entry in them ends by now + window: an idle cap leaves the store.
      redis.call('PEXPIRE', KEYS[2 * j - 1], cap[j][3])
      redis.call('PEXPIRE', KEYS[2 * j], cap[j][3])
    end
  end
  return {table.concat(grants), table.concat(hits)}
end

local function release()
  local done = 0
  for a = 2, #ARGV, 6 do
    local j = tonumber(ARGV[a])
    local z, t, v = KEYS[2 * j - 1], KEYS[2 * j], ARGV[a + 1]
    local score = redis.call('ZSCORE', z, ARGV[a + 2])
    if score then
      redis.call('ZREM', z, ARGV[a + 2])
      if ARGV[a + 3] ~= '' then redis.call('ZADD', z, score, ARGV[a + 3]) end
      redis.call('HINCRBY', t, 'a:' .. v, -tonumber(ARGV[a + 4]))
      redis.call('HINCRBY', t, 'c:' .. v, -tonumber(ARGV[a + 5]))
      done = done + 1
    end
  end
  return done
end

if ARGV[1] == 'reserve' then return reserve() end
if ARGV[1] == 'release' then return release() end
return redis.error_reply('exposure.lua: unknown mode ' .. tostring(ARGV[1]))
