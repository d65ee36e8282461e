-- ssehub cluster publish: issue the next id of this shard's order, store the event, trim, notify. Atomic.
-- Contract: docs/redis-layout.md ("Redis Cluster"). Runs on the master that owns the channel's slot.
-- KEYS[1] {<p>:<channel>}:stream   KEYS[2] {<p>:<channel>}:home   (one slot: the channel's)
-- ARGV[1] the shard's key prefix "{<anchor tag>}:<p>:" (its last-id, floor and channels keys, on this node)
-- ARGV[2] the shard's anchor (the slot number naming it)
-- ARGV[3] channel  ARGV[4] event type  ARGV[5] data  ARGV[6] history size  ARGV[7] history ttl in ms
-- ARGV[8] max channels (per shard)  ARGV[9] sharded pub/sub channel  ARGV[10] channel key prefix "{<p>:"
-- Returns the id; error "SSEHUB_CHANNEL_LIMIT ..." when a new channel would exceed ARGV[8].
-- The shard keys are not declared (they hash to another slot of this node): a script without a shebang may
-- touch them. They are read first, so a caller whose view of the cluster is stale (the shard no longer owns
-- the anchor slot) gets an error before anything is written, and may retry.

local last_key, floor_key, channels_key = ARGV[1] .. 'last-id', ARGV[1] .. 'floor', ARGV[1] .. 'channels'
local last = redis.call('GET', last_key)

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[7])
local cutoff = now - ttl
local anchor = ARGV[2]

local ms, seq = now, 0
if last then
  local lms, lseq = parse(last)
  if now <= lms then ms, seq = lms, lseq + 1 end
end
local home = redis.call('GET', KEYS[2])
local existed = redis.call('EXISTS', KEYS[1]) == 1
local moved = existed and home ~= anchor
if moved then
  -- The channel's history was issued by another shard's order (its slot migrated here): continue above it,
  -- since stream ids only grow.
  local top = info_field(KEYS[1], 'last-generated-id')
  if top then
    local tms, tseq = parse(top)
    if tms > ms or (tms == ms and tseq >= seq) then ms, seq = tms, tseq + 1 end
  end
end
local id = fmt(ms, seq)
local floor = redis.call('GET', floor_key)
if not floor then
  floor = id
  redis.call('SET', floor_key, floor)
end

local channel = ARGV[3]
local is_new = redis.call('ZSCORE', channels_key, channel) == false
if is_new and redis.call('ZCARD', channels_key) >= tonumber(ARGV[8]) then
  -- At the limit: drop this shard's channels whose last event is older than the ttl, raising the floor.
  -- pcall: a channel whose slot migrated away is not local any more; it is only forgotten here.
  local idle = redis.call('ZRANGEBYSCORE', channels_key, '-inf', '(' .. string.format('%.0f', cutoff), 'LIMIT', 0, 256)
  for _, name in ipairs(idle) do
    local key = ARGV[10] .. name .. '}:stream'
    local found = redis.pcall('EXISTS', key)
    if found == 1 then
      local gone = info_field(key, 'last-generated-id')
      if gone and less(floor, gone) then floor = gone end
      redis.call('DEL', key, ARGV[10] .. name .. '}:home')
    end
    redis.call('ZREM', channels_key, name)
  end
  redis.call('SET', floor_key, floor)
  if redis.call('ZCARD', channels_key) >= tonumber(ARGV[8]) then
    return redis.error_reply('SSEHUB_CHANNEL_LIMIT this shard already keeps ' .. ARGV[8] .. ' channels')
  end
end

redis.call('XADD', KEYS[1], id, 'event', ARGV[4], 'data', ARGV[5])
if existed then
  trim(KEYS[1], tonumber(ARGV[6]), cutoff, id)
end
if moved then
  -- Positions on this shard below this id cannot say what the client saw of the older history: reset them.
  redis.call('XSETID', KEYS[1], id, 'MAXDELETEDID', id)
elseif not existed and less(floor, id) then
  redis.call('XSETID', KEYS[1], id, 'MAXDELETEDID', floor)
end
if home ~= anchor then redis.call('SET', KEYS[2], anchor) end
redis.call('ZADD', channels_key, now, channel)
redis.call('SET', last_key, id)
redis.call('SPUBLISH', ARGV[9], anchor .. '\n' .. id .. '\n' .. ARGV[4] .. '\n' .. ARGV[5])
return id
