-- ratewall concurrency slots: twin of ratewall.algorithms.slots (a script of its own, not
-- part of the decision script).
--
-- KEYS[1]: the identity's key for the policy, e.g. ratelimit:{user_123}:exports: a sorted
--       set, member = a holder's token, score = its lease's expiry in µs.
-- ARGV: op (0 acquire, 1 renew, 2 release, 3 peek, 4 reset), token, limit, lease_us, cost,
--       now in µs or "" to read the server's clock (TIME; tests inject a time).
-- Reply: {ok 0/1, free slots after the operation, reset_us (until every current lease has
--       expired; 0 if none), retry_us (refused acquire or peek: until enough leases expire;
--       refused renew: 0; else -1), now_us}. All integers.
-- Rules: a holder whose expiry is at or before now is gone: acquire, renew and release
--       remove such holders first (peek only reads). Renewing a token that is not held
--       fails: an expired lease is never brought back. Releasing is idempotent. Every write
--       sets the key's TTL (ms, rounded up) to the latest lease's expiry in the same call,
--       so no key lives without a TTL or longer than its leases; a set left empty is gone.
--       A value of another algorithm under the key (the policy was changed) is no state.
-- Units: µs everywhere except the TTL. Scores are integers below 2^53 (exact doubles),
--       handed to redis.call as decimal text (int below), never in exponent form.

-- An integer as decimal text (Lua 5.1 formats %d through a 64-bit long).
local function int(n)
  return string.format("%d", n)
end

local function run(KEYS, ARGV)
  local key = KEYS[1]
  local op = tonumber(ARGV[1])
  local token = ARGV[2]
  local limit = tonumber(ARGV[3])
  local lease = tonumber(ARGV[4])
  local cost = tonumber(ARGV[5])
  local now
  if ARGV[6] == "" then
    local t = redis.call("TIME")
    now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  else
    now = tonumber(ARGV[6])
  end
  if op == 4 then
    redis.call("DEL", key)
    return {1, 0, 0, -1, now}
  end

  -- Time until the latest lease expires (0: none held; a peek does not prune, so the
  -- latest may be an expired one).
  local function last()
    local top = redis.call("ZRANGE", key, -1, -1, "WITHSCORES")
    if #top == 0 then return 0 end
    return math.max(0, tonumber(top[2]) - now)
  end

  if op == 3 then
    local count = redis.pcall("ZCOUNT", key, int(now + 1), "+inf")
    if type(count) == "table" then
      if string.find(count.err, "WRONGTYPE", 1, true) then return {1, limit, 0, -1, now} end
      error(count.err)
    end
    if count + cost <= limit then
      return {1, limit - count, last(), -1, now}
    end
    local nth = redis.call("ZRANGEBYSCORE", key, int(now + 1), "+inf", "WITHSCORES", "LIMIT",
                           int(count + cost - limit - 1), 1)
    return {0, math.max(0, limit - count), last(), tonumber(nth[2]) - now, now}
  end

  local pruned = redis.pcall("ZREMRANGEBYSCORE", key, "-inf", int(now))
  if type(pruned) == "table" then
    if not string.find(pruned.err, "WRONGTYPE", 1, true) then error(pruned.err) end
    redis.call("DEL", key)
  end
  local held = redis.call("ZSCORE", key, token)
  local count = redis.call("ZCARD", key)
  local ok, retry = 1, -1
  if op == 0 then
    if held or count + 1 <= limit then
      redis.call("ZADD", key, int(now + lease), token)
      if not held then count = count + 1 end
    else
      ok = 0
      local first = redis.call("ZRANGE", key, 0, 0, "WITHSCORES")
      retry = tonumber(first[2]) - now
    end
  elseif op == 1 then
    if held then
      redis.call("ZADD", key, "XX", int(now + lease), token)
    else
      ok, retry = 0, 0
    end
  else
    if held then
      redis.call("ZREM", key, token)
      count = count - 1
    else
      ok = 0
    end
  end
  local reset = last()
  if reset > 0 then
    redis.call("PEXPIRE", key, int(math.max(1, math.ceil(reset / 1000))))
  end
  return {ok, math.max(0, limit - count), reset, retry, now}
end

return run(KEYS, ARGV)
