-- sliding_log: twin of ratewall.algorithms.sliding_log.
-- state: {t1, c1, t2, c2, ...} admitted costs and their times (µs), oldest first.
-- An entry admitted at t counts while now < t + window. Exact; O(limit) state.
-- returns: allowed (0/1), remaining, reset_us, retry_us (-1 if allowed), new state or nil, ttl_us

local function sliding_log(state, now, cost, limit, window, capacity, rate, interval)
  local size = #state
  local first = 1
  while first <= size and state[first] + window <= now do
    first = first + 2
  end
  local used = 0
  for i = first + 1, size, 2 do
    used = used + state[i]
  end
  if used + cost <= limit then
    local live = {}
    for i = first, size do
      live[#live + 1] = state[i]
    end
    if #live > 0 and live[#live - 1] == now then
      live[#live] = live[#live] + cost
    else
      live[#live + 1] = now
      live[#live + 1] = cost
    end
    return 1, limit - used - cost, window, -1, live, window
  end
  local reset = state[size - 1] + window - now
  local retry = reset
  local freed = 0
  for i = first, size, 2 do
    freed = freed + state[i + 1]
    if used - freed + cost <= limit then
      retry = state[i] + window - now
      break
    end
  end
  return 0, limit - used, reset, retry, nil, 0
end
