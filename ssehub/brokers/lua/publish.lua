-- ssehub publish: issue the next global id, store the event, trim, notify. Atomic (one script).
-- Contract (see docs/redis-layout.md); every key shares the hash tag {<prefix>} so they live in one slot.
-- KEYS[1] {p}:last-id   string, last issued id "<ms>-<seq>"
-- KEYS[2] {p}:floor     string, ids below it are unknown here (start id, raised when channels are dropped)
-- KEYS[3] {p}:channels  zset, channel name -> ms of its last publish
-- KEYS[4] {p}:stream:<channel>
-- ARGV[1] channel  ARGV[2] event type  ARGV[3] data (stored verbatim)
-- ARGV[4] history size (MAXLEN)  ARGV[5] history ttl in ms  ARGV[6] max channels
-- ARGV[7] pub/sub channel of the notification  ARGV[8] stream key prefix "{p}:stream:" (to drop idle channels)
-- Returns the id; error "SSEHUB_CHANNEL_LIMIT ..." when a new channel would exceed ARGV[6].

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function fmt(ms, seq)
  return string.format('%.0f-%.0f', ms, seq)
end

local function less(a, b)
  local ams, aseq = parse(a)
  local bms, bseq = parse(b)
  return ams < bms or (ams == bms and aseq < bseq)
end

local function info_field(key, name)
  local info = redis.call('XINFO', 'STREAM', key)
  for i = 1, #info, 2 do
    if info[i] == name then return info[i + 1] end
  end
  return nil
end

-- Trim by count and by age in one XTRIM, recording the greatest dropped id as the stream's
-- max-deleted-entry-id (Redis itself records it only for XDEL): a client below it missed events.
local function trim(key, maxlen, cutoff, last)
  local deleted = nil
  if maxlen then
    local excess = redis.call('XLEN', key) - maxlen
    if excess > 0 then
      local oldest = redis.call('XRANGE', key, '-', '+', 'COUNT', excess)
      deleted = oldest[#oldest][1]
    end
  end
  local aged = redis.call('XREVRANGE', key, '(' .. string.format('%.0f', cutoff) .. '-0', '-', 'COUNT', 1)
  if aged[1] and (not deleted or less(deleted, aged[1][1])) then deleted = aged[1][1] end
  if deleted then
    local ms, seq = parse(deleted)
    redis.call('XTRIM', key, 'MINID', fmt(ms, seq + 1))
    redis.call('XSETID', key, last, 'MAXDELETEDID', deleted)
  end
  return deleted
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[5])
local cutoff = now - ttl

local ms, seq = now, 0
local last = redis.call('GET', KEYS[1])
if last then
  local lms, lseq = parse(last)
  if now <= lms then ms, seq = lms, lseq + 1 end
end
local id = fmt(ms, seq)
local floor = redis.call('GET', KEYS[2])
if not floor then
  floor = id
  redis.call('SET', KEYS[2], floor)
end

local channel = ARGV[1]
local is_new = redis.call('ZSCORE', KEYS[3], channel) == false
if is_new and redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[6]) then
  -- At the limit: drop channels whose last event is older than the ttl (their history is empty by now),
  -- raising the floor so that a client holding an older id is told it may have missed events on them.
  local idle = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. string.format('%.0f', cutoff), 'LIMIT', 0, 256)
  for _, name in ipairs(idle) do
    local key = ARGV[8] .. name
    if redis.call('EXISTS', key) == 1 then
      local gone = info_field(key, 'last-generated-id')
      if gone and less(floor, gone) then floor = gone end
      redis.call('DEL', key)
    end
    redis.call('ZREM', KEYS[3], name)
  end
  redis.call('SET', KEYS[2], floor)
  if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[6]) then
    return redis.error_reply('SSEHUB_CHANNEL_LIMIT the broker already keeps ' .. ARGV[6] .. ' channels')
  end
end

local existed = redis.call('EXISTS', KEYS[4]) == 1
redis.call('XADD', KEYS[4], id, 'event', ARGV[2], 'data', ARGV[3])
if existed then
  trim(KEYS[4], tonumber(ARGV[4]), cutoff, id)
elseif less(floor, id) then
  -- A new stream starts at the floor: a client below it cannot know what this channel held before.
  redis.call('XSETID', KEYS[4], id, 'MAXDELETEDID', floor)
end
redis.call('ZADD', KEYS[3], now, channel)
redis.call('SET', KEYS[1], id)
redis.call('PUBLISH', ARGV[7], id .. '\n' .. ARGV[2] .. '\n' .. ARGV[3])
return id
