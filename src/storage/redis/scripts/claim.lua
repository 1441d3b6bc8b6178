-- Pops one key from each one-time prekey pool of a device (KEYS: EC pool, Kyber pool) in one round trip.
-- Each LPOP is atomic, so a key is never returned to two callers, on one Redis or a cluster (both lists
-- share the slot of their hash tag). An empty pool gives ''.
local ec = redis.call('LPOP', KEYS[1])
local kem = redis.call('LPOP', KEYS[2])
return {ec or '', kem or ''}
