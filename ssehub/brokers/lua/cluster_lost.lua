-- ssehub cluster lost: a hub delivered ids of this shard that its (new) master does not have: the old master
-- issued them and failed before they were replicated. Raise the order above them, so that no later id
-- repeats one, and the floor to them, so that a client at a position below them is told to reset.
-- ARGV[1] the shard's key prefix  ARGV[2] the greatest id of this shard the hub delivered
-- Returns 1 if history was lost (the head was below ARGV[2]), else 0.
local last_key, floor_key = ARGV[1] .. 'last-id', ARGV[1] .. 'floor'
local last = redis.call('GET', last_key)
if last and not less(last, ARGV[2]) then return 0 end
redis.call('SET', last_key, ARGV[2])
local floor = redis.call('GET', floor_key)
if not floor or less(floor, ARGV[2]) then redis.call('SET', floor_key, ARGV[2]) end
return 1
