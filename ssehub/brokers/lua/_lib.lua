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
  local aged = redis.call('XREVRANGE', key, '(' .. string.format('%.0f', cutoff) .. '-0', '-', 'COUNT', 1)
  if aged[1] and (not deleted or less(deleted, aged[1][1])) then deleted = aged[1][1] end
  if deleted then
    local ms, seq = parse(deleted)
    redis.call('XTRIM', key, 'MINID', fmt(ms, seq + 1))
    redis.call('XSETID', key, last, 'MAXDELETEDID', deleted)
  end
  return deleted
end
