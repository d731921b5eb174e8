-- close.lua: end a campaign's sale window now, by Redis's clock, unless it ended before.
--
-- KEYS[1]  {vg:N.k}:c:<campaign>  hash: ..., starts, ends (milliseconds since the epoch)
--
-- Returns the window's end after the call, or nil when the campaign is not loaded (the caller
-- hydrates and calls again). A start after the new end moves to it: the window is then empty.
-- Calling it again changes nothing: the end only moves earlier, and ENDED is final.

if redis.call('EXISTS', KEYS[1]) == 0 then
    return nil
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local window = redis.call('HMGET', KEYS[1], 'starts', 'ends')
local ends = tonumber(window[2])
if not ends or now < ends then
    ends = now
    redis.call('HSET', KEYS[1], 'ends', string.format('%d', ends))
end
local starts = tonumber(window[1])
if starts and starts > ends then
    redis.call('HSET', KEYS[1], 'starts', string.format('%d', ends))
end
return ends
