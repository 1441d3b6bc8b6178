-- Token bucket, shared by take_token.lua, peek_token.lua and push.lua: capacity, refill per millisecond,
-- expiry in ms, and for take_token the cost (tokens to take, 1 when absent). Both functions return 0 when
-- the tokens are there (take_token takes them), else the milliseconds until they will be. Uses the Redis
-- clock so instances need not agree.
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
local function take_token(key, cap, rate, ttl, cost)
  local now = bucket_now()
  cap = tonumber(cap)
  rate = tonumber(rate)
  cost = tonumber(cost) or 1
  local tokens = bucket_tokens(key, cap, rate, now)
  local wait = 0
  if tokens >= cost then tokens = tokens - cost else wait = math.ceil((cost - tokens) / rate) end
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
