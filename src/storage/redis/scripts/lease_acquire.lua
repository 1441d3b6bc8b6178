-- KEYS: the lease, its fence counter. ARGV: holder, ttl ms. Grants the lease when nobody holds it, under
-- the next token of the counter (which never expires, so tokens only grow); returns the token, or nil.
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local token = redis.call('INCR', KEYS[2])
if redis.call('SET', KEYS[1], lease_value(token, ARGV[1]), 'NX', 'PX', ARGV[2]) then
  return token
end
return false
