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
-- The steps are publish_event in _lib.lua (shared with publish_batch.lua).

local id, err = publish_event(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3],
                              tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], ARGV[8])
if not id then return redis.error_reply(err) end
return id
