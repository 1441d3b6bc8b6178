-- Notes a wakeup of a device (KEYS[1]) at level ARGV[1] (1 normal, 2 urgent) for ARGV[2] ms, unless a note
-- of the same or a higher level is there; returns 1 when it noted (the caller sends the wakeup).
local current = redis.call('GET', KEYS[1])
if current and tonumber(current) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
