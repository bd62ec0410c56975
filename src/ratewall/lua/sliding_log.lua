-- sliding_log: twin of ratewall.algorithms.sliding_log, kept in a Redis LIST so that a
-- decision costs O(cost) commands however long the log is (the pure function's state tuple
-- would be read and rewritten whole on every decision).
--
-- Layout: one list per key, oldest entry first. Each entry is "t:c:total" in base 93: the
-- admission time t (µs), the admitted cost c, and the running total of every cost admitted
-- since the key was created, this one included. The cost admitted in entries i..j is
-- total_j - total_i + c_i, so the used amount needs only the first live and the last entry.
-- The pure function's state (t1, c1, t2, c2, ...) is this list with the totals left out.
--
-- Entries expire while the list's prefix is too old (t + window <= now); like the pure
-- function, only an allowed check drops them, and a refusal reads at most `cost` expired
-- entries (each one frees at least 1 unit, so more would have let the request pass).
--
-- Within one script call `now` is fixed, so a call adds at most one entry to the list: the
-- first admission appends {now, cost}, later ones at the same `now` merge into it. A log is
-- changed in Lua (`drop`, `head`, `tail`) and written back once at the end of the script.

local function log_parse(raw)
  local t, c, total = string.match(raw, "^([^:]+):([^:]+):([^:]+)$")
  return {decode_int(t), decode_int(c), decode_int(total)}
end

-- A log as the script sees it: `n` entries in Redis (1-based here), of which the first
-- `drop` are expired, the last one possibly replaced by `head`, then `tail` if a new entry
-- was admitted. `foreign` is set when the key holds another algorithm's value.
local function log_load(key)
  local n = redis.pcall("LLEN", key)
  local log = {key = key, n = 0, drop = 0, head = nil, tail = nil, read = {}, foreign = false}
  if type(n) == "number" then
    log.n = n
  elseif string.find(n.err, "WRONGTYPE", 1, true) then
    log.foreign = true  -- another algorithm's string: it counts as no state
  else
    error(n.err)  -- any other refusal (an ACL without LLEN, say) must fail, not admit
  end
  return log
end

local function log_size(log)
  if log.tail ~= nil then return log.n + 1 end
  return log.n
end

local function log_entry(log, i)
  if i > log.n then return log.tail end
  if i == log.n and log.head ~= nil then return log.head end
  local entry = log.read[i]
  if entry == nil then
    entry = log_parse(redis.call("LINDEX", log.key, i - 1))
    log.read[i] = entry
  end
  return entry
end

-- The pure function's decision on this log; when `commit`, an allowed request is recorded.
-- Returns allowed (0/1), remaining, reset_us, retry_us (-1 if allowed).
local function log_decide(log, now, cost, limit, window, commit)
  local size = log_size(log)
  local first = log.drop + 1
  while first <= size and log_entry(log, first)[1] + window <= now do
    first = first + 1
  end
  local used = 0
  local oldest
  if first <= size then
    oldest = log_entry(log, first)
    used = log_entry(log, size)[3] - oldest[3] + oldest[2]
  end
  if used + cost <= limit then
    if commit then
      log.drop = first - 1
      local last = size > 0 and log_entry(log, size) or nil
      if first <= size and last[1] == now then
        local merged = {now, last[2] + cost, last[3] + cost}
        if size > log.n then log.tail = merged else log.head = merged end
      else
        log.tail = {now, cost, (last and last[3] or 0) + cost}
      end
    end
    return 1, limit - used - cost, window, -1
  end
  -- Refused: used >= 1, so the last entry is live.
  local reset = log_entry(log, size)[1] + window - now
  local retry = reset
  for i = first, size do
    local entry = log_entry(log, i)
    local freed = entry[3] - oldest[3] + oldest[2]
    if used - freed + cost <= limit then
      retry = entry[1] + window - now
      break
    end
  end
  return 0, limit - used, reset, retry
end

-- {drop, head, tail}: enough to undo a refused group's changes (entries are never mutated).
local function log_checkpoint(log)
  return {log.drop, log.head, log.tail}
end

local function log_restore(log, saved)
  log.drop, log.head, log.tail = saved[1], saved[2], saved[3]
end

-- The live entries as the pure function's state {t1, c1, t2, c2, ...}, for the deny cache.
local function log_state(log, now, window)
  local state = {}
  local size = log_size(log)
  local first = log.drop + 1
  while first <= size and log_entry(log, first)[1] + window <= now do
    first = first + 1
  end
  local stored_last = math.min(size, log.n)
  if first <= stored_last then
    local raw = redis.call("LRANGE", log.key, first - 1, stored_last - 1)
    for j = 1, #raw do
      local entry
      if first + j - 1 == log.n and log.head ~= nil then
        entry = log.head
      else
        entry = log_parse(raw[j])
      end
      state[#state + 1] = entry[1]
      state[#state + 1] = entry[2]
    end
  end
  if log.tail ~= nil and first <= size then
    state[#state + 1] = log.tail[1]
    state[#state + 1] = log.tail[2]
  end
  return state
end

local function log_encode(entry)
  return encode_int(entry[1]) .. ":" .. encode_int(entry[2]) .. ":" .. encode_int(entry[3])
end

-- Writes the log's changes: one LTRIM, LSET and RPUSH at most, and its TTL.
local function log_save(log, expire_ms)
  if log.foreign then
    redis.call("DEL", log.key)
    log.n, log.drop, log.head, log.foreign = 0, 0, nil, false
  end
  if log.drop >= log.n and log.n > 0 then
    redis.call("DEL", log.key)
  elseif log.drop > 0 then
    redis.call("LTRIM", log.key, log.drop, -1)
  end
  if log.head ~= nil and log.drop < log.n then
    redis.call("LSET", log.key, -1, log_encode(log.head))
  end
  if log.tail ~= nil then
    redis.call("RPUSH", log.key, log_encode(log.tail))
  end
  redis.call("PEXPIRE", log.key, expire_ms)
end
