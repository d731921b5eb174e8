-- ack.lua: acknowledge outbox entries the writer has committed to PostgreSQL, and delete them.
-- One script so the two steps cannot be separated (Redis 7.0 has no XACKDEL).
--
-- KEYS[1]  {vg:N}:outbox   ARGV[1] consumer group   ARGV[2..] entry ids
-- Returns the number of entries acknowledged.

local ids = {}
for i = 2, #ARGV do
    ids[#ids + 1] = ARGV[i]
end
local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
redis.call('XDEL', KEYS[1], unpack(ids))
return acked
