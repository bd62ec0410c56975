-- fixed_window: twin of ratewall.algorithms.fixed_window.
-- state: {count, end_us}. The window opens at the identity's first request.
-- returns: allowed (0/1), remaining, reset_us, retry_us (-1 if allowed), new state or nil, ttl_us

local function fixed_window(state, now, cost, limit, window, capacity, rate, interval)
  local count, window_end
  if #state == 2 and now < state[2] then
    count, window_end = state[1], state[2]
  else
    count, window_end = 0, now + window
  end
  local left = window_end - now
  if count + cost <= limit then
    count = count + cost
    return 1, limit - count, left, -1, {count, window_end}, left
  end
  return 0, limit - count, left, left, nil, 0
end
