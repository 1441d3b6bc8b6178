-- Queues one envelope per listed device of an account, all or nothing, takes the sender's rate-limit
-- token in the same step and publishes each envelope on its device's channel with its queue position (a
-- `Queued` bus event: byte 4, the position in decimal, ':', the member): one round trip per send. Needs
-- token_bucket.lua and purge_expired.lua before it.
--
-- KEYS: counter, rate bucket (ignored when ARGV[4] is empty), then (zset, index, removal mark) per device.
-- ARGV: max length, queue ttl ms, counter ttl ms, bucket capacity (or ''), refill per ms, bucket ttl ms,
-- then (member, guid, channel) per device.
-- Returns {0, 0} when queued, {1, wait ms} when rate limited, {2, i} when the i-th device's queue is full,
-- {3, i} when the i-th device (in the incarnation its removal mark names) was removed; in every case but
-- the first nothing is queued. A queue at its limit is first purged of expired envelopes, so expired
-- envelopes never make a sender see `queue_full`.
local max = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local n = (#KEYS - 2) / 3
for i = 1, n do
  if redis.call('EXISTS', KEYS[2 + 3 * i]) == 1 then return {3, i} end
end
if ARGV[4] ~= '' then
  local wait = take_token(KEYS[2], ARGV[4], ARGV[5], ARGV[6])
  if wait > 0 then return {1, wait} end
end
for i = 1, n do
  if redis.call('ZCARD', KEYS[3 * i]) >= max then
    local t = redis.call('TIME')
    purge_expired(KEYS[3 * i], KEYS[1 + 3 * i], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
    if redis.call('ZCARD', KEYS[3 * i]) >= max then return {2, i} end
  end
end
local seqs = {}
for i = 1, n do
  local seq = redis.call('INCR', KEYS[1])
  seqs[i] = seq
  redis.call('ZADD', KEYS[3 * i], seq, ARGV[4 + 3 * i])
  redis.call('HSET', KEYS[1 + 3 * i], ARGV[5 + 3 * i], seq)
  if redis.call('PTTL', KEYS[3 * i]) < ttl then
    redis.call('PEXPIRE', KEYS[3 * i], ttl)
    redis.call('PEXPIRE', KEYS[1 + 3 * i], ttl)
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
for i = 1, n do
  redis.call('PUBLISH', ARGV[6 + 3 * i], '\4' .. seqs[i] .. ':' .. ARGV[4 + 3 * i])
end
return {0, 0}
