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

local DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"

-- A non-negative integer in base 36 (stored values are compact: "hbsyv2q8xs" is a µs time).
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
