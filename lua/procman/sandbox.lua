--- procman.sandbox: load workflow files where work cannot happen.
--
-- Law: work is a side effect. A workflow's handlers take events and state
-- and return commands; they may not do I/O, read clocks, draw random
-- numbers or load code. procman.load(path) runs a workflow file in an
-- environment that has only the pure part of the standard library and a
-- global 'procman' with what defining a workflow needs. Reaching for
-- anything else raises an error that names it and says why.
--
-- The environment of one file is its own: what the file does to it (a
-- global, a function added to its 'string') stays there.
--
-- The sandbox also holds the budgets (docs/api.md, "What the sandbox
-- guarantees"): every function of a sandboxed workflow runs under its
-- instruction and memory budgets (csrc/budget.c), the library functions
-- whose work instructions do not bound charge it (procman.bounded), and
-- nothing a file can reach lets it escape the budget or change what other
-- files or the host share:
--  - xpcall runs its message handler after the pcall returned, with hooks
--    on (Lua calls message handlers for errors raised by a hook with hooks
--    off, so a handler that loops there would never be stopped);
--  - setmetatable refuses __gc (Lua runs finalizers with hooks off);
--  - getmetatable gives stand-ins or names, never a shared metatable;
--  - a definition cannot ask for no budget, or for more than the host's
--    maximum (procman.load's 'limits').
local core = require "procman.core"
local workflow = require "procman.workflow"
local timers = require "procman.timers"
local bounded = require "procman.bounded"
local message = require "procman.message"
local patches = require "procman.patches"

local M = {}

local SIDE_EFFECT = "work is a side effect: do it in a gateway"
local TIME_AND_CHANCE = "time and chance come from events: put what you need in the event"

-- Globals a workflow may not have, and why.
local FORBIDDEN = {
  io = SIDE_EFFECT,
  os = SIDE_EFFECT .. " (and " .. TIME_AND_CHANCE .. ")",
  print = SIDE_EFFECT .. " (return a command, or look at the flow in the REPL)",
  warn = SIDE_EFFECT,
  require = "a workflow file loads no code: " .. SIDE_EFFECT,
  load = "a workflow file loads no code: " .. SIDE_EFFECT,
  loadfile = "a workflow file loads no code: " .. SIDE_EFFECT,
  dofile = "a workflow file loads no code: " .. SIDE_EFFECT,
  loadstring = "a workflow file loads no code: " .. SIDE_EFFECT,
  package = "a workflow file loads no code: " .. SIDE_EFFECT,
  debug = "the debug library reaches outside the workflow: " .. SIDE_EFFECT,
  collectgarbage = "memory is the runtime's business: " .. SIDE_EFFECT,
  coroutine = "a handler runs to completion and returns its commands: no coroutines",
}
M.FORBIDDEN = FORBIDDEN

local NO_FINALIZERS = "Lua runs finalizers with the budget's hook off, so they cannot be bounded"

-- Fields of the libraries that are left out, and why.
local FORBIDDEN_FIELDS = {
  string = { dump = "string.dump turns code into bytes to load elsewhere: " .. SIDE_EFFECT },
  math = { random = TIME_AND_CHANCE, randomseed = TIME_AND_CHANCE },
  table = {},
  utf8 = {},
}

-- Globals taken as they are. The sandbox makes its own getmetatable,
-- setmetatable, rawset, xpcall and tonumber, and the libraries in
-- FORBIDDEN_FIELDS.
local SAFE_GLOBALS = {
  "assert", "error", "ipairs", "next", "pairs", "pcall", "rawequal", "rawget", "rawlen",
  "select", "tostring", "type", "_VERSION",
}
M.SAFE_GLOBALS = SAFE_GLOBALS

local function refuse(name, why, level)
  error(string.format("%s is not available in a workflow: %s", name, why), level + 1)
end

-- A copy of a library without its forbidden fields, with the bounded
-- versions of its functions; reading a forbidden field raises.
local function library(name)
  local forbidden, copy = FORBIDDEN_FIELDS[name], {}
  for k, v in pairs(_G[name]) do
    if forbidden[k] == nil then copy[k] = v end
  end
  for k, v in pairs(bounded[name] or {}) do copy[k] = v end
  return setmetatable(copy, {
    __index = function(_, k)
      local why = forbidden[k]
      if why then refuse(name .. "." .. k, why, 2) end
    end,
    __metatable = false,
  })
end

-- Strings index the real 'string' table through their metatable, so
-- ("").dump would hand out string.dump. The metatable's __index becomes a
-- table that refuses 'dump' and falls through to 'string' for the rest
-- (so functions added to 'string' later still work as methods). Done once,
-- when the first sandbox is made; string.dump itself is untouched.
--
-- During a call into sandboxed code the guard swaps that __index for one
-- with the bounded string functions (core.set_sandbox_string_methods), so
-- that ('a'):rep(n) is the bounded rep.
local function guard_string_methods()
  local meta = getmetatable("")
  if meta.__index ~= string then return end
  local why = FORBIDDEN_FIELDS.string.dump
  local function dump() refuse("string.dump", why, 2) end
  meta.__index = setmetatable({ dump = dump }, { __index = string, __metatable = false })
  local methods = { dump = dump }
  for k, v in pairs(bounded.string) do methods[k] = v end
  core.set_sandbox_string_methods(setmetatable(methods, { __index = string, __metatable = false }))
end

-- getmetatable and setmetatable in the sandbox. A file sees the metatables
-- it set itself; for any other value (a workflow, a procman.pm, a string:
-- values whose metatable the whole process shares) it gets a stand-in:
-- the type's name, or for strings a read-only table whose __index is the
-- file's own string library. setmetatable changes only the metatables
-- the file set (a workflow it made, then returned, must stay one the host
-- can use), and refuses __gc: Lua runs
-- finalizers with hooks off, and marks an object for finalization only if
-- its metatable has __gc when it is set.
local function metatable_functions(env)
  local own = setmetatable({}, { __mode = "k" })
  local string_meta = setmetatable({}, {
    __index = function(_, k) if k == "__index" then return env.string end end,
    __newindex = function() error("the string metatable is read-only in a workflow", 2) end,
    __metatable = false,
  })
  local function sandbox_getmetatable(v)
    if type(v) == "string" then return string_meta end
    local meta = getmetatable(v)
    if type(meta) ~= "table" or own[meta] then return meta end
    local name = rawget(meta, "__name")
    return type(name) == "string" and name or false
  end
  local function sandbox_setmetatable(t, meta)
    local old = getmetatable(t)
    if old ~= nil and not own[old] then
      error("setmetatable: not on a value whose metatable the workflow file did not set", 2)
    end
    if type(meta) == "table" then
      if rawget(meta, "__gc") ~= nil then refuse("__gc (a finalizer)", NO_FINALIZERS, 2) end
      own[meta] = true
    end
    return setmetatable(t, meta)
  end
  -- rawset bypasses __newindex: only on tables whose metatable the file
  -- set (else a file could plant a 'new' in a workflow it hands the host)
  local function sandbox_rawset(t, k, v)
    local meta = getmetatable(t)
    if meta ~= nil and not own[meta] then
      error("rawset: not on a value whose metatable the workflow file did not set", 2)
    end
    return rawset(t, k, v)
  end
  return sandbox_getmetatable, sandbox_setmetatable, sandbox_rawset
end

-- xpcall in the sandbox: the message handler runs once the call has
-- failed and unwound, as an ordinary call (under the budget, with hooks
-- on). With no debug library a handler cannot tell the difference, except
-- that an error in the handler is returned (as xpcall returns a status
-- error) rather than handled again.
local function after_call(handler, ok, ...)
  if ok then return true, ... end
  return false, select(2, pcall(handler, (...)))
end

local function sandbox_xpcall(f, handler, ...)
  if type(handler) ~= "function" then
    error(string.format("bad argument #2 to 'xpcall' (function expected, got %s)",
                        type(handler)), 2)
  end
  return after_call(handler, pcall(f, ...))
end

-- The most a sandboxed workflow may ask for, from the host's limits:
-- { budget = instructions, memory = bytes } (default: the defaults).
local function host_of(limits, who)
  limits = limits or {}
  if type(limits) ~= "table" then error(who .. ": limits must be a table, got " .. type(limits), 3) end
  local host = { sandboxed = true }
  for field, default in pairs { budget = workflow.DEFAULT_BUDGET, memory = workflow.DEFAULT_MEMORY } do
    local v = limits[field]
    if v == nil then v = default end
    if math.type(v) ~= "integer" or v <= 0 then
      error(string.format("%s: limits.%s must be a positive integer, got %s", who, field, tostring(v)), 3)
    end
    host["max_" .. field] = v
  end
  return host
end

--- environment([host]) -> a fresh environment for one workflow file.
function M.environment(host)
  host = host or host_of(nil, "procman.sandbox")
  guard_string_methods()
  local env = {}
  for _, name in ipairs(SAFE_GLOBALS) do env[name] = _G[name] end
  for name in pairs(FORBIDDEN_FIELDS) do env[name] = library(name) end
  env.getmetatable, env.setmetatable, env.rawset = metatable_functions(env)
  env.xpcall = sandbox_xpcall
  env.tonumber = bounded.tonumber
  env.procman = { workflow = function(def) return workflow.define(def, host) end,
                  after = timers.after, at = timers.at, cancel = timers.cancel,
                  patched = patches.patched, deprecate_patch = patches.deprecate_patch }
  env._G = env
  return setmetatable(env, {
    __index = function(_, k)
      local why = FORBIDDEN[k]
      if why then refuse(k, why, 2) end
    end,
    __metatable = false,
  })
end

-- The error of a file's top level, naming the file: an error raised in it
-- has its place ("file.lua:3: ..."); one that has none (its budget or
-- memory ran out, error(x, 0), an error object) gets the file's name.
local function top_level_error(err, where, host)
  local text = message(err)
  if text:sub(1, #where + 1) == where .. ":" then return text end
  local limit = text == "not enough memory"
    and string.format(" (its memory budget: %d bytes, the host's limits.memory)", host.max_memory) or ""
  return string.format("%s: %s, running the file's top level%s", where, text, limit)
end

-- Run a loaded chunk (under the host's most) and check it returned a workflow.
local function run(chunk, where, host)
  local ok, wf = pcall(core.guard(chunk, host.max_budget, host.max_memory, core.guard_flags.sandbox,
                                  nil, message))
  if not ok then return nil, top_level_error(wf, where, host) end
  if not workflow.is_workflow(wf) then
    return nil, string.format("%s: a workflow file must return a workflow (procman.workflow "
                              .. "{ ... }), got %s", where, type(wf))
  end
  return wf
end

--- procman.loadstring(source[, chunkname[, limits]]) -> workflow, or nil, message.
-- Text only: precompiled chunks are refused (they can crash the VM).
-- 'limits' = { budget = n, memory = n }: the most the file's workflows
-- may ask for (default: the default budgets).
function M.loadstring(source, chunkname, limits)
  if type(source) ~= "string" then
    error("procman.loadstring: source must be a string, got " .. type(source), 2)
  end
  local host = host_of(limits, "procman.loadstring")
  chunkname = chunkname or "=(workflow)"
  local chunk, err = load(source, chunkname, "t", M.environment(host))
  if not chunk then return nil, err end
  return run(chunk, (chunkname:gsub("^[=@]", "")), host)
end

--- path_of(name) -> the file of a workflow named on a command line: a
-- path as it is, or the name of a shipped workflow ("batch", "order");
-- nil and a message for a bare name that is neither.
function M.path_of(name)
  if name:find("[/.]") then return name end
  local path = package.searchpath("procman.workflows." .. name, package.path)
  if path then return path end
  return nil, string.format("%s: no such file, and not a shipped workflow (batch, order)", name)
end

--- procman.load(path[, limits]) -> workflow, or nil, message (limits: as
-- for loadstring).
function M.load(path, limits)
  if type(path) ~= "string" then error("procman.load: path must be a string, got " .. type(path), 2) end
  local host = host_of(limits, "procman.load")
  local chunk, err = loadfile(path, "t", M.environment(host))
  if not chunk then return nil, err end
  return run(chunk, path, host)
end

return M
