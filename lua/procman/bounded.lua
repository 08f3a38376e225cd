--- procman.bounded: the standard library functions whose work one VM
-- instruction does not bound, made to charge that work to the budget.
--
-- The instruction budget counts VM instructions, but one instruction can
-- call a C function that works for a long time: ('a'):rep(n), a pattern
-- that backtracks, table.sort of a million items. In the sandbox these
-- functions are replaced by the ones here, which charge their work to the
-- budget of the running call (core.budget_charge: one unit per item, per
-- pattern-matching step, or per core.bytes_per_unit bytes scanned or made)
-- before they do it, or refuse. Outside a guarded call nothing is charged.
-- The pattern functions are procman's own matcher (csrc/pattern.c), which
-- counts its steps; the others check and charge, then call Lua's own.
--
-- Functions that return many values (table.unpack, string.byte,
-- utf8.codepoint) return at most MAX_VALUES: passing n values on to a
-- vararg call is one instruction that copies n values.
local core = require "procman.core"

local charge, BYTES = core.budget_charge, core.bytes_per_unit
local tointeger = math.tointeger

local M = {}

M.MAX_VALUES = 256

-- Charge for scanning or making n bytes.
local function charge_bytes(n)
  charge(n // BYTES + 1)
end

-- A string argument as the string library takes it (a number converts).
local function text(v)
  if type(v) == "number" then return tostring(v) end
  return v
end

-- Lua's rule for the positions i..j of a string of length len (posrelat).
local function span(len, i, j)
  i = tointeger(i) or 1
  j = tointeger(j) or i
  if i < 0 then i = (i < -len) and 1 or len + i + 1 elseif i == 0 then i = 1 end
  if j < 0 then j = len + j + 1 elseif j > len then j = len end
  return j - i + 1
end

local function too_many(who, n)
  if n > M.MAX_VALUES then
    error(string.format("%s: %d values asked for; at most %d in a workflow (a vararg call "
                        .. "copies every value)", who, n, M.MAX_VALUES), 3)
  end
end

-- ---------------------------------------------------------------------
-- string
-- ---------------------------------------------------------------------

local rep, format, byte = string.rep, string.format, string.byte
local MEMORY_ERROR = "not enough memory"  -- Lua's message for a failed allocation

M.string = {
  find = core.pattern_find,
  match = core.pattern_match,
  gmatch = core.pattern_gmatch,
  gsub = core.pattern_gsub,
}

function M.string.rep(s, n, sep)
  local str, count, between = text(s), tointeger(n), text(sep or "")
  if type(str) ~= "string" or count == nil or type(between) ~= "string" then
    return rep(s, n, sep)  -- Lua's own error for a bad argument
  end
  local step = #str + #between
  if count <= 0 or step == 0 then return "" end  -- (''):rep(huge) is "" at once
  if count > math.maxinteger // step then return rep(s, n, sep) end  -- "too large"
  charge_bytes(count * step)
  return rep(s, n, sep)
end

-- The result is at most as big as the memory budget lets it be; the work
-- is proportional to it. format runs under pcall so that its errors (a bad
-- specifier or argument) name the workflow's line, as Lua's own
-- string.format does, not this file's; a memory error passes as it is.
function M.string.format(...)
  local ok, result = pcall(format, ...)
  if not ok then error(result, result == MEMORY_ERROR and 0 or 2) end
  charge_bytes(#result)
  return result
end

-- pack and unpack do work (and unpack returns values) per item of the
-- format: one unit per format character, charged first.
local pack, unpack_bytes = string.pack, string.unpack

function M.string.pack(fmt, ...)
  if type(fmt) == "string" then charge(#fmt) end
  return pack(fmt, ...)
end

function M.string.unpack(fmt, s, ...)
  if type(fmt) == "string" then charge(#fmt) end
  if type(s) == "string" then charge_bytes(#s) end
  return unpack_bytes(fmt, s, ...)
end

function M.string.byte(s, i, j)
  local str = text(s)
  if type(str) == "string" and #str > M.MAX_VALUES then
    too_many("string.byte", span(#str, i, j))
  end
  return byte(s, i, j)
end

-- ---------------------------------------------------------------------
-- table
-- ---------------------------------------------------------------------

local concat, unpack, move, sort = table.concat, table.unpack, table.move, table.sort
local insert, remove = table.insert, table.remove

M.table = {}

function M.table.concat(t, sep, i, j)
  if type(t) == "table" then
    local first, last = tointeger(i or 1), tointeger(j or #t)
    if first and last and last >= first then charge(last - first + 1) end
  end
  local result = concat(t, sep, i, j)
  charge_bytes(#result)
  return result
end

function M.table.unpack(t, i, j)
  if type(t) == "table" then
    local first, last = tointeger(i or 1), tointeger(j or #t)
    if first and last and last >= first then too_many("table.unpack", last - first + 1) end
  end
  return unpack(t, i, j)
end

function M.table.move(a1, f, e, t, a2)
  local first, last = tointeger(f), tointeger(e)
  if first and last and last >= first then charge(last - first + 1) end
  return move(a1, f, e, t, a2)
end

function M.table.sort(t, comp)
  if type(t) == "table" then
    local n = #t
    if n > 1 then charge(n * math.ceil(math.log(n, 2))) end
  end
  return sort(t, comp)
end

-- insert and remove at a position shift the items after it.
function M.table.insert(t, ...)
  if select("#", ...) == 2 and type(t) == "table" then
    local pos = tointeger((...))
    if pos then charge(#t - pos + 1) end
  end
  return insert(t, ...)
end

function M.table.remove(t, ...)
  if select("#", ...) >= 1 and type(t) == "table" then
    local pos = tointeger((...))
    if pos then charge(#t - pos + 1) end
  end
  return remove(t, ...)
end

-- ---------------------------------------------------------------------
-- utf8, tonumber: they scan the whole string
-- ---------------------------------------------------------------------

local len, offset, codepoint = utf8.len, utf8.offset, utf8.codepoint

M.utf8 = {}

function M.utf8.len(s, ...)
  if type(s) == "string" then charge_bytes(#s) end
  return len(s, ...)
end

function M.utf8.offset(s, ...)
  if type(s) == "string" then charge_bytes(#s) end
  return offset(s, ...)
end

function M.utf8.codepoint(s, i, j)
  local str = text(s)
  if type(str) == "string" then
    charge_bytes(#str)
    if #str > M.MAX_VALUES then too_many("utf8.codepoint", span(#str, i, j)) end
  end
  return codepoint(s, i, j)
end

local to_number = tonumber

function M.tonumber(v, ...)
  if type(v) == "string" then charge_bytes(#v) end
  return to_number(v, ...)
end

return M
