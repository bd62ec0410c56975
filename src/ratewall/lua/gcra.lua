-- gcra: twin of ratewall.algorithms.gcra.
-- state: {tat_us, remainder}: the theoretical arrival time is tat_us + remainder/rate µs.
-- `ahead` (in 1/rate µs) is how far it lies in the future; a request passes while ahead,
-- after it, is at most `capacity` emission intervals. Same decisions as token_bucket.
-- returns: allowed (0/1), remaining, reset_us, retry_us (-1 if allowed), new state or nil, ttl_us

local function gcra(state, now, cost, limit, window, capacity, rate, interval)
  local ahead = 0
  if #state == 2 and (state[1] > now or (state[1] == now and state[2] > 0)) then
    ahead = (state[1] - now) * rate + state[2]
  end
  local full = capacity * interval
  local after = ahead + cost * interval
  if after <= full then
    local q = idiv(after, rate)
    local reset = ceil_div(after, rate)
    return 1, idiv(full - after, interval), reset, -1, {now + q, after - q * rate}, reset
  end
  return 0, idiv(full - ahead, interval), ceil_div(ahead, rate), ceil_div(after - full, rate), nil, 0
end
