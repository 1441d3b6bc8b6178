-- KEYS: two buckets in one slot. ARGV: capacity, refill per millisecond and expiry of the first, then of
-- the second (see token_bucket.lua). Takes one token from the first and, only when it had one, one from
-- the second. Returns {0, 0}, or the bucket that refused (1 or 2) and the milliseconds until it has one.
local wait = take_token(KEYS[1], ARGV[1], ARGV[2], ARGV[3], 1)
if wait > 0 then return {1, wait} end
wait = take_token(KEYS[2], ARGV[4], ARGV[5], ARGV[6], 1)
if wait > 0 then return {2, wait} end
return {0, 0}
