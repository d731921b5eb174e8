-- dead_letter.lua: move outbox entries that can never be stored to the shard's dead-letter
-- stream, and out of the outbox and its pending list, in one step: an entry is never in both
-- streams, nor in neither.
--
-- KEYS[1]  {vg:N.k}:outbox   KEYS[2]  {vg:N.k}:dead   ARGV[1] consumer group
-- ARGV[2..] entry id, reason pairs
-- Each dead letter holds the fields `id` (the outbox entry's id) and `reason`, then the entry's
-- own fields, each name prefixed with `f:`. An id no longer in the outbox (moved or stored by
-- another writer meanwhile) is only acknowledged.
-- Returns the number of entries moved.

local moved = 0
for i = 2, #ARGV, 2 do
    local id, reason = ARGV[i], ARGV[i + 1]
    local entry = redis.call('XRANGE', KEYS[1], id, id)[1]
    if entry then
        local fields = {'id', id, 'reason', reason}
        local own = entry[2]
        for j = 1, #own, 2 do
            fields[#fields + 1] = 'f:' .. own[j]
            fields[#fields + 1] = own[j + 1]
        end
        redis.call('XADD', KEYS[2], '*', unpack(fields))
        redis.call('XDEL', KEYS[1], id)
        moved = moved + 1
    end
    redis.call('XACK', KEYS[1], ARGV[1], id)
end
return moved
