-- One batch of votes → counters and offsets, atomically (urna consumer, redis_sink).
--
-- KEYS: 1 offsets (this group), 2 total, 3 bands, 4 albums, 5 rank_sum, 6 sources, 7 owner,
--       then per partition of ARGV, in its order: the sorted set of the key hashes counted
--       on it, scored by window epoch
-- ARGV: 1 group, 2 topic, 3 partition count, then per partition:
--       partition, n, then n records of: offset, band, album key, rank, source, key hash,
--       window epoch (band '' = a poison record: it only advances the offset; key '' = no key)
--
-- A record whose key was counted in its own epoch (by an earlier batch or earlier in this
-- one) is a client's retry of a vote already counted: its offset advances, nothing else.
-- Each set then drops the epochs two behind the newest epoch of the batch, in record time.
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
local partitions = int(ARGV[3])
if group == nil or group == '' or topic == nil or topic == '' or partitions == nil or partitions < 0
    or #KEYS ~= 7 + partitions then
  return fail('BAD_ARGS', 'group, topic, partition count or keys')
end
local batches = {}
local i = 4
for _ = 1, partitions do
  local part, n = int(ARGV[i]), int(ARGV[i + 1])
  if part == nil or part < 0 or n == nil or n < 1 then
    return fail('BAD_ARGS', 'partition header at argument ' .. i)
  end
  i = i + 2
  local records = {}
  local previous = -1
  for _ = 1, n do
    local offset, band, album, rank, source, key, epoch =
      int(ARGV[i]), ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], int(ARGV[i + 6])
    if offset == nil or offset <= previous or key == nil or epoch == nil then
      return fail('BAD_ARGS', 'record at argument ' .. i)
    end
    local r = { offset = offset }
    if band ~= '' then
      r.rank = int(rank)
      if r.rank == nil or r.rank < 1 or r.rank > 10 or album == '' or source == '' then
        return fail('BAD_ARGS', 'vote at argument ' .. i)
      end
      r.band, r.album, r.source = band, album, source
      if key ~= '' then r.key, r.epoch = key, epoch end
    end
    previous = offset
    records[#records + 1] = r
    i = i + 7
  end
  batches[#batches + 1] = { part = tostring(part), records = records, keys = KEYS[7 + #batches + 1] }
end
if ARGV[i] ~= nil then return fail('BAD_ARGS', 'trailing arguments') end

-- 2. Key types: a WRONGTYPE in the middle of the writes would leave half a batch.
local expected_types = { 'hash', 'string', 'hash', 'hash', 'hash', 'hash', 'hash' }
for k = 1, #KEYS do
  local expected = expected_types[k] or 'zset'
  local t = redis.call('TYPE', KEYS[k])['ok']
  if t ~= 'none' and t ~= expected then
    return fail('WRONGTYPE', KEYS[k] .. ' is a ' .. t .. ', not a ' .. expected)
  end
end

-- Per partition's set: key → epoch counted by this batch, and the newest epoch seen.
local new_keys, newest = {}, {}
local function seen(b, r)
  local mine = new_keys[b.keys]
  if mine and mine[r.key] == r.epoch then return true end
  local score = redis.call('ZSCORE', b.keys, r.key)
  return score ~= false and tonumber(score) == r.epoch
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
        if r.key and (newest[b.keys] == nil or r.epoch > newest[b.keys]) then
          newest[b.keys] = r.epoch
        end
        if r.band and r.key and seen(b, r) then
          duplicates = duplicates + 1
        elseif r.band then
          if r.key then
            new_keys[b.keys] = new_keys[b.keys] or {}
            new_keys[b.keys][r.key] = r.epoch
          end
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
for set, keys in pairs(new_keys) do
  for key, epoch in pairs(keys) do redis.call('ZADD', set, epoch, key) end
end
for set, epoch in pairs(newest) do
  redis.call('ZREMRANGEBYSCORE', set, '-inf', '(' .. (epoch - 1))
end
return result
