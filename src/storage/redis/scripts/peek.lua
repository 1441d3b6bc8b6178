-- Up to ARGV[2] entries of a queue (KEYS[1]) after sequence number ARGV[1], oldest first, with their scores.
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
