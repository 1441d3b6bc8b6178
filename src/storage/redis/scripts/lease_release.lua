-- KEYS: the lease. ARGV: holder, token. Gives the lease up only while this grant still holds it, so a
-- holder whose lease expired cannot release its successor's; returns 1 when it did.
if redis.call('GET', KEYS[1]) == lease_value(ARGV[2], ARGV[1]) then
  return redis.call('DEL', KEYS[1])
end
return 0
