-- KEYS: the lease. ARGV: holder, token, ttl ms. Extends the lease only while this grant still holds it;
-- returns 1 when it did.
if redis.call('GET', KEYS[1]) == lease_value(ARGV[2], ARGV[1]) then
  return redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 0
