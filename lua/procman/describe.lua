--- procman.describe: values and names in error messages, said so that a
-- reader can act on them.
--
--   describe.value(7)          --> 7 (an integer)
--   describe.value("7")        --> "7" (a string)
--   describe.value(1.5)        --> 1.5 (a float)
--   describe.value("")         --> "" (an empty string)
--   describe.did_you_mean("jounral", { "journal", "sync" })  --> " (did you mean 'journal'?)"
--
-- Ids of different types are different ids (7 is not "7"), but print
-- alike: where the type matters, a message shows it.
local M = {}

local ARTICLE = { boolean = "a boolean", table = "a table", ["function"] = "a function",
                  userdata = "a userdata", thread = "a thread", ["nil"] = "nil" }

--- value(v) -> v as Lua would write it, with its type.
function M.value(v)
  local kind = type(v)
  if kind == "string" then
    return string.format("%q (%s)", v, v == "" and "an empty string" or "a string")
  elseif kind == "number" then
    local text = tostring(v)
    if tonumber(text) ~= v and v == v then text = string.format("%.17g", v) end  -- all its digits
    return string.format("%s (%s)", text, math.type(v) == "integer" and "an integer" or "a float")
  elseif kind == "boolean" then
    return string.format("%s (a boolean)", tostring(v))
  end
  return ARTICLE[kind]
end

-- Levenshtein distance, for "did you mean" on misspelt names.
local function distance(a, b)
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = a:sub(i, i) == b:sub(j, j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#b]
end

--- did_you_mean(key, names) -> " (did you mean 'name'?)" for the closest
-- of 'names' (at most two edits away), else "".
function M.did_you_mean(key, names)
  if type(key) ~= "string" then return "" end
  local best, best_d = nil, 3
  for _, name in ipairs(names) do
    local d = distance(key, name)
    if d < best_d then best, best_d = name, d end
  end
  return best and string.format(" (did you mean '%s'?)", best) or ""
end

return M
