-- One batch of votes → counters and offsets, atomically (urna consumer, redis_sink).
--
-- KEYS: 1 offsets (this group), 2 total, 3 bands, 4 albums, 5 rank_sum, 6 sources, 7 owner,
--       8.. the idempotency buckets (sets of keys): 8 the current one, then older ones
-- ARGV: 1 group, 2 topic, 3 bucket lifetime in ms, 4 partition count, then per partition:
--       partition, n, then n records of: offset, band, album key, rank, source, key
--       (band '' = a poison record: it only advances the offset; key '' = no key)
--
-- A record with a key that one of the buckets holds (or an earlier record of this batch
-- had) is a client's retry of a vote already counted: its offset advances, nothing else.
--
-- Redis keeps the writes a script made before an error, so this script is in two
-- halves: everything that can fail (arguments, key types, counter values, the owner
-- record) is checked first, and only then does it write. A refused batch changes nothing.
-- Errors start with 'URNA_' so the member can tell them from connection failures.

local function fail(code, message)
  return redis.error_reply('URNA_' .. code .. ' ' .. message)
end

local function int(value)
  local n = tonumber(value)
  if n == nil or n ~= math.floor(n) then return nil end
  return n
end

-- 1. Arguments: parse everything before touching any key.
local group, topic = ARGV[1], ARGV[2]
local bucket_ttl = int(ARGV[3])
local partitions = int(ARGV[4])
if group == nil or group == '' or topic == nil or topic == '' or partitions == nil or partitions < 0
    or bucket_ttl == nil or bucket_ttl < 1 or #KEYS < 8 then
  return fail('BAD_ARGS', 'group, topic, bucket lifetime, partition count or keys')
end
local batches = {}
local i = 5
for _ = 1, partitions do
  local part, n = int(ARGV[i]), int(ARGV[i + 1])
  if part == nil or part < 0 or n == nil or n < 1 then
    return fail('BAD_ARGS', 'partition header at argument ' .. i)
  end
  i = i + 2
  local records = {}
  local previous = -1
  for _ = 1, n do
    local offset, band, album, rank, source, key =
      int(ARGV[i]), ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
    if offset == nil or offset <= previous or key == nil then
      return fail('BAD_ARGS', 'record at argument ' .. i)
    end
    local r = { offset = offset }
    if band ~= '' then
      r.rank = int(rank)
      if r.rank == nil or r.rank < 1 or r.rank > 10 or album == '' or source == '' then
        return fail('BAD_ARGS', 'vote at argument ' .. i)
      end
      r.band, r.album, r.source = band, album, source
      if key ~= '' then r.key = key end
    end
    previous = offset
    records[#records + 1] = r
    i = i + 6
  end
  batches[#batches + 1] = { part = tostring(part), records = records }
end
if ARGV[i] ~= nil then return fail('BAD_ARGS', 'trailing arguments') end

-- 2. Key types: a WRONGTYPE in the middle of the writes would leave half a batch.
local expected_types = { 'hash', 'string', 'hash', 'hash', 'hash', 'hash', 'hash' }
for k = 1, #KEYS do
  local expected = expected_types[k] or 'set'
  local t = redis.call('TYPE', KEYS[k])['ok']
  if t ~= 'none' and t ~= expected then
    return fail('WRONGTYPE', KEYS[k] .. ' is a ' .. t .. ', not a ' .. expected)
  end
end

local new_keys = {} -- key → true: counted by this batch
local function seen(key)
  if new_keys[key] then return true end
  for k = 8, #KEYS do
    if redis.call('SISMEMBER', KEYS[k], key) == 1 then return true end
  end
  return false
end

-- 3. Ownership: these counters belong to one (group, topic); offsets and counters
--    exist together or not at all.
local owner = redis.call('HMGET', KEYS[7], 'group', 'topic')
local has_offsets = redis.call('EXISTS', KEYS[1]) == 1
local has_counters = redis.call('EXISTS', KEYS[2]) == 1
if owner[1] or owner[2] then
  if owner[1] ~= group or owner[2] ~= topic then
    return fail('OWNER', 'counters belong to group ' .. tostring(owner[1]) .. ' on topic ' ..
      tostring(owner[2]) .. ', not to group ' .. group .. ' on topic ' .. topic)
  end
  if has_counters and not has_offsets then
    return fail('OFFSETS_LOST', KEYS[1] .. ' is missing beside existing counters')
  end
elseif has_counters and not has_offsets then
  return fail('OWNER', 'counters exist without an owner record or offsets of group ' .. group)
end

-- 4. Decide per partition: which records are new, which partitions have a gap.
local result = {}
local total = 0
local increments = { {}, {}, {}, {} } -- bands, albums, rank_sum, sources
local function add(t, k, v) t[k] = (t[k] or 0) + v end
local offset_writes = {}
for _, b in ipairs(batches) do
  local stored = redis.call('HGET', KEYS[1], b.part)
  if stored ~= false then
    stored = int(stored)
    if stored == nil or stored < 0 then
      return fail('BAD_STATE', KEYS[1] .. ' field ' .. b.part .. ' is not an offset')
    end
  else
    stored = 0 -- never applied: the partition starts at offset 0
  end
  if b.records[1].offset > stored then
    result[#result + 1] = b.part
    result[#result + 1] = 'gap:' .. stored
  else
    local applied, duplicates, next_offset = 0, 0, stored
    for _, r in ipairs(b.records) do
      if r.offset >= next_offset then
        if r.band and r.key and seen(r.key) then
          duplicates = duplicates + 1
        elseif r.band then
          if r.key then new_keys[r.key] = true end
          total = total + 1
          add(increments[1], r.band, 1)
          add(increments[2], r.album, 1)
          add(increments[3], r.album, r.rank)
          add(increments[4], r.source, 1)
          applied = applied + 1
        end
        next_offset = r.offset + 1
      end
    end
    if next_offset > stored then offset_writes[b.part] = next_offset end
    result[#result + 1] = b.part
    result[#result + 1] = 'applied:' .. applied .. ':' .. duplicates
  end
end

-- 5. Counter values: HINCRBY/INCRBY fail on a value that is not an integer.
if total > 0 and has_counters and int(redis.call('GET', KEYS[2])) == nil then
  return fail('BAD_STATE', KEYS[2] .. ' is not an integer')
end
for k = 1, 4 do
  for field, _ in pairs(increments[k]) do
    local v = redis.call('HGET', KEYS[k + 2], field)
    if v ~= false and int(v) == nil then
      return fail('BAD_STATE', KEYS[k + 2] .. ' field ' .. field .. ' is not an integer')
    end
  end
end

-- 6. Writes: nothing below can fail on the data checked above.
if next(offset_writes) ~= nil then
  if not (owner[1] or owner[2]) then
    redis.call('HSET', KEYS[7], 'group', group, 'topic', topic)
  end
  for part, offset in pairs(offset_writes) do redis.call('HSET', KEYS[1], part, offset) end
end
if total > 0 then redis.call('INCRBY', KEYS[2], total) end
for k = 1, 4 do
  for field, v in pairs(increments[k]) do redis.call('HINCRBY', KEYS[k + 2], field, v) end
end
if next(new_keys) ~= nil then
  for key, _ in pairs(new_keys) do redis.call('SADD', KEYS[8], key) end
  redis.call('PEXPIRE', KEYS[8], bucket_ttl)
end
return result
