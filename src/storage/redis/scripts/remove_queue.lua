-- Deletes a removed device's queue (KEYS 1, 2) and marks it removed (KEYS 3) in one step, so a push either
-- ran before (and its envelopes are deleted here) or runs after (and sees the mark). The mark outlives
-- any stale view of the account a sender could still act on.
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SET', KEYS[3], '1', 'PX', 86400000)
return 1
