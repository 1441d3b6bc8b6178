-- What a held lease's key holds: the grant's fencing token and its holder, so that only that grant can
-- renew or release it. Shared by the three lease scripts.
local function lease_value(token, holder)
  return token .. ' ' .. holder
end
