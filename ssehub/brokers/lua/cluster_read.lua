-- ssehub cluster read: events after a shard position on several channels of this shard, and its head. Atomic.
-- Runs on one shard's master, with no declared keys (the channels hash to different slots of this node).
-- ARGV[1] the shard's key prefix "{<anchor tag>}:<p>:"  ARGV[2] the shard's anchor
-- ARGV[3] after: the client's id on this shard, or "" if it has none  ARGV[4] limit per channel
-- ARGV[5] history ttl in ms  ARGV[6] channel key prefix "{<p>:"  ARGV[7..] channel names
-- Returns {head, {expired 0|1, entries}, ...} in the order of the channels.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cutoff = now - tonumber(ARGV[5])
local last_key, floor_key = ARGV[1] .. 'last-id', ARGV[1] .. 'floor'
local last = redis.call('GET', last_key)
if not last then
  last = string.format('%.0f-0', now)
  redis.call('SET', last_key, last)
  redis.call('SET', floor_key, last, 'NX')
end
local floor = redis.call('GET', floor_key) or '0-0'
local after = ARGV[3]
-- No position on this shard, an id above its head (not issued here), or below its floor (its history lost,
-- or channels dropped): every channel asked for is expired.
local unknown = after == '' or less(last, after) or less(after, floor)
local result = {last}
for i = 7, #ARGV do
  local key = ARGV[6] .. ARGV[i] .. '}:stream'
  if unknown then
    result[#result + 1] = {1, {}}
  elseif redis.call('EXISTS', key) == 1 then
    if redis.call('GET', ARGV[6] .. ARGV[i] .. '}:home') ~= ARGV[2] then
      -- Its ids were issued by another shard's order (the slot migrated, nothing published since).
      result[#result + 1] = {1, {}}
    else
      local deleted = info_field(key, 'max-deleted-entry-id') or '0-0'
      local trimmed = trim(key, nil, cutoff, info_field(key, 'last-generated-id'))
      if trimmed and less(deleted, trimmed) then deleted = trimmed end
      if less(after, deleted) then
        result[#result + 1] = {1, {}}
      else
        result[#result + 1] = {0, redis.call('XRANGE', key, '(' .. after, '+', 'COUNT', ARGV[4])}
      end
    end
  else
    result[#result + 1] = {0, {}}
  end
end
return result
