-- ssehub head: the last issued id; on first use, start the id sequence at the server's clock.
-- KEYS[1] {p}:last-id  KEYS[2] {p}:floor
-- Storing the start id makes it a known id: a client given it as its position can resume from it, and
-- the next publish issues a greater id even within the same millisecond.
local last = redis.call('GET', KEYS[1])
if last then return last end
local t = redis.call('TIME')
local id = string.format('%.0f-0', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('SET', KEYS[1], id)
redis.call('SET', KEYS[2], id, 'NX')
return id
