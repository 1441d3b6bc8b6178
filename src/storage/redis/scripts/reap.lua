-- Deletes the expired envelopes of one queue (KEYS: zset, index) at ARGV[1] (ms since the epoch); returns
-- how many. Needs purge_expired.lua before it.
return purge_expired(KEYS[1], KEYS[2], tonumber(ARGV[1]))
