-- ratewall decision script (this file is concatenated last, after the algorithms).
--
-- KEYS: one key per call, e.g. ratelimit:{user_123}:login (all in one hash slot on a
--       cluster: callers group calls by slot).
-- ARGV[1]: now in µs, or "" to read the server's clock (TIME). Tests inject a time.
-- ARGV[2]: R, the number of distinct rules in this call; then R rules of 6 values each:
--       algorithm code (0 fixed_window, 1 sliding_window, 2 sliding_log, 3 token_bucket,
--       4 gcra), limit, window_us, capacity, rate, interval (ratewall.algorithms.Rule).
-- Then 4 values per KEYS[i]: op (0 check, 1 peek, 2 reset), group, cost, rule index (1..R).
-- Groups: consecutive keys with the same group number are one request checked against
--       several policies, all or nothing: their new states are kept only if every one of
--       them is allowed. Groups are decided in order; each sees the ones before it.
-- Reply: one array per key, in order: {allowed 0/1, remaining, reset_us, retry_us (-1 if
--       allowed), now_us, state...}. When a group is refused, every member's reply is
--       followed by its state before the group (integers, for the caller's local deny
--       cache), and members marked allowed were not consumed. A reset replies
--       {1, 0, 0, -1, now_us}.
-- Writes: each key changed by the call is written once, at the end, with its final state
--       (see encode below) and a TTL (ms, rounded up, at least 1) in the same SET: no key ever lives without a
--       TTL, and a hot key decided 64 times in one call costs one GET and one SET.
-- Units: µs everywhere except the TTL.

local ALGORITHMS = {[0] = fixed_window, sliding_window, sliding_log, token_bucket, gcra}

local now
if ARGV[1] == "" then
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end

local rules = {}
local rule_count = tonumber(ARGV[2])
for r = 1, rule_count do
  local base = 3 + (r - 1) * 6
  local algorithm = ALGORITHMS[tonumber(ARGV[base])]
  if algorithm == nil then
    error("ratewall: unknown algorithm code " .. tostring(ARGV[base]))
  end
  rules[r] = {algorithm, tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]),
              tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4]), tonumber(ARGV[base + 5])}
end
local CALLS = 3 + rule_count * 6

-- The state of every key touched, as of the groups decided so far, and its algorithm.
local states, ttls, dirty, algorithms = {}, {}, {}, {}

-- Values are compact: a letter naming the algorithm, then the state's integers in base 36,
-- separated by ":" (fixed window "F5:hbsyv2q8xs"). A value written by another algorithm
-- (the policy was changed) or in another format counts as no state at all.
local TAGS = {[fixed_window] = "F", [sliding_window] = "S", [sliding_log] = "L",
              [token_bucket] = "T", [gcra] = "G"}
local DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"

local function base36(n)
  if n == 0 then return "0" end
  local out = {}
  while n > 0 do
    local digit = n % 36
    out[#out + 1] = string.sub(DIGITS, digit + 1, digit + 1)
    n = (n - digit) / 36
  end
  return string.reverse(table.concat(out))
end

local function current(key, algorithm)
  local state = states[key]
  if state == nil then
    state = {}
    local raw = redis.call("GET", key)
    if raw and string.sub(raw, 1, 1) == TAGS[algorithm] then
      for part in string.gmatch(string.sub(raw, 2), "[^:]+") do
        state[#state + 1] = tonumber(part, 36)
      end
    end
    states[key] = state
  end
  return state
end

local function encode(values, algorithm)
  local parts = {}
  for i = 1, #values do
    parts[i] = base36(values[i])
  end
  return TAGS[algorithm] .. table.concat(parts, ":")
end

-- Decides KEYS[first..last], one group, filling `replies`.
local function run_group(first, last, replies)
  local pending, pending_ttl, order, before = {}, {}, {}, {}
  local all_allowed = true
  for i = first, last do
    local base = CALLS + (i - 1) * 4
    local op = tonumber(ARGV[base])
    local key = KEYS[i]
    if op == 2 then
      redis.call("DEL", key)
      states[key], ttls[key], pending[key] = {}, nil, nil
      replies[i] = {1, 0, 0, -1, now}
    else
      local rule = rules[tonumber(ARGV[base + 3])]
      local stored = current(key, rule[1])
      algorithms[key] = rule[1]
      local allowed, remaining, reset, retry, new_state, ttl = rule[1](
        pending[key] or stored, now, tonumber(ARGV[base + 2]),
        rule[2], rule[3], rule[4], rule[5], rule[6])
      before[i] = stored
      replies[i] = {allowed, remaining, reset, retry, now}
      if allowed == 0 then
        all_allowed = false
      elseif op == 0 and new_state ~= nil then
        if pending[key] == nil then order[#order + 1] = key end
        pending[key], pending_ttl[key] = new_state, ttl
      end
    end
  end
  if all_allowed then
    for _, key in ipairs(order) do
      if pending[key] ~= nil then
        if ttls[key] == nil then dirty[#dirty + 1] = key end
        states[key], ttls[key] = pending[key], pending_ttl[key]
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
  local group = ARGV[CALLS + (first - 1) * 4 + 1]
  local last = first
  while last < #KEYS and ARGV[CALLS + last * 4 + 1] == group do
    last = last + 1
  end
  run_group(first, last, replies)
  first = last + 1
end

for _, key in ipairs(dirty) do
  if ttls[key] ~= nil then
    redis.call("SET", key, encode(states[key], algorithms[key]), "PX",
               math.max(1, ceil_div(ttls[key], 1000)))
  end
end
return replies
