-- repair.lua: make one campaign's Redis state agree with PostgreSQL, atomically, while redeems
-- keep running: no redeem sees a half-repaired campaign.
--
-- KEYS[1]  {vg:N.k}:c:<campaign>  hash: total, remaining, name, seq, starts, ends
-- KEYS[2]  {vg:N.k}:u:<campaign>  hash: userId -> idempotencyKey
-- ARGV[1]  total (PostgreSQL's)
-- ARGV[2]  the highest voucher number PostgreSQL knows given
-- ARGV[3], ARGV[4]   the sale window both sides agree on: starts and ends, '' where open
-- ARGV[5]  n, the number of holders to set
-- ARGV[6 .. 5+2n]    userId, idempotencyKey pairs PostgreSQL holds: set in Redis
-- ARGV[6+2n ..]      userId, idempotencyKey pairs PostgreSQL refused and holds nothing for:
--                    removed from Redis if Redis still holds exactly that key
--
-- Then remaining = total - holders (never below 0), and the voucher numbering continues above
-- both its own counter and PostgreSQL's. Returns {remaining, holders}, or {} when the campaign
-- is not loaded (it then hydrates from PostgreSQL on first use, which needs no repair).

if redis.call('EXISTS', KEYS[1]) == 0 then
    return {}
end

local set_count = tonumber(ARGV[5])
local first_removal = 6 + 2 * set_count
for i = 6, first_removal - 1, 2 do
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
for i = first_removal, #ARGV, 2 do
    if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[i + 1] then
        redis.call('HDEL', KEYS[2], ARGV[i])
    end
end

local total = tonumber(ARGV[1])
local holders = redis.call('HLEN', KEYS[2])
local remaining = math.max(total - holders, 0)
local seq = math.max(tonumber(redis.call('HGET', KEYS[1], 'seq') or '0'), tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'total', total, 'remaining', remaining, 'seq', seq)
for i, field in ipairs({'starts', 'ends'}) do
    if ARGV[2 + i] == '' then
        redis.call('HDEL', KEYS[1], field)
    else
        redis.call('HSET', KEYS[1], field, ARGV[2 + i])
    end
end
return {remaining, holders}
