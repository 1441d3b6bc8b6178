-- Deletes the envelopes whose guids are in ARGV from a queue (KEYS: zset, index); returns how many were there.
local deleted = 0
for _, guid in ipairs(ARGV) do
  local seq = redis.call('HGET', KEYS[2], guid)
  if seq then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], seq, seq)
    redis.call('HDEL', KEYS[2], guid)
    deleted = deleted + 1
  end
end
return deleted
