-- Fills a device's two one-time prekey pools from an import, once: the mark (KEYS[3]) says an import did
-- it before, and then nothing changes, so keys handed out since are never put back.
-- KEYS: EC pool, Kyber pool, import mark. ARGV: mark ttl ms, number of EC entries, then the EC entries,
-- then the Kyber entries. Returns the number of entries written, or -1 when the device was done before.
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local ec = tonumber(ARGV[2])
redis.call('DEL', KEYS[1], KEYS[2])
for i = 3, 2 + ec, 500 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 499, 2 + ec)))
end
for i = 3 + ec, #ARGV, 500 do
  redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[1])
return #ARGV - 2
