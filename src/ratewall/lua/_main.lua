-- ratewall decision script (this file is concatenated last, after the algorithms).
--
-- KEYS: one key per decision, e.g. ratelimit:{user_123}:login (all in one hash slot on a
--       cluster: callers group decisions by slot).
-- ARGV[1]: now in µs, or "" to read the server's clock (TIME). Tests inject a time.
-- ARGV[2 + 9*(i-1) ...] for KEYS[i]: op (0 check, 1 peek, 2 reset), group, cost,
--       algorithm code (0 fixed_window, 1 sliding_window, 2 sliding_log, 3 token_bucket,
--       4 gcra), limit, window_us, capacity, rate, interval (see ratewall.algorithms.Rule).
-- Groups: consecutive keys with the same group number are one request checked against
--       several policies, all or nothing: their new states are written only if every one
--       of them is allowed. A key may appear twice in a group; the second sees the first.
-- Reply: one array per key, in order: {allowed 0/1, remaining, reset_us, retry_us (-1 if
--       allowed), now_us, state...}. When a group is refused, every member's reply is
--       followed by its stored state (integers, for the caller's local deny cache), and
--       members marked allowed were not consumed. A reset replies {1, 0, 0, -1, now_us}.
-- Units: µs everywhere; TTLs are set in ms (rounded up, at least 1) with every write, in
-- this same atomic call, so no key ever lives without a TTL.

local ALGORITHMS = {[0] = fixed_window, sliding_window, sliding_log, token_bucket, gcra}
local STRIDE = 9

local now
if ARGV[1] == "" then
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end

local function load_state(key)
  local raw = redis.call("GET", key)
  local state = {}
  if raw then
    for part in string.gmatch(raw, "[^:]+") do
      state[#state + 1] = tonumber(part)
    end
  end
  return state
end

local function encode(values)
  local parts = {}
  for i = 1, #values do
    parts[i] = string.format("%.0f", values[i])
  end
  return table.concat(parts, ":")
end

-- Decides KEYS[first..last], one group; returns nothing, fills `replies`.
local function run_group(first, last, replies)
  local pending, order, ttls, loaded, before = {}, {}, {}, {}, {}
  local all_allowed = true
  for i = first, last do
    local base = 2 + (i - 1) * STRIDE
    local op = tonumber(ARGV[base])
    local key = KEYS[i]
    if op == 2 then
      redis.call("DEL", key)
      pending[key] = nil
      replies[i] = {1, 0, 0, -1, now}
    else
      local algorithm = ALGORITHMS[tonumber(ARGV[base + 3])]
      if algorithm == nil then
        error("ratewall: unknown algorithm code " .. tostring(ARGV[base + 3]))
      end
      if loaded[key] == nil then loaded[key] = load_state(key) end
      local state = pending[key] or loaded[key]
      local allowed, remaining, reset, retry, new_state, ttl = algorithm(
        state, now, tonumber(ARGV[base + 2]), tonumber(ARGV[base + 4]), tonumber(ARGV[base + 5]),
        tonumber(ARGV[base + 6]), tonumber(ARGV[base + 7]), tonumber(ARGV[base + 8]))
      before[i] = loaded[key]
      replies[i] = {allowed, remaining, reset, retry, now}
      if allowed == 0 then
        all_allowed = false
      elseif op == 0 and new_state ~= nil then
        if pending[key] == nil then order[#order + 1] = key end
        pending[key] = new_state
        ttls[key] = ttl
      end
    end
  end
  if all_allowed then
    for _, key in ipairs(order) do
      if pending[key] ~= nil then
        redis.call("SET", key, encode(pending[key]), "PX", math.max(1, ceil_div(ttls[key], 1000)))
      end
    end
  else
    for i = first, last do
      local state = before[i]
      if state ~= nil then
        for j = 1, #state do
          replies[i][5 + j] = state[j]
        end
      end
    end
  end
end

local replies = {}
local first = 1
while first <= #KEYS do
  local group = ARGV[2 + (first - 1) * STRIDE + 1]
  local last = first
  while last < #KEYS and ARGV[2 + last * STRIDE + 1] == group do
    last = last + 1
  end
  run_group(first, last, replies)
  first = last + 1
end
return replies
