-- prune.lua: remove consumers of dead writers from the group. Every process start adds
-- consumers with new names, so without this the group's consumer list only grows.
--
-- KEYS[1]  {vg:N.k}:outbox   ARGV[1] consumer group   ARGV[2] idle ms   ARGV[3] the caller's name
-- Removes each other consumer idle for at least ARGV[2] ms that holds no pending entry, and
-- returns how many. Atomic, so a consumer cannot take an entry between the check and the
-- removal (XGROUP DELCONSUMER drops a consumer's pending entries with it).

local removed = 0
for _, fields in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
    local consumer = {}
    for i = 1, #fields, 2 do
        consumer[fields[i]] = fields[i + 1]
    end
    if consumer.pending == 0 and consumer.idle >= tonumber(ARGV[2])
        and consumer.name ~= ARGV[3] then
        redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], consumer.name)
        removed = removed + 1
    end
end
return removed
