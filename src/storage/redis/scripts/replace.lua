-- Replaces one pool (KEYS[1]) with the entries in ARGV, pushed in chunks that stay below Lua's limit on
-- unpacked arguments.
redis.call('DEL', KEYS[1])
for i = 1, #ARGV, 500 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
return #ARGV
