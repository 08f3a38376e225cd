--- procman.cli.json: JSON lines for procman run and inspect --json.
--
-- Reading uses lua-cjson, loaded when first needed: only procman run reads
-- JSON, so inspect and diagram work without it. JSON has one kind of
-- number; Lua has two: whole numbers that a double holds exactly become integers
-- (batch_id 7 is 7, not 7.0), and null fields are left out (a Lua table
-- cannot hold nil). Writing is our own, because lua-cjson writes numbers
-- with at most 14 digits: ids of 15 digits and most doubles would not
-- survive. Here integers are written as they are, doubles with the
-- fewest digits that read back the same, keys sorted.
local cjson, json  -- the module, and our instance of it (cjson.new())

local NO_CJSON = "reading JSON needs lua-cjson: luarocks install lua-cjson "
                 .. "(Debian: apt-get install lua-cjson)"

local M = {}

local EXACT = 2 ^ 53

local function normalize(v)
  if type(v) == "number" then
    if math.type(v) == "float" and v == math.floor(v) and v > -EXACT and v < EXACT then
      return math.tointeger(v)
    end
    return v
  end
  if type(v) ~= "table" then return v end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  for _, k in ipairs(keys) do
    local x = v[k]
    if x == cjson.null then v[k] = nil else v[k] = normalize(x) end
  end
  return v
end

--- can_read() -> true, or nil and one line saying what to install.
function M.can_read()
  if json then return true end
  local ok, module = pcall(require, "cjson")
  if not ok then return nil, NO_CJSON end
  cjson, json = module, module.new()  -- our settings, not the shared module's
  json.decode_max_depth(100)          -- procman's codec depth
  return true
end

-- lua-cjson's names for what it found, in words.
local TOKENS = { T_OBJ_BEGIN = "'{'", T_OBJ_END = "'}'", T_ARR_BEGIN = "'['", T_ARR_END = "']'",
                 T_STRING = "a string", T_NUMBER = "a number", T_BOOLEAN = "true or false",
                 T_NULL = "null", T_COLON = "':'", T_COMMA = "','", T_END = "the end of the line",
                 T_WHITESPACE = "a space", T_ERROR = "something that is not JSON",
                 ["invalid token"] = "something that is not JSON" }

local EXPECTED = { ["object key string"] = "a key (a string in double quotes)",
                   ["comma or object end"] = "',' or '}'", ["comma or array end"] = "',' or ']'",
                   ["colon"] = "':'", ["value"] = "a value" }

--- plain(message) -> lua-cjson's error message in plain words: "Expected
-- comma or object end but found T_STRING at character 9" is "expected ','
-- or '}', found a string at character 9".
function M.plain(message)
  message = tostring(message):gsub("^.-: ", "")
  local expected, found, at = message:match("^Expected (.-) but found (.-) at character (%d+)$")
  if expected then
    return string.format("expected %s, found %s at character %s", EXPECTED[expected] or expected,
                         TOKENS[found] or found, at)
  end
  return (message:gsub("T_[%u_]+", function(token) return TOKENS[token] end))
end

--- decode_event(line) -> event, or nil and why the line is not one.
function M.decode_event(line)
  local readable, no_cjson = M.can_read()
  if not readable then error(no_cjson, 0) end
  local ok, v = pcall(json.decode, line)
  if not ok then return nil, "not JSON: " .. M.plain(v) end
  if type(v) ~= "table" or (rawlen(v) > 0) then
    return nil, string.format("not an event: a JSON object expected, got %s",
                              type(v) == "table" and "an array" or v == cjson.null and "null" or type(v))
  end
  return normalize(v)
end

local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
                  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

local function string_json(s)
  if utf8.len(s) == nil then error("a string that is not UTF-8 text cannot be written as JSON", 0) end
  return '"' .. s:gsub('[%c"\\]', function(c)
    return ESCAPES[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

local function number_json(n)
  if math.type(n) == "integer" then return string.format("%d", n) end
  if n ~= n or n == math.huge or n == -math.huge then
    error(string.format("%s cannot be written as JSON", tostring(n)), 0)
  end
  for digits = 15, 17 do
    local s = string.format("%." .. digits .. "g", n)
    if tonumber(s) == n then return s end
  end
end

local write

-- Marks a table that is a list, so that an empty one is written [].
local ARRAY = {}

--- array(t) -> t, marked as a list: written [] when empty (a table with
-- no keys is otherwise written {}).
function M.array(t)
  return setmetatable(t, ARRAY)
end

-- An array when the keys are exactly 1..n (n > 0), or an empty list;
-- else an object.
local function table_json(t, depth)
  if depth > 100 then error("nested too deep for JSON (more than 100 levels)", 0) end
  local n, count = rawlen(t), 0
  for _ in next, t do count = count + 1 end
  local parts = {}
  if (n > 0 or getmetatable(t) == ARRAY) and count == n then
    for i = 1, n do parts[i] = write(t[i], depth + 1) end
    return "[" .. table.concat(parts, ",") .. "]"
  end
  local keys = {}
  for k in next, t do
    if type(k) ~= "string" and math.type(k) ~= "integer" then
      error(string.format("a table key of type %s cannot be written as JSON", type(k)), 0)
    end
    keys[#keys + 1] = tostring(k)
  end
  table.sort(keys)
  for i, k in ipairs(keys) do
    local v = t[k]
    if v == nil then v = t[math.tointeger(tonumber(k))] end
    parts[i] = string_json(k) .. ":" .. write(v, depth + 1)
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

function write(v, depth)
  local t = type(v)
  if t == "string" then return string_json(v) end
  if t == "number" then return number_json(v) end
  if t == "boolean" then return tostring(v) end
  if t == "table" then return table_json(v, depth) end
  error(string.format("a %s cannot be written as JSON", t), 0)
end

--- encode(v) -> one line of JSON, or nil and why.
function M.encode(v)
  local ok, s = pcall(write, v, 0)
  if not ok then return nil, tostring(s) end
  return s
end

return M
