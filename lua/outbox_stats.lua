-- outbox_stats.lua: how far one outbox shard's writers are behind, for /metrics and /ready.
--
-- KEYS[1]  {vg:N.k}:outbox   ARGV[1] consumer group
-- Returns {now_ms, length, pending, oldest_pending_ms, oldest_ms, added}: Redis's clock (the clock
-- that stamped the entry ids, so ages need no other clock), the entries in the stream, the entries
-- read by a writer and not yet acknowledged, the id times of the oldest pending entry and of the
-- oldest entry (acknowledged entries are deleted, so that is the oldest unwritten one), -1 where
-- there is none, and the entries ever added to the stream (so added - length have left it:
-- stored, or dead-lettered). A stream or group not created yet counts as empty.

local function id_ms(id)
    return tonumber(string.match(id, '^(%d+)-'))
end

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local length = redis.call('XLEN', KEYS[1])
local pending, oldest_pending_ms = 0, -1
local ok, summary = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1])
if ok then
    pending = summary[1]
    if summary[2] then
        oldest_pending_ms = id_ms(summary[2])
    end
end
local oldest_ms = -1
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if first[1] then
    oldest_ms = id_ms(first[1][1])
end
local added = 0
local has_info, info = pcall(redis.call, 'XINFO', 'STREAM', KEYS[1])
if has_info then
    for i = 1, #info, 2 do
        if info[i] == 'entries-added' then
            added = info[i + 1]
        end
    end
end
return {now_ms, length, pending, oldest_pending_ms, oldest_ms, added}
