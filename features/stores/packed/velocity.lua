-- The packed layout's velocity update: features/stores/redis/velocity.lua's window
-- arithmetic (copied unchanged; a test checks both give the same counts and state bytes),
-- reading and writing the view's one packed value instead of the hash fields.
-- KEYS: each merchant's packed velocity key. ARGV: schema id, now_us, count per key.
-- The value: u8 version 1 | u32 schema | i64 event us | 0x0a len Value x 3
-- (apps_1h, apps_24h, window_state), see features/stores/packed/layout.py.
local SCHEMA = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local PH = 13                      -- packed header bytes
local M_US, Q_US, NM, NQ = 60000000, 900000000, 60, 96
local HEAD = '<BdI4I4'
local HB = 17                      -- header bytes
local MOFF, QOFF = HB + 1, HB + 1 + 4 * NM
local SIZE = HB + 4 * (NM + NQ)

local function varint(v)
  local out = {}
  repeat
    local b = v % 128
    v = (v - b) / 128
    if v > 0 then b = b + 128 end
    out[#out + 1] = string.char(b)
  until v == 0
  return table.concat(out)
end

local function read_varint(s, i)
  local v, mul = 0, 1
  while true do
    local b = string.byte(s, i)
    if b == nil then return nil, i end
    i = i + 1
    v = v + (b % 128) * mul
    if b < 128 then return v, i end
    mul = mul * 128
  end
end

-- Zero ring slots for buckets (from, to], adding up what was cleared.
local function clear(body, base, slots, from, to)
  local removed = 0
  if to - from >= slots then
    for j = 0, slots - 1 do removed = removed + struct.unpack('<I4', body, base + 4 * j) end
    return body:sub(1, base - 1) .. string.rep('\0', 4 * slots) .. body:sub(base + 4 * slots), removed
  end
  for b = from + 1, to do
    local off = base + 4 * (b % slots)
    local v = struct.unpack('<I4', body, off)
    if v ~= 0 then
      removed = removed + v
      body = body:sub(1, off - 1) .. '\0\0\0\0' .. body:sub(off + 4)
    end
  end
  return body, removed
end

local function bump(body, off, k)
  local v = struct.unpack('<I4', body, off)
  return body:sub(1, off - 1) .. struct.pack('<I4', v + k) .. body:sub(off + 4)
end


-- The window_state Value inside a packed value (nil unless it is this schema's).
local function state_value(raw)
  if not raw or #raw < PH then return nil end
  local version, schema = struct.unpack('<BI4', raw, 1)
  if version ~= 1 or schema ~= SCHEMA then return nil end
  local p = PH + 1
  for j = 1, 3 do
    if string.byte(raw, p) ~= 10 then return nil end
    local len, q = read_varint(raw, p + 1)
    if len == nil then return nil end
    if j == 3 then return raw:sub(q, q + len - 1) end
    p = q + len
  end
end

local function entry(value)
  return '\10' .. varint(#value) .. value
end

local out = {}
for i, key in ipairs(KEYS) do
  local k = tonumber(ARGV[2 + i])
  local body = nil
  local last, s1, s24 = now, 0, 0
  local raw = state_value(redis.call('GET', key))
  if raw and string.byte(raw, 1) == 10 then
    local len, p = read_varint(raw, 2)
    if len == SIZE and #raw - p + 1 == SIZE then
      local version
      version, last, s1, s24 = struct.unpack(HEAD, raw, p)
      if version == 1 then body = raw:sub(p) else last, s1, s24 = now, 0, 0 end
    end
  end
  if body == nil then body = struct.pack(HEAD, 1, now, 0, 0) .. string.rep('\0', 4 * (NM + NQ)) end
  local m_now, q_now = math.floor(now / M_US), math.floor(now / Q_US)
  local m_last, q_last = math.floor(last / M_US), math.floor(last / Q_US)
  local removed
  if m_now > m_last then
    body, removed = clear(body, MOFF, NM, m_last, m_now)
    s1 = s1 - removed
  end
  if q_now > q_last then
    body, removed = clear(body, QOFF, NQ, q_last, q_now)
    s24 = s24 - removed
  end
  if m_now > math.max(m_now, m_last) - NM then
    body = bump(body, MOFF + 4 * (m_now % NM), k)
    s1 = s1 + k
  end
  if q_now > math.max(q_now, q_last) - NQ then
    body = bump(body, QOFF + 4 * (q_now % NQ), k)
    s24 = s24 + k
  end
  if now > last then last = now end
  body = struct.pack(HEAD, 1, last, s1, s24) .. body:sub(HB + 1)
  redis.call('SET', key, struct.pack('<BI4l', 1, SCHEMA, last) .. entry('\32' .. varint(s1))
             .. entry('\32' .. varint(s24)) .. entry('\10' .. varint(#body) .. body))
  out[2 * i - 1] = s1
  out[2 * i] = s24
end
return out
