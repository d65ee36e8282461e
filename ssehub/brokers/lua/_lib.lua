-- ssehub Lua library: helpers shared by the scripts. load_script() puts this text in front of every script,
-- so publish and read trim, compare and parse ids by one and the same rule.

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
  -- Entries older than the cutoff exist only if the oldest one kept so far is: look at that one first. An
  -- XREVRANGE from the cutoff down costs time in proportion to the stream's length even when it finds
  -- nothing (measured: ~60 ns per entry, ~60 us per publish at 1,000 entries), so run it only when needed.
  local bound = string.format('%.0f', cutoff) .. '-0'
  local first = redis.call('XRANGE', key, deleted and ('(' .. deleted) or '-', '+', 'COUNT', 1)
  if first[1] and less(first[1][1], bound) then
    local aged = redis.call('XREVRANGE', key, '(' .. bound, '-', 'COUNT', 1)
    if aged[1] and (not deleted or less(deleted, aged[1][1])) then deleted = aged[1][1] end
  end
  if deleted then
    local ms, seq = parse(deleted)
    redis.call('XTRIM', key, 'MINID', fmt(ms, seq + 1))
    redis.call('XSETID', key, last, 'MAXDELETEDID', deleted)
  end
  return deleted
end

-- Publish one event: issue the next global id, store the event, trim, record the channel, notify.
-- Returns the id, or nil and the error text ("SSEHUB_CHANNEL_LIMIT ...") when a new channel would exceed
-- max_channels. publish.lua calls it once; publish_batch.lua once per event, in order, inside one script.
local function publish_event(k_last, k_floor, k_channels, k_stream, channel, event, data, maxlen, ttl, maxch,
                             notify, stream_prefix)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local cutoff = now - ttl

  local ms, seq = now, 0
  local last = redis.call('GET', k_last)
  if last then
    local lms, lseq = parse(last)
    if now <= lms then ms, seq = lms, lseq + 1 end
  end
  local id = fmt(ms, seq)
  local floor = redis.call('GET', k_floor)
  if not floor then
    floor = id
    redis.call('SET', k_floor, floor)
  end

  local is_new = redis.call('ZSCORE', k_channels, channel) == false
  if is_new and redis.call('ZCARD', k_channels) >= maxch then
    -- At the limit: drop channels whose last event is older than the ttl (their history is empty by now),
    -- raising the floor so that a client holding an older id is told it may have missed events on them.
    local idle = redis.call('ZRANGEBYSCORE', k_channels, '-inf', '(' .. string.format('%.0f', cutoff), 'LIMIT', 0, 256)
    for _, name in ipairs(idle) do
      local key = stream_prefix .. name
      if redis.call('EXISTS', key) == 1 then
        local gone = info_field(key, 'last-generated-id')
        if gone and less(floor, gone) then floor = gone end
        redis.call('DEL', key)
      end
      redis.call('ZREM', k_channels, name)
    end
    redis.call('SET', k_floor, floor)
    if redis.call('ZCARD', k_channels) >= maxch then
      return nil, 'SSEHUB_CHANNEL_LIMIT the broker already keeps ' .. string.format('%.0f', maxch) .. ' channels'
    end
  end

  local existed = redis.call('EXISTS', k_stream) == 1
  redis.call('XADD', k_stream, id, 'event', event, 'data', data)
  if existed then
    trim(k_stream, maxlen, cutoff, id)
  elseif less(floor, id) then
    -- A new stream starts at the floor: a client below it cannot know what this channel held before.
    redis.call('XSETID', k_stream, id, 'MAXDELETEDID', floor)
  end
  redis.call('ZADD', k_channels, now, channel)
  redis.call('SET', k_last, id)
  -- Last, after the event is in history: a subscriber never sees an event live that history lacks.
  redis.call('PUBLISH', notify, id .. '\n' .. event .. '\n' .. data)
  return id
end
