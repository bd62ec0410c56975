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

-- Stored integers are written in base 93, with the printable ASCII characters "!" to "~"
-- except ":", which separates them. A µs time takes 8 characters, so a fixed window's value
-- ("F", count, ":", end) is 11 bytes for counts under 93: Redis keeps such a value inside its
-- object header, and a typical key costs under 100 bytes (ratewall.stores._values).
local function encode_int(n)
  if n == 0 then return "!" end
  local out = {}
  while n > 0 do
    local digit = n % 93
    n = (n - digit) / 93
    if digit >= 25 then digit = digit + 1 end  -- skip ":" (33 + 25)
    out[#out + 1] = string.char(33 + digit)
  end
  return string.reverse(table.concat(out))
end

local function decode_int(text)
  local n = 0
  for i = 1, #text do
    local digit = string.byte(text, i) - 33
    if digit > 25 then digit = digit - 1 end
    n = n * 93 + digit
  end
  return n
end
