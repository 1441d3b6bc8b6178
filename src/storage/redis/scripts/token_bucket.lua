-- Token bucket, shared by take_token.lua and push.lua: capacity, refill per millisecond, expiry in ms.
-- Returns 0 when a token was taken, else the milliseconds until one will be available. Uses the Redis
-- clock so instances need not agree.
local function take_token(key, cap, rate, ttl)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  cap = tonumber(cap)
  rate = tonumber(rate)
  local state = redis.call('HMGET', key, 't', 'at')
  local tokens = tonumber(state[1]) or cap
  local at = tonumber(state[2]) or now
  tokens = math.min(cap, tokens + math.max(0, now - at) * rate)
  local wait = 0
  if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) / rate) end
  redis.call('HSET', key, 't', tostring(tokens), 'at', tostring(now))
  redis.call('PEXPIRE', key, ttl)
  return wait
end
