-- sliding_window: twin of ratewall.algorithms.sliding_window.
-- state: {previous, current, start_us}. The previous window's count is weighted by its
-- remaining overlap at millisecond resolution: used = previous*(w - elapsed)/w + current.
-- returns: allowed (0/1), remaining, reset_us, retry_us (-1 if allowed), new state or nil, ttl_us

local function sliding_retry(previous, current, start, now, cost, limit, window)
  local w = idiv(window, 1000)
  local needed = current + cost
  if needed <= limit and previous > 0 then
    local elapsed = w - idiv((limit - needed) * w, previous)
    if elapsed < w then
      return start + elapsed * 1000 - now
    end
  end
  if current == 0 then
    return start + window - now
  end
  local elapsed = w - idiv((limit - cost) * w, current)
  if elapsed < w then
    return start + window + elapsed * 1000 - now
  end
  return start + 2 * window - now
end

local function sliding_window(state, now, cost, limit, window, capacity, rate, interval)
  local previous, current, start
  if #state == 3 then
    previous, current, start = state[1], state[2], state[3]
    if now >= start + window then
      -- Two or more windows later nothing is left: start afresh, as if the key were gone.
      if now < start + 2 * window then
        previous, start = current, start + window
      else
        previous, start = 0, now
      end
      current = 0
    end
  else
    previous, current, start = 0, 0, now
  end
  local w = idiv(window, 1000)
  local elapsed = idiv(math.max(0, now - start), 1000)
  local weighted = previous * (w - elapsed)
  local full = limit * w
  if weighted + (current + cost) * w <= full then
    current = current + cost
    local reset = start + 2 * window - now
    return 1, idiv(full - weighted - current * w, w), reset, -1, {previous, current, start}, reset
  end
  local remaining = math.max(0, idiv(full - weighted - current * w, w))
  local reset
  if current > 0 then reset = start + 2 * window - now else reset = start + window - now end
  return 0, remaining, reset, sliding_retry(previous, current, start, now, cost, limit, window), nil, 0
end
