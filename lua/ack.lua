-- ack.lua: acknowledge outbox entries the writer has committed to PostgreSQL, and delete them.
-- One script so the two steps cannot be separated (Redis 7.0 has no XACKDEL).
--
-- KEYS[1]  {vg:N}:outbox   ARGV[1] consumer group   ARGV[2..] entry ids, oldest first
-- Returns the number of entries acknowledged.
--
-- Every entry up to the batch's newest has been delivered (a group delivers in stream order), so
-- once acknowledged, all of them older than the oldest entry still pending are written. Those go
-- in one XTRIM MINID, which drops whole stream nodes; XDEL would look each id up from the start
-- of its node. Only the batch's entries past a still-pending older one (another writer's batch,
-- not committed yet) are deleted one by one.

local function parse(id)
    local ms, seq = string.match(id, '^(%d+)-(%d+)$')
    return tonumber(ms), tonumber(seq)
end

local function older(a, b)
    local a_ms, a_seq = parse(a)
    local b_ms, b_seq = parse(b)
    return a_ms < b_ms or (a_ms == b_ms and a_seq < b_seq)
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

-- Everything older than the bound is written: the newest id's successor, or the oldest entry still
-- pending when that is older.
local newest_ms, newest_seq = parse(ids[#ids])
local bound = newest_ms .. '-' .. string.format('%d', newest_seq + 1)
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1)[1]
if pending and older(pending[1], bound) then
    bound = pending[1]
    local rest = {}
    for _, id in ipairs(ids) do
        if not older(id, bound) then
            rest[#rest + 1] = id
        end
    end
    if #rest > 0 then
        redis.call('XDEL', KEYS[1], unpack(rest))
    end
end
redis.call('XTRIM', KEYS[1], 'MINID', bound)
return acked
