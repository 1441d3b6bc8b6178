-- Deletes the envelopes of one queue (sorted set zkey, guid index ikey) that expired at `now` (ms since
-- the epoch), shared by push.lua and reap.lua. A member starts with its expiry (8 bytes, big-endian),
-- then the 16-byte guid. Returns how many were deleted; the keys vanish with their last entry.
local function purge_expired(zkey, ikey, now)
  local purged = 0
  for _, m in ipairs(redis.call('ZRANGE', zkey, 0, -1)) do
    local expiry = 0
    for k = 1, 8 do expiry = expiry * 256 + string.byte(m, k) end
    if expiry <= now then
      redis.call('ZREM', zkey, m)
      redis.call('HDEL', ikey, string.sub(m, 9, 24))
      purged = purged + 1
    end
  end
  return purged
end
