-- ratewall decision script (this file is concatenated last, after the algorithms).
--
-- KEYS: one key per decision, e.g. ratelimit:{user_123}:login (all in one hash slot on a
--       cluster: callers group decisions by slot).
-- ARGV[1]: now in µs, or "" to read the server's clock (TIME). Tests inject a time.
-- ARGV[2 + 8*(i-1) ...] for KEYS[i]: op (0 check, 1 peek, 2 reset), cost, algorithm
--       code (0 fixed_window, 1 sliding_window, 2 sliding_log, 3 token_bucket, 4 gcra),
--       limit, window_us, capacity, rate, interval (see ratewall.algorithms.Rule).
-- Reply: one array per key, in order: {allowed 0/1, remaining, reset_us, retry_us (-1 if
--       allowed), now_us, state...}; state (the stored integers) follows only on refusal,
--       for the caller's local deny cache. A reset replies {1, 0, 0, -1, now_us}.
-- Units: µs everywhere; TTLs are set in ms (rounded up, at least 1) with every write, in
-- this same atomic call, so no key ever lives without a TTL.

local ALGORITHMS = {[0] = fixed_window, sliding_window, sliding_log, token_bucket, gcra}
local STRIDE = 8

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

local replies = {}
for i = 1, #KEYS do
  local base = 2 + (i - 1) * STRIDE
  local op = tonumber(ARGV[base])
  local key = KEYS[i]
  if op == 2 then
    redis.call("DEL", key)
    replies[i] = {1, 0, 0, -1, now}
  else
    local algorithm = ALGORITHMS[tonumber(ARGV[base + 2])]
    if algorithm == nil then
      return redis.error_reply("ratewall: unknown algorithm code " .. tostring(ARGV[base + 2]))
    end
    local state = load_state(key)
    local allowed, remaining, reset, retry, new_state, ttl = algorithm(
      state, now, tonumber(ARGV[base + 1]), tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4]),
      tonumber(ARGV[base + 5]), tonumber(ARGV[base + 6]), tonumber(ARGV[base + 7]))
    if op == 0 and new_state ~= nil then
      redis.call("SET", key, encode(new_state), "PX", math.max(1, ceil_div(ttl, 1000)))
    end
    local reply = {allowed, remaining, reset, retry, now}
    if allowed == 0 then
      for j = 1, #state do
        reply[#reply + 1] = state[j]
      end
    end
    replies[i] = reply
  end
end
return replies
