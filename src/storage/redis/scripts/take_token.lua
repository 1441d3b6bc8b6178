-- KEYS: the bucket. ARGV: capacity, refill per millisecond, expiry in ms (see token_bucket.lua), cost.
return take_token(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
