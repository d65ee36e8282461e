-- ssehub cluster lost: after its connection to a shard came back, a hub checks that the shard still knows the
-- last id of it the hub delivered. If not, the old master issued ids that its replica never received and a
-- failover lost them: raise the order above them, so that no later id repeats one, and the floor to them, so
-- that a client at a position below them (it missed them, and they are gone) is told to reset.
-- ARGV[1] the shard's key prefix  ARGV[2] the last id of this shard the hub delivered
-- ARGV[3] the stream key of the channel that id belongs to ("" if unknown)
-- Returns 1 if history was lost, else 0.
local last_key, floor_key = ARGV[1] .. 'last-id', ARGV[1] .. 'floor'
local delivered = ARGV[2]
local last = redis.call('GET', last_key)
local floor = redis.call('GET', floor_key)
local known = false
if last and not less(last, delivered) then
  if floor and not less(floor, delivered) then
    known = true  -- at or below the floor: already treated as gone
  elseif ARGV[3] ~= '' and redis.call('EXISTS', ARGV[3]) == 1 then
    -- Replication is in order: if this id survived, every earlier id of the shard did.
    if #redis.call('XRANGE', ARGV[3], delivered, delivered) > 0 then
      known = true
    else
      local trimmed = info_field(ARGV[3], 'max-deleted-entry-id')
      known = trimmed ~= nil and not less(trimmed, delivered)
    end
  elseif ARGV[3] == '' then
    known = true  -- the hub delivered nothing of this shard yet: its position came from the head
  end
end
if known then return 0 end
if not last or less(last, delivered) then redis.call('SET', last_key, delivered) end
if not floor or less(floor, delivered) then redis.call('SET', floor_key, delivered) end
return 1
