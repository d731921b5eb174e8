-- hydrate.lua: load a campaign's state into Redis from what PostgreSQL and the outbox hold.
-- Called in two phases so that a campaign with a million holders loads in bounded chunks:
-- 'users' chunks first, then one 'commit' that makes the campaign visible to redeem.lua.
--
-- KEYS[1]  {vg:N.k}:c:<campaign>  hash: total, remaining, name, seq, and the sale window's
--                                 starts and ends (milliseconds since the epoch) when set
-- KEYS[2]  {vg:N.k}:u:<campaign>  hash: userId -> idempotencyKey
-- ARGV[1] = 'users'   ARGV[2..]: userId, idempotencyKey pairs
-- ARGV[1] = 'commit'  ARGV[2]: total  ARGV[3]: name  ARGV[4]: distinct holders the caller loaded
--                     ARGV[5]: the highest voucher number known given (the next one is above it)
--                     ARGV[6], ARGV[7]: the window's starts and ends, '' where open
--
-- Returns:
--   0  the campaign is already loaded (another gateway won); nothing written
--   1  done
--  -1  commit refused: fewer holders in Redis than the caller loaded (Redis lost them meanwhile);
--      the caller starts over
--
-- While the campaign hash is missing, redeem.lua answers NOT_LOADED and writes nothing, so the users
-- hash only ever receives true holders from here, and every concurrent hydrator writes the same set.

if redis.call('EXISTS', KEYS[1]) == 1 then
    return 0
end

if ARGV[1] == 'users' then
    for i = 2, #ARGV, 2 do
        redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    end
    return 1
end

local holders = redis.call('HLEN', KEYS[2])
if holders < tonumber(ARGV[4]) then
    return -1
end
local total = tonumber(ARGV[2])
local remaining = total - holders
if remaining < 0 then
    remaining = 0
end
redis.call('HSET', KEYS[1], 'total', total, 'remaining', remaining, 'name', ARGV[3],
    'seq', ARGV[5])
if ARGV[6] ~= '' then
    redis.call('HSET', KEYS[1], 'starts', ARGV[6])
end
if ARGV[7] ~= '' then
    redis.call('HSET', KEYS[1], 'ends', ARGV[7])
end
return 1
