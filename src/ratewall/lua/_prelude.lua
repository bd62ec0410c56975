-- ratewall: helpers shared by every algorithm (this file is concatenated first).
-- All numbers are integers held in Lua doubles; ratewall's Policy keeps every product
-- below 2^53, where doubles are exact. idiv corrects the last-bit rounding of a / b so it
-- always equals Python's floor division.

local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

local function ceil_div(a, b)
  return -idiv(-a, b)
end

-- A TTL of `us` microseconds as Redis takes it: milliseconds, rounded up, at least 1.
local function ttl_ms(us)
  return math.max(1, ceil_div(us, 1000))
end

-- Stored integers are written in base 93, with the printable ASCII characters "!" to "~"
-- except ":", which separates them. A µs time takes 8 characters, so a fixed window's value
-- ("F", count, ":", end) is 11 bytes for counts under 93: Redis keeps such a value inside its
-- object header, and a typical key costs under 100 bytes (ratewall.stores._values).
-- BYTE[d] is the character code of digit d, VALUE[code] the digit: table lookups, where a
-- string.byte call per digit costs a C call each. Plain arithmetic: a function library's
-- top level (FUNCTION LOAD) may not call the string library, only its functions may.
local BYTE, VALUE = {}, {}
for d = 0, 92 do
  local code = 33 + d
  if d >= 25 then code = code + 1 end  -- skip ":" (33 + 25)
  BYTE[d], VALUE[code] = code, d
end

local function encode_int(n)
  if n < 0 then error("ratewall: stored integers are never negative, got " .. n) end
  if n < 93 then return string.char(BYTE[n]) end
  if n < 8649 then  -- 93 ^ 2: a count or a cost, usually
    local low = n % 93
    return string.char(BYTE[(n - low) / 93], BYTE[low])
  end
  local codes, count = {}, 0
  while n > 0 do
    local digit = n % 93
    n = (n - digit) / 93
    count = count + 1
    codes[count] = BYTE[digit]
  end
  return string.reverse(string.char(unpack(codes, 1, count)))
end

-- A time in exactly 8 digits ("!" padded), built by one string.char call.
local function encode_time(n)
  if n < 0 or n >= 93 ^ 8 then
    error("ratewall: a time beyond the year 2147 cannot be stored")
  end
  local d8 = n % 93; n = (n - d8) / 93
  local d7 = n % 93; n = (n - d7) / 93
  local d6 = n % 93; n = (n - d6) / 93
  local d5 = n % 93; n = (n - d5) / 93
  local d4 = n % 93; n = (n - d4) / 93
  local d3 = n % 93; n = (n - d3) / 93
  local d2 = n % 93; n = (n - d2) / 93
  return string.char(BYTE[n], BYTE[d2], BYTE[d3], BYTE[d4], BYTE[d5], BYTE[d6], BYTE[d7],
                     BYTE[d8])
end

-- The integer written in text[first..last]. A character that is no digit counts as 0 (a
-- foreign value is no state; it must not break the call).
local function decode_span(text, first, last)
  local n = 0
  for i = first, last do
    n = n * 93 + (VALUE[string.byte(text, i)] or 0)
  end
  return n
end

local function decode_int(text)
  return decode_span(text, 1, #text)
end

-- The 8-digit time at text[first..first + 7], read by one string.byte call.
local function decode_time(text, first)
  local b1, b2, b3, b4, b5, b6, b7, b8 = string.byte(text, first, first + 7)
  return ((((((((VALUE[b1] or 0) * 93 + (VALUE[b2] or 0)) * 93 + (VALUE[b3] or 0)) * 93
    + (VALUE[b4] or 0)) * 93 + (VALUE[b5] or 0)) * 93 + (VALUE[b6] or 0)) * 93
    + (VALUE[b7] or 0)) * 93 + (VALUE[b8] or 0))
end
