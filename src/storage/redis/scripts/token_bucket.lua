-- Token bucket, shared by take_token.lua, peek_token.lua and push.lua: capacity, refill per millisecond,
-- expiry in ms. Both functions return 0 when a token is there (take_token takes it), else the milliseconds
-- until one will be. Uses the Redis clock so instances need not agree.
local function bucket_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function bucket_tokens(key, cap, rate, now)
  local state = redis.call('HMGET', key, 't', 'at')
  local tokens = tonumber(state[1]) or cap
  local at = tonumber(state[2]) or now
  return math.min(cap, tokens + math.max(0, now - at) * rate)
end
local function take_token(key, cap, rate, ttl)
  local now = bucket_now()
  cap = tonumber(cap)
  rate = tonumber(rate)
  local tokens = bucket_tokens(key, cap, rate, now)
  local wait = 0
  if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) / rate) end
  redis.call('HSET', key, 't', tostring(tokens), 'at', tostring(now))
  redis.call('PEXPIRE', key, ttl)
  return wait
end
local function peek_token(key, cap, rate)
  cap = tonumber(cap)
  rate = tonumber(rate)
  local tokens = bucket_tokens(key, cap, rate, bucket_now())
  if tokens >= 1 then return 0 end
  return math.ceil((1 - tokens) / rate)
end
