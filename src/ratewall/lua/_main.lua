-- ratewall decision script (this file is concatenated last, after the algorithms).
--
-- KEYS: one key per call, e.g. ratelimit:{user_123}:login (all in one hash slot on a
--       cluster: callers group calls by slot).
-- ARGV[1]: now in µs, or "" to read the server's clock (TIME). Tests inject a time.
-- ARGV[2]: R, the number of distinct rules in this call; then R rules, one value each: 7
--       decimal integers joined by ":", algorithm code (0 fixed_window, 1 sliding_window,
--       2 sliding_log, 3 token_bucket, 4 gcra), limit, window_us, capacity, rate, interval,
--       lease (ratewall.algorithms.Rule). A rule's text is the same on every call, so it is
--       parsed once per loaded library (read_rule).
-- Then 4 values per KEYS[i]: op (0 check, 1 peek, 2 reset, 3 lease), group, cost, rule
--       index (1..R). A lease is a check that also takes up to `lease - cost` more units, at
--       most half of what would remain (ratewall.algorithms.lease); it is alone in its group.
-- Groups: consecutive keys with the same group number are one request checked against
--       several policies, all or nothing: their new states are kept only if every one of
--       them is allowed. Groups are decided in order; each sees the ones before it. Only
--       neighbours' group numbers are compared, so numbers may repeat: callers send the
--       request's parity (0, 1, 0, ...), which lets them cache each call's arguments.
-- Reply: one array per key, in order: {allowed 0/1, remaining, reset_us, retry_us (-1 if
--       allowed), now_us}. When a group is refused, every member's reply is followed by its
--       state before the group (integers, for the caller's local deny cache), and members
--       marked allowed were not consumed. An allowed lease is followed by the units granted
--       (remaining and reset_us are after taking them). A reset replies {1, 0, 0, -1, now_us}.
-- Writes: each key changed by the call is written once, at the end, with its final state
--       (see encode below) and a TTL (ms, rounded up, at least 1) in the same SET: no key
--       ever lives without a TTL, and a hot key decided 64 times in one call costs one GET
--       and one SET. Sliding logs are lists (sliding_log.lua): at most one LTRIM, LSET and
--       RPUSH each, then PEXPIRE.
-- Units: µs everywhere except the TTL.

-- The sliding log keeps a list, not a state tuple: its algorithm is the log's own decide.
local ALGORITHMS = {[0] = fixed_window, sliding_window, log_decide, token_bucket, gcra}

-- Values are compact: a letter naming the algorithm, the state's time field in exactly 8
-- base-93 digits (see encode_int; good until the year 2147), then its other integers,
-- separated by ":". A fixed window with count 5 is "F" .. end .. "&": 10 bytes, which Redis
-- keeps inside its object header. A value written by another algorithm (the policy was
-- changed) or in another format counts as no state at all. (Sliding logs are lists: see
-- sliding_log.lua.) ratewall.stores._values is the Python twin of this format.
local TAGS = {[fixed_window] = "F", [sliding_window] = "S", [token_bucket] = "T", [gcra] = "G"}
-- The tags' character codes (a function library's top level may not call string.byte).
local TAG_BYTES = {[fixed_window] = 70, [sliding_window] = 83, [token_bucket] = 84, [gcra] = 71}
-- The state's time field (1-based): the window end, the window start, the last refill, tat.
local TIME_FIELD = {[fixed_window] = 2, [sliding_window] = 3, [token_bucket] = 2, [gcra] = 1}

local function encode(values, algorithm)
  local time_field = TIME_FIELD[algorithm]
  local text = TAGS[algorithm] .. encode_time(values[time_field])
  local separator = ""
  for i = 1, #values do
    if i ~= time_field then
      text = text .. separator .. encode_int(values[i])
      separator = ":"
    end
  end
  return text
end

