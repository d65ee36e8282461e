-- ssehub cluster head: a shard's last issued id; on first use, start its order at the server's clock.
-- ARGV[1] the shard's key prefix "{<anchor tag>}:<p>:" (no declared keys; routed to the shard's master).
local last_key, floor_key = ARGV[1] .. 'last-id', ARGV[1] .. 'floor'
local last = redis.call('GET', last_key)
if last then return last end
local t = redis.call('TIME')
local id = string.format('%.0f-0', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('SET', last_key, id)
redis.call('SET', floor_key, id, 'NX')
return id
