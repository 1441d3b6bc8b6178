-- Adds a retry (ARGV[2]) due at ARGV[1] ms to the retry set (KEYS[1]) unless it holds ARGV[3] already;
-- the same retry twice is kept once. Returns 1 when it was added.
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
return 1
