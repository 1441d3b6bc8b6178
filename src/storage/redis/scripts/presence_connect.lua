-- Marks a device (KEYS[1]) as connected through connection ARGV[1] for ARGV[2] ms, unless a newer
-- connection marked it: a late renewal from a displaced socket must not hide the socket that replaced it.
-- Connection ids are decimal numbers that grow with time; compared as text (longer is larger), since
-- Lua's numbers cannot hold 64 bits exactly. Returns 1 when it marked.
local current = redis.call('GET', KEYS[1])
if current and (#current > #ARGV[1] or (#current == #ARGV[1] and current > ARGV[1])) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
