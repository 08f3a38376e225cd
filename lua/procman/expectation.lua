--- procman.expectation: where a failed expectation of procman.testing is,
-- and how to raise it so that a test runner counts a failure.
--
-- Where: Lua gives every call of a chain
--   given(wf, {})            -- line 10
--     :when { ... }          -- line 11
--     :expect { ... }        -- line 12
-- the line where the chain starts (10), so a failure raised at level 2
-- would point at the given(...). The expectation's own line is found in
-- the chunk's source instead: the n-th ":expect" from the call's line,
-- where n counts the expectations of this scenario made from that line
-- (going round the statement's expectations when a loop runs it again).
-- When the source cannot be read, the call's line is used.
--
-- How: busted counts an error as a failure (not an error of the test's
-- own code) when luassert raises it. When luassert is loaded (busted
-- loads it), the failure goes through it; procman never requires it.
local M = {}

local Sites = {}
Sites.__index = Sites

--- sites() -> a counter of expectations by call site, one per scenario.
function M.sites()
  return setmetatable({ counts = {} }, Sites)
end

--- sites:here() -> the call site of the expectation being made (the
-- caller of the function that calls here), counted.
function Sites:here()
  local info = debug.getinfo(3, "Sl")
  local key = info.source .. "\0" .. info.currentline
  self.counts[key] = (self.counts[key] or 0) + 1
  return { source = info.source, short_src = info.short_src, line = info.currentline,
           nth = self.counts[key] }
end

local function source_text(source)
  if source:sub(1, 1) == "=" then return nil end
  if source:sub(1, 1) ~= "@" then return source end  -- a chunk loaded from a string
  local f = io.open(source:sub(2), "r")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  return text
end

local function newlines(text, from, to)
  return select(2, text:sub(from, to):gsub("\n", ""))
end

-- The end of the string, comment or long bracket starting at 'pos', or nil
-- when none starts there.
local function skip_literal(text, pos)
  local level = text:match("^%-%-%[(=*)%[", pos) or text:match("^%[(=*)%[", pos)
  if level then
    local _, stop = text:find("]" .. level .. "]", pos, true)
    return stop or #text
  end
  if text:find("^%-%-", pos) then return text:find("\n", pos, true) or #text end
  local quote = text:sub(pos, pos)
  if quote == '"' or quote == "'" then
    local i = pos + 1
    while i <= #text do
      local c = text:sub(i, i)
      if c == "\\" then i = i + 1 elseif c == quote or c == "\n" then return i end
      i = i + 1
    end
    return #text
  end
  return nil
end

-- Past blanks and comments from 'pos': the position of the next token, and
-- the newlines passed.
local function next_token(text, pos)
  local lines = 0
  while true do
    local at = text:match("^[ \t\r\n]*()", pos)
    lines = lines + newlines(text, pos, at - 1)
    local stop = text:find("^%-%-", at) and skip_literal(text, at)
    if not stop then return at, lines end
    lines, pos = lines + newlines(text, at, stop), stop + 1
  end
end

local OPEN, CLOSE = { ["("] = true, ["{"] = true, ["["] = true }, { [")"] = true, ["}"] = true, ["]"] = true }

-- The lines of the ":expect"s and ":expect_error"s of the statement that
-- starts at line 'from' (outside strings and comments): it ends at a line
-- end outside brackets where the next line does not go on with ':'.
local function expectation_lines(text, from)
  local pos, line = 1, 1
  while line < from do
    local nl = text:find("\n", pos, true)
    if not nl then return {} end
    pos, line = nl + 1, line + 1
  end
  local found, depth = {}, 0
  while true do
    local at = text:find("[\n%-\"'%[%]:(){}]", pos)
    if not at then return found end
    local c, stop = text:sub(at, at), skip_literal(text, at)
    if stop then
      line, pos = line + newlines(text, at, stop), stop + 1
    elseif c == "\n" then
      local after, passed = next_token(text, at)
      if depth <= 0 and text:sub(after, after) ~= ":" then return found end
      line, pos = line + passed, after
    else
      depth = depth + (OPEN[c] and 1 or CLOSE[c] and -1 or 0)
      local space, name = text:match("^:(%s*)([%a_][%w_]*)", at)
      if name == "expect" or name == "expect_error" then
        found[#found + 1] = line + newlines(text, at, at + #space)
      end
      pos = at + 1
    end
  end
end

-- The line of the n-th expectation of the statement at line 'from'; n
-- goes round when the statement runs again (in a loop); nil if it has none.
local function nth_expectation(text, from, n)
  local found = expectation_lines(text, from)
  if #found == 0 then return nil end
  return found[(n - 1) % #found + 1]
end

--- fail(site, text): raise 'text' as a failed expectation at 'site'.
function M.fail(site, text)
  if site.line > 0 then  -- (none when called from C, as by pcall(s.expect, s, ...))
    local source = source_text(site.source)
    local line = source and nth_expectation(source, site.line, site.nth) or site.line
    text = string.format("%s:%d: %s", site.short_src, line, text)
  end
  local luassert = package.loaded.luassert
  if type(luassert) == "table" and type(rawget(luassert, "level")) == "function" then
    luassert(false, text, luassert:level(-1))  -- level 0 for error(): the text has the position
  end
  error(text, 0)
end

return M
