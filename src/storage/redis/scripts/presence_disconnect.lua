-- Unmarks a device (KEYS[1]) only if the connection that marked it (ARGV[1]) is still the one named, so
-- the late goodbye of an older socket never unmarks a newer one. Returns 1 when it unmarked.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
