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
