-- token_bucket: twin of ratewall.algorithms.token_bucket.
-- state: {level, last_us}; level counts tokens in units of 1/interval token, and each
-- microsecond refills `rate` units (limit/window reduced to rate/interval: exact).
-- Capacity `capacity` (burst) tokens; a bucket starts full.
-- returns: allowed (0/1), remaining, reset_us, retry_us (-1 if allowed), new state or nil, ttl_us

local function token_bucket(state, now, cost, limit, window, capacity, rate, interval)
  local full = capacity * interval
  local level, last
  if #state == 2 then
    level, last = state[1], state[2]
    if now > last then
      if now - last >= ceil_div(full - level, rate) then
        level = full
      else
        level = level + (now - last) * rate
      end
      last = now
    end
  else
    level, last = full, now
  end
  local need = cost * interval
  if level >= need then
    level = level - need
    local reset = ceil_div(full - level, rate)
    return 1, idiv(level, interval), reset, -1, {level, last}, reset
  end
  return 0, idiv(level, interval), ceil_div(full - level, rate), ceil_div(need - level, rate), nil, 0
end
