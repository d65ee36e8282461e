-- ssehub read: events after an id on several channels, which channels expired, and the head. Atomic.
-- KEYS[1] {p}:last-id  KEYS[2] {p}:floor  KEYS[3..] {p}:stream:<channel> (in the caller's order)
-- ARGV[1] after id "<ms>-<seq>"  ARGV[2] limit per channel  ARGV[3] history ttl in ms
-- Returns {head, {expired 0|1, entries}, ...}; entries as XRANGE returns them.
-- It trims by age first (a write), so a quiet channel's old events are not returned past the ttl.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cutoff = now - tonumber(ARGV[3])
local after = ARGV[1]
local last = redis.call('GET', KEYS[1])
if not last then
  -- First use (or the data was lost): start the sequence now, as head.lua does.
  last = string.format('%.0f-0', now)
  redis.call('SET', KEYS[1], last)
  redis.call('SET', KEYS[2], last, 'NX')
end
local floor = redis.call('GET', KEYS[2]) or '0-0'
-- An id above the head was not issued here (another Redis, or data lost): every channel is unknown.
local unknown = less(last, after)
local result = {last}
for i = 3, #KEYS do
  local key = KEYS[i]
  if unknown then
    result[#result + 1] = {1, {}}
  elseif redis.call('EXISTS', key) == 1 then
    local deleted = info_field(key, 'max-deleted-entry-id') or '0-0'
    local trimmed = trim(key, nil, cutoff, info_field(key, 'last-generated-id'))
    if trimmed and less(deleted, trimmed) then deleted = trimmed end
    if less(after, deleted) then
      result[#result + 1] = {1, {}}
    else
      result[#result + 1] = {0, redis.call('XRANGE', key, '(' .. after, '+', 'COUNT', ARGV[2])}
    end
  else
    result[#result + 1] = {less(after, floor) and 1 or 0, {}}
  end
end
return result
