-- Removes and returns up to ARGV[2] retries of the set (KEYS[1]) due at ARGV[1] ms, as member, score, …:
-- one script, so each retry goes to exactly one caller.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[2])
for i = 1, #due, 2 do
  redis.call('ZREM', KEYS[1], due[i])
end
return due
