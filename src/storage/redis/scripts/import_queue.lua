-- Queues imported envelopes for one device, each once: an envelope whose guid the index already holds is
-- skipped, and once the last batch is in, the mark (KEYS[4]) makes any later import of the device a no-op
-- (envelopes acknowledged since are never queued again).
-- KEYS: account counter, zset, index, import mark. ARGV: counter ttl ms, mark ttl ms, 1 when this is the
-- last batch, then (member, guid, ttl ms) per envelope. Returns the number queued, or -1 when done before.
if redis.call('EXISTS', KEYS[4]) == 1 then return -1 end
local queued = 0
for i = 4, #ARGV, 3 do
  if redis.call('HEXISTS', KEYS[3], ARGV[i + 1]) == 0 then
    local seq = redis.call('INCR', KEYS[1])
    redis.call('ZADD', KEYS[2], seq, ARGV[i])
    redis.call('HSET', KEYS[3], ARGV[i + 1], seq)
    queued = queued + 1
  end
  local ttl = tonumber(ARGV[i + 2])
  if redis.call('PTTL', KEYS[2]) < ttl then
    redis.call('PEXPIRE', KEYS[2], ttl)
    redis.call('PEXPIRE', KEYS[3], ttl)
  end
end
if queued > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if ARGV[3] == '1' then redis.call('SET', KEYS[4], '1', 'PX', ARGV[2]) end
return queued
