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
