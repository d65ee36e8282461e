-- ssehub publish_batch: publish several events in one script call, each exactly as publish.lua would, in order.
-- KEYS[1] {p}:last-id  KEYS[2] {p}:floor  KEYS[3] {p}:channels  KEYS[3 + i] {p}:stream:<channel of event i>
-- ARGV[1] history size  ARGV[2] history ttl in ms  ARGV[3] max channels
-- ARGV[4] pub/sub channel prefix "{p}:notify:"  ARGV[5] stream key prefix "{p}:stream:"
-- ARGV[6 + 3(i-1)], ARGV[7 + 3(i-1)], ARGV[8 + 3(i-1)]: channel, event type, data of event i
-- Returns one string per event, in order: its id, or the error that refused it ("SSEHUB_CHANNEL_LIMIT ...",
-- or "SSEHUB_ERROR ..." for a Redis error raised while storing it). One event's failure never stops the
-- others: each is stored, trimmed and notified (one PUBLISH each, after its XADD) on its own, so
-- notifications still leave Redis in id order and subscribers read them as from publish.lua.

local maxlen, ttl, maxch = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local notify_prefix, stream_prefix = ARGV[4], ARGV[5]
local results = {}
for i = 1, #KEYS - 3 do
  local a = 6 + 3 * (i - 1)
  local channel = ARGV[a]
  local ok, id, err = pcall(publish_event, KEYS[1], KEYS[2], KEYS[3], KEYS[3 + i], channel, ARGV[a + 1],
                            ARGV[a + 2], maxlen, ttl, maxch, notify_prefix .. channel, stream_prefix)
  if not ok then
    -- redis.call raised (out of memory, a wrong key type): report it for this event and go on.
    local text = type(id) == 'table' and (id.err or id.ok) or tostring(id)
    results[i] = 'SSEHUB_ERROR ' .. tostring(text)
  elseif id then
    results[i] = id
  else
    results[i] = err
  end
end
return results
