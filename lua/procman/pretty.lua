--- procman.pretty: show Lua values the way a person wants to read them.
--
-- Sorted keys, arrays as arrays, nested tables indented when they do not
-- fit on one line, tables met twice (cycles included) shown once and then
-- as back-references <1>, long tables cut with a count, __tostring
-- honoured. Used by the demo and the REPL.
local pretty = {}

local DEFAULTS = { width = 78, indent = "  ", max_depth = 12, max_items = 100 }

local KEYWORDS = {}
for w in ([[and break do else elseif end false for function goto if in
  local nil not or repeat return then true until while]]):gmatch("%a+") do
  KEYWORDS[w] = true
end

-- A string as Lua source: UTF-8 text shown as it is, other bytes as \ddd.
local function quote(s)
  local q = string.format("%q", s):gsub("\\\n", "\\n")
  if utf8.len(s) == nil then
    q = q:gsub("[\128-\255]", function(c) return "\\" .. c:byte() end)
  end
  return q
end

local function number(n)
  if math.type(n) == "integer" then return tostring(n) end
  if n ~= n then return "0/0" end
  if n == math.huge then return "1/0" end
  if n == -math.huge then return "-1/0" end
  local s = string.format("%.14g", n)
  if tonumber(s) ~= n then s = string.format("%.17g", n) end
  if not s:find("[%.eEn]") then s = s .. ".0" end
  return s
end

local function has_tostring(v)
  local mt = getmetatable(v)
  return type(mt) == "table" and rawget(mt, "__tostring") ~= nil
end

local function scalar(v)
  local t = type(v)
  if t == "string" then return quote(v) end
  if t == "number" then return number(v) end
  return tostring(v)
end

-- Sort order of keys: numbers, then strings, then everything else.
local RANK = { number = 1, string = 2, boolean = 3 }
local function key_less(a, b)
  local ra, rb = RANK[type(a)] or 4, RANK[type(b)] or 4
  if ra ~= rb then return ra < rb end
  if ra <= 2 then return a < b end
  return tostring(a) < tostring(b)
end

local function key_text(k)
  if type(k) == "string" and k:match("^[%a_][%w_]*$") and not KEYWORDS[k] then
    return k
  end
  return "[" .. scalar(k) .. "]"
end

-- How many times each table is reachable (to number the shared ones).
local function count_refs(v, refs, depth, opts)
  if type(v) ~= "table" or has_tostring(v) then return end
  refs[v] = (refs[v] or 0) + 1
  if refs[v] > 1 or depth > opts.max_depth then return end
  for k, x in next, v do
    count_refs(k, refs, depth + 1, opts)
    count_refs(x, refs, depth + 1, opts)
  end
end

local render

-- The entries of table 't' as text items: array part first, then sorted.
local function items_of(t, ctx, depth)
  local items, n = {}, #t
  local keys = {}
  for k in next, t do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then
      keys[#keys + 1] = k
    end
  end
  table.sort(keys, key_less)
  local total, cap = n + #keys, ctx.opts.max_items
  for i = 1, math.min(n, cap) do
    items[#items + 1] = render(rawget(t, i), ctx, depth + 1)
  end
  for i = 1, math.min(#keys, cap - #items) do
    local k = keys[i]
    items[#items + 1] = key_text(k) .. " = " .. render(rawget(t, k), ctx, depth + 1)
  end
  if total > #items then
    items[#items + 1] = string.format("... (%d more)", total - #items)
  end
  return items
end

function render(v, ctx, depth)
  if type(v) ~= "table" or has_tostring(v) then return scalar(v) end
  local id = ctx.ids[v]
  if id then return "<" .. id .. ">" end
  if ctx.refs[v] and ctx.refs[v] > 1 then
    ctx.next_id = ctx.next_id + 1
    id = ctx.next_id
    ctx.ids[v] = id
  end
  local prefix = id and ("<" .. id .. ">") or ""
  if depth > ctx.opts.max_depth then return prefix .. "{...}" end
  local items = items_of(v, ctx, depth)
  if #items == 0 then return prefix .. "{}" end
  local line = prefix .. "{ " .. table.concat(items, ", ") .. " }"
  local room = ctx.opts.width - #ctx.opts.indent * depth
  if #line <= room and not line:find("\n", 1, true) then return line end
  local inner = ctx.opts.indent:rep(depth + 1)
  return prefix .. "{\n" .. inner .. table.concat(items, ",\n" .. inner) .. "\n"
         .. ctx.opts.indent:rep(depth) .. "}"
end

--- pretty.format(v [, opts]) -> string
-- opts: width (78), indent ("  "), max_depth (12), max_items (100).
function pretty.format(v, opts)
  local o = {}
  for k, d in pairs(DEFAULTS) do o[k] = (opts and opts[k]) or d end
  local ctx = { opts = o, refs = {}, ids = {}, next_id = 0 }
  count_refs(v, ctx.refs, 0, o)
  return render(v, ctx, 0)
end

--- pretty.block(v [, indent]) -> pretty.format(v), its lines after the
-- first indented by 'indent' (default four spaces): for a value shown
-- after a label ("    commands: {...").
function pretty.block(v, indent)
  return (pretty.format(v):gsub("\n", "\n" .. (indent or "    ")))
end

--- pretty.install() -> the print it replaced: make the global print show
-- tables (and values with __tostring) the way pretty.format does, and
-- everything else as print does. The stock REPL prints results through
-- the global print, so `lua5.4 -i -e 'require("procman.pretty").install()'`
-- gives it procman's output.
function pretty.install()
  local original = print
  _G.print = function(...)
    local n = select("#", ...)
    local parts = {}
    for i = 1, n do
      local v = select(i, ...)
      parts[i] = type(v) == "table" and pretty.format(v) or tostring(v)
    end
    io.write(table.concat(parts, "\t"), "\n")
  end
  return original
end

return pretty
