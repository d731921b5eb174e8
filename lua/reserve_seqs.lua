-- reserve_seqs.lua: reserve voucher numbers from a loaded campaign's counter, for holders
-- reconcile writes to PostgreSQL. Never creates the campaign hash: a hash without `remaining`
-- would look loaded to hydration and unloaded to redeems.
--
-- KEYS[1]  {vg:N.k}:c:<campaign>   ARGV[1]  how many numbers
-- Returns the last number reserved (the first is that minus ARGV[1] plus one), or nil when the
-- campaign is not loaded.

if redis.call('EXISTS', KEYS[1]) == 0 then
    return nil
end
return redis.call('HINCRBY', KEYS[1], 'seq', ARGV[1])
