-- KEYS: the bucket. ARGV: capacity, refill per millisecond (see token_bucket.lua). Takes nothing.
return peek_token(KEYS[1], ARGV[1], ARGV[2])
