-- ack.lua: acknowledge outbox entries the writer has committed to PostgreSQL, and delete them.
-- One script so the two steps cannot be separated (Redis 7.0 has no XACKDEL).
--
-- KEYS[1]  {vg:N.k}:outbox   ARGV[1] consumer group   ARGV[2..] entry ids, oldest first
-- Returns the number of entries acknowledged.
--
-- A group delivers in stream order, so every entry older than the group's position has been
-- delivered, and once delivered and acknowledged it is written. Everything below a bound goes in
-- one XTRIM MINID, which drops whole stream nodes (XDEL would look each id up from the start of
-- its node). The bound is the lowest of: the batch's newest id's successor; the oldest entry
-- still pending (another writer's batch, not committed yet); the successor of the group's
-- position (after a rollback of Redis, a restart from an older AOF or a failover to a lagging
-- replica, the position can lie behind entries a writer still holds, and the entries between
-- were delivered to someone who may never store them). The batch's own entries at or past the
-- bound are deleted one by one.

local function parse(id)
    local ms, seq = string.match(id, '^(%d+)-(%d+)$')
    return tonumber(ms), tonumber(seq)
end

local function older(a, b)
    local a_ms, a_seq = parse(a)
    local b_ms, b_seq = parse(b)
    return a_ms < b_ms or (a_ms == b_ms and a_seq < b_seq)
end

local function successor(id)
    local ms, seq = parse(id)
    return ms .. '-' .. string.format('%d', seq + 1)
end

local ids = {}
for i = 2, #ARGV do
    ids[#ids + 1] = ARGV[i]
end
local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
if acked == 0 then
    -- Acknowledged and deleted already (by a writer that claimed them), or the stream is gone.
    return 0
end

local bound = successor(ids[#ids])
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local fields = {}
    for i = 1, #group, 2 do
        fields[group[i]] = group[i + 1]
    end
    if fields['name'] == ARGV[1] then
        local position = successor(fields['last-delivered-id'])
        if older(position, bound) then
            bound = position
        end
    end
end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1)[1]
if pending and older(pending[1], bound) then
    bound = pending[1]
end
local rest = {}
for _, id in ipairs(ids) do
    if not older(id, bound) then
        rest[#rest + 1] = id
    end
end
if #rest > 0 then
    redis.call('XDEL', KEYS[1], unpack(rest))
end
redis.call('XTRIM', KEYS[1], 'MINID', bound)
return acked
