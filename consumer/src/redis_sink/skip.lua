-- Moves one partition's stored next offset over records Kafka no longer has (deleted by
-- retention before they were counted), but only if it is still where the member read it:
-- another member may have moved it meanwhile.
--
-- KEYS: 1 offsets (this group), 2 owner
-- ARGV: 1 group, 2 topic, 3 partition, 4 expected stored next offset, 5 new next offset
-- Returns 1 when moved, 0 when the stored offset was elsewhere.

for k, want in ipairs({ 'hash', 'hash' }) do
  local t = redis.call('TYPE', KEYS[k])['ok']
  if t ~= 'none' and t ~= want then
    return redis.error_reply('URNA_WRONGTYPE ' .. KEYS[k] .. ' is a ' .. t)
  end
end
local owner = redis.call('HMGET', KEYS[2], 'group', 'topic')
if (owner[1] or owner[2]) and (owner[1] ~= ARGV[1] or owner[2] ~= ARGV[2]) then
  return redis.error_reply('URNA_OWNER counters belong to group ' .. tostring(owner[1]) ..
    ' on topic ' .. tostring(owner[2]))
end
local stored = redis.call('HGET', KEYS[1], ARGV[3])
if stored == false then stored = '0' end
if tonumber(stored) ~= tonumber(ARGV[4]) or tonumber(ARGV[5]) <= tonumber(ARGV[4]) then
  return 0
end
if not (owner[1] or owner[2]) then
  redis.call('HSET', KEYS[2], 'group', ARGV[1], 'topic', ARGV[2])
end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[5])
return 1
