-- redeem.lua: decide one redeem atomically and queue it for PostgreSQL.
--
-- KEYS[1]  {vg:N.k}:c:<campaign>  hash: total, remaining, name, seq (the last voucher number given),
--                                 and the sale window's starts and ends (milliseconds since the
--                                 epoch) when set
-- KEYS[2]  {vg:N.k}:u:<campaign>  hash: userId -> idempotencyKey of that user's redemption
-- KEYS[3]  {vg:N.k}:outbox        stream: one entry per voucher taken
-- ARGV[1]  campaign id          ARGV[2] userId          ARGV[3] idempotencyKey
--
-- Returns one integer, the voucher number of a new redemption or a code:
--   campaign state missing           ->  0 NOT_LOADED        (caller hydrates from PostgreSQL, retries)
--   users[userId] == key             -> -1 REDEEMED, replay  (the request that redeemed, again)
--   users[userId] exists, != key     -> -2 ALREADY_REDEEMED
--   remaining == 0                   -> -3 SOLD_OUT
--   now >= ends                      -> -4 ENDED
--   now < starts                     -> -1000 - (starts - now): NOT_STARTED, that many milliseconds
--                                       before the start; nothing recorded
--   otherwise                        -> seq REDEEMED: remaining -= 1, seq += 1, users[userId] = key,
--                                       XADD outbox r = "campaign\nuser\nkey\nseq"
--
-- The window is checked after the holder and stock checks, so every answer given stays the
-- answer: a replay is REDEEMED after the end too, SOLD_OUT never comes back (remaining never
-- grows), and ENDED is final (the end only moves earlier, and time only forwards). Only NOT_STARTED
-- changes, and it records nothing and is not a 200: the client retries after Retry-After. The
-- clock is Redis's (TIME, allowed before writes under effects replication), so every gateway
-- agrees to the millisecond.
--
-- Voucher numbers come from their own counter rather than from total - remaining: after Redis
-- lost state, hydration restarts the counter above every number it can see (in PostgreSQL, in the
-- outbox, and answered by the gateway that hydrates), so those numbers are not handed out again
-- and the ones lost with Redis stay visible as gaps (reconcile counts them).
--
-- An outbox entry is one field holding its four parts, separated by newlines (which user ids and
-- keys cannot contain): a writer decodes five reply values per entry where five fields took
-- thirteen, and Redis stores and sends less. The redemption's time is the entry id's milliseconds.
--
-- State only moves one way (remaining never grows, a user never leaves users), so the answer for a
-- (campaign, user, key) never changes once given: no per-key reply cache is needed. Everything is
-- read and checked before anything is written.

-- Five commands for a new redemption (six with a window), each a fixed cost inside a script: the
-- counters are read and written together.
local counters = redis.call('HMGET', KEYS[1], 'remaining', 'seq', 'starts', 'ends')
local remaining = counters[1]
if not remaining then
    return 0
end

local held = redis.call('HGET', KEYS[2], ARGV[2])
if held then
    if held == ARGV[3] then
        return -1
    end
    return -2
end

remaining = tonumber(remaining)
if remaining <= 0 then
    return -3
end

-- A campaign without a window pays nothing for it.
if counters[3] or counters[4] then
    local time = redis.call('TIME')
    local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
    if counters[4] and now >= tonumber(counters[4]) then
        return -4
    end
    if counters[3] and now < tonumber(counters[3]) then
        return -1000 - (tonumber(counters[3]) - now)
    end
end

-- Numbers are formatted as integers once: Lua turns a number into text with a "%.14g" (and
-- Redis an argument with "%.17g"), floating-point formatting many times slower.
local seq = (tonumber(counters[2]) or 0) + 1
local seq_text = string.format('%d', seq)
redis.call('HSET', KEYS[1], 'remaining', string.format('%d', remaining - 1), 'seq', seq_text)
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('XADD', KEYS[3], '*', 'r', ARGV[1] .. '\n' .. ARGV[2] .. '\n' .. ARGV[3] .. '\n' .. seq_text)
return seq