-- The state tuple `key` holds for `algorithm`: {} when there is none (no key, a value of
-- another algorithm or format, a sliding log's list).
local function read_state(key, algorithm)
  local state = {}
  -- pcall: a sliding log's list answers WRONGTYPE, which is no state here either.
  local raw = redis.pcall("GET", key)
  if type(raw) == "table" and raw.err and not string.find(raw.err, "WRONGTYPE", 1, true) then
    error(raw.err)  -- any other refusal (an ACL without GET, say) must fail, not admit
  end
  if type(raw) == "string" and #raw > 9 and string.byte(raw, 1) == TAG_BYTES[algorithm] then
    -- The other integers, split at ":" (no pattern, no substrings), then the time.
    local size, first = #raw, 10
    while first <= size do
      local colon = string.find(raw, ":", first, true)
      local last = colon and colon - 1 or size
      if last >= first then state[#state + 1] = decode_span(raw, first, last) end
      first = last + 2
    end
    table.insert(state, TIME_FIELD[algorithm], decode_time(raw, 2))
  end
  return state
end

-- Writes `state` with its TTL (`ttl` µs, see ttl_ms) in one SET.
local function write_state(key, algorithm, state, ttl)
  redis.call("SET", key, encode(state, algorithm), "PX", ttl_ms(ttl))
end

-- Rules already parsed, by their text. A policy's rule is the same text on every call, and
-- parsing it every time (seven tonumber calls, each a strtod) was 15% of the server's work
-- for a lone decision. The table lives as long as the loaded library (an EVAL script starts
-- with it empty); past RULES_KEPT entries it starts afresh. Rules in it are never modified.
local RULES_KEPT = 1000
local parsed_rules, parsed_count = {}, 0

-- The rule written as `text` (see ARGV[2] above): {algorithm, limit, window_us, capacity,
-- rate, interval, lease}.
local function read_rule(text)
  local rule = parsed_rules[text]
  if rule ~= nil then return rule end
  rule = {}
  local first = 1
  while true do
    local colon = string.find(text, ":", first, true)
    rule[#rule + 1] = tonumber(string.sub(text, first, colon and colon - 1 or -1))
    if colon == nil then break end
    first = colon + 1
  end
  local algorithm = ALGORITHMS[rule[1]]
  if algorithm == nil or #rule ~= 7 then
    error("ratewall: malformed rule " .. tostring(text))
  end
  rule[1] = algorithm
  if parsed_count >= RULES_KEPT then parsed_rules, parsed_count = {}, 0 end
  parsed_rules[text], parsed_count = rule, parsed_count + 1
  return rule
end

-- Decides a check (op 0) or peek (op 1) of `key` that is a group of its own, and returns its
-- reply. A refused call consumes nothing, so there is nothing to undo: none of run_group's
-- bookkeeping. `store` reads and keeps states: `current(key, algorithm)`, `log_for(key)`,
-- `keep_state(key, algorithm, state, ttl_us)`, `keep_log(log, window_us)`.
local function decide_one(store, key, op, cost, rule, now)
  local algorithm = rule[1]
  local allowed, remaining, reset, retry
  local snapshot = nil  -- the state before a refusal, for the caller's deny cache
  if algorithm == log_decide then
    local log = store.log_for(key)
    allowed, remaining, reset, retry = log_decide(log, now, cost, rule[2], rule[3], op == 0)
    if allowed == 0 then
      snapshot = log_state(log, now, rule[3])
    elseif op == 0 then
      store.keep_log(log, rule[3])
    end
  else
    local stored = store.current(key, algorithm)
    local new_state, ttl
    allowed, remaining, reset, retry, new_state, ttl = algorithm(
      stored, now, cost, rule[2], rule[3], rule[4], rule[5], rule[6])
    if allowed == 0 then
      snapshot = stored
    elseif op == 0 and new_state ~= nil then
      store.keep_state(key, algorithm, new_state, ttl)
    end
  end
  local reply = {allowed, remaining, reset, retry, now}
  if snapshot ~= nil then
    for j = 1, #snapshot do
      reply[5 + j] = snapshot[j]
    end
  end
  return reply
end

-- A call that is one check or peek of one key (a sync decision, a lone async one) reads and
-- writes its key directly: no per-call tables or closures, which were a fifth of the
-- server's work for such a call.
local DIRECT = {
  current = read_state,
  log_for = log_load,
  keep_state = write_state,
  keep_log = function(log, window) log_save(log, ttl_ms(window)) end,
}

-- One call of the script. Everything above is defined once when the script is loaded as a
-- Redis Function; as an EVAL script it runs at every call.
local function run(KEYS, ARGV)
  local now
  if ARGV[1] == "" then
    local t = redis.call("TIME")
    now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  else
    now = tonumber(ARGV[1])
  end

  local rule_count = tonumber(ARGV[2])
  if #KEYS == 1 and rule_count == 1 then
    local op = tonumber(ARGV[4])  -- the key's four values follow the rule
    if op <= 1 then
      return {decide_one(DIRECT, KEYS[1], op, tonumber(ARGV[6]), read_rule(ARGV[3]), now)}
    end
  end

  local rules = {}
  for r = 1, rule_count do
    rules[r] = read_rule(ARGV[2 + r])
  end
  local CALLS = 3 + rule_count

  -- The state of every key touched, as of the groups decided so far, and its algorithm.
  local states, ttls, dirty, algorithms = {}, {}, {}, {}
  -- Sliding logs touched (key -> log), and those to write back with their TTL (ms).
  local logs, log_ttls, dirty_logs = {}, {}, {}

  local function current(key, algorithm)
    local state = states[key]
    if state == nil then
      state = read_state(key, algorithm)
      states[key] = state
    end
    return state
  end

  local function log_for(key)
    local log = logs[key]
    if log == nil then
      log = log_load(key)
      logs[key] = log
    end
    return log
  end

  -- An admitted state tuple: kept as the key's state, written once at the end with `ttl`.
  local function keep_state(key, algorithm, state, ttl)
    if ttls[key] == nil then dirty[#dirty + 1] = key end
    states[key], ttls[key], algorithms[key] = state, ttl, algorithm
  end

  -- A sliding log admitted into: written back at the end, living one `window` (µs) more.
  local function keep_log(log, window)
    log_ttls[log.key] = ttl_ms(window)
    if not log.dirty then
      log.dirty = true
      dirty_logs[#dirty_logs + 1] = log
    end
  end

  -- Decides KEYS[first..last], one group, filling `replies`.
  local function run_group(first, last, replies)
    local pending, pending_ttl, pending_algorithm, order, before = {}, {}, {}, {}, {}
    -- Sliding logs: undo points, and the windows of those checked and of those admitted into.
    local saved, saved_order, log_windows, log_commits = {}, {}, {}, {}
    local all_allowed = true
    for i = first, last do
      local base = CALLS + (i - 1) * 4
      local op = tonumber(ARGV[base])
      local key = KEYS[i]
      if op == 2 then
        redis.call("DEL", key)
        states[key], ttls[key], pending[key] = {}, nil, nil
        if logs[key] ~= nil then logs[key].deleted = true end
        logs[key] = nil
        replies[i] = {1, 0, 0, -1, now}
      else
        local rule = rules[tonumber(ARGV[base + 3])]
        local cost = tonumber(ARGV[base + 2])
        local commit = op == 0 or op == 3
        local allowed, remaining, reset, retry
        local granted = nil
        if op == 3 then
          -- What would remain after `cost` sizes the slice; taking it all is then allowed.
          if rule[1] == log_decide then
            allowed, remaining = log_decide(log_for(key), now, cost, rule[2], rule[3], false)
          else
            allowed, remaining = rule[1](pending[key] or current(key, rule[1]), now, cost,
                                         rule[2], rule[3], rule[4], rule[5], rule[6])
          end
          if allowed == 1 then
            cost = cost + math.max(0, math.min(rule[7] - cost, math.floor(remaining / 2)))
            granted = cost
          end
        end
        if rule[1] == log_decide then
          local log = log_for(key)
          if saved[key] == nil then
            saved[key] = log_checkpoint(log)
            saved_order[#saved_order + 1] = key
          end
          log_windows[i] = rule[3]
          allowed, remaining, reset, retry = log_decide(log, now, cost, rule[2], rule[3], commit)
          if allowed == 1 and commit then
            log_commits[key] = rule[3]
          end
        else
          local stored = current(key, rule[1])
          local new_state, ttl
          allowed, remaining, reset, retry, new_state, ttl = rule[1](
            pending[key] or stored, now, cost, rule[2], rule[3], rule[4], rule[5], rule[6])
          before[i] = stored
          if allowed == 1 and commit and new_state ~= nil then
            if pending[key] == nil then order[#order + 1] = key end
            pending[key], pending_ttl[key], pending_algorithm[key] = new_state, ttl, rule[1]
          end
        end
        replies[i] = {allowed, remaining, reset, retry, now, granted}
        if allowed == 0 then all_allowed = false end
      end
    end
    if all_allowed then
      for _, key in ipairs(order) do
        if pending[key] ~= nil then
          keep_state(key, pending_algorithm[key], pending[key], pending_ttl[key])
        end
      end
      for _, key in ipairs(saved_order) do
        local log = logs[key]
        if log ~= nil and log_commits[key] ~= nil then keep_log(log, log_commits[key]) end
      end
    else
      for _, key in ipairs(saved_order) do
        if logs[key] ~= nil then log_restore(logs[key], saved[key]) end
      end
      for i = first, last do
        local state = before[i]
        if log_windows[i] ~= nil and logs[KEYS[i]] ~= nil then
          state = log_state(logs[KEYS[i]], now, log_windows[i])
        end
        if state ~= nil then
          for j = 1, #state do
            replies[i][5 + j] = state[j]
          end
        end
      end
    end
  end

  -- decide_one's accessors within this call: states as the groups before left them, kept
  -- ones written at the end.
  local within_call = {current = current, log_for = log_for, keep_state = keep_state,
                       keep_log = keep_log}

  -- Decides KEYS[i], a group of its own: the usual one. Resets and leases go the general way.
  local function run_single(i, replies)
    local base = CALLS + (i - 1) * 4
    local op = tonumber(ARGV[base])
    if op > 1 then return run_group(i, i, replies) end
    replies[i] = decide_one(within_call, KEYS[i], op, tonumber(ARGV[base + 2]),
                            rules[tonumber(ARGV[base + 3])], now)
  end

  local replies = {}
  local count = #KEYS
  local first = 1
  while first <= count do
    local group = ARGV[CALLS + (first - 1) * 4 + 1]
    local last = first
    while last < count and ARGV[CALLS + last * 4 + 1] == group do
      last = last + 1
    end
    if first == last then
      run_single(first, replies)
    else
      run_group(first, last, replies)
    end
    first = last + 1
  end

  for _, log in ipairs(dirty_logs) do
    if not log.deleted then log_save(log, log_ttls[log.key]) end
  end
  for _, key in ipairs(dirty) do
    if ttls[key] ~= nil then
      write_state(key, algorithms[key], states[key], ttls[key])
    end
  end
  return replies
end

return run(KEYS, ARGV)
