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
local core = require "procman.core"
local workflow = require "procman.workflow"
local timers = require "procman.timers"
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

-- Fields of the libraries that are left out, and why.
local FORBIDDEN_FIELDS = {
  string = { dump = "string.dump turns code into bytes to load elsewhere: " .. SIDE_EFFECT },
  math = { random = TIME_AND_CHANCE, randomseed = TIME_AND_CHANCE },
  table = {},
  utf8 = {},
}

local SAFE_GLOBALS = {
  "assert", "error", "ipairs", "next", "pairs", "pcall", "rawequal", "rawget", "rawlen", "rawset",
  "select", "setmetatable", "tonumber", "tostring", "type", "xpcall", "_VERSION",
}

local function refuse(name, why, level)
  error(string.format("%s is not available in a workflow: %s", name, why), level + 1)
end

-- A copy of a library without its forbidden fields; reading one raises.
local function library(name)
  local forbidden, copy = FORBIDDEN_FIELDS[name], {}
  for k, v in pairs(_G[name]) do
    if forbidden[k] == nil then copy[k] = v end
  end
  return setmetatable(copy, {
    __index = function(_, k)
      local why = forbidden[k]
      if why then refuse(name .. "." .. k, why, 2) end
    end,
  })
end

-- Strings index the real 'string' table through their metatable, so
-- ("").dump would hand out string.dump. The metatable's __index becomes a
-- table that refuses 'dump' and falls through to 'string' for the rest
-- (so functions added to 'string' later still work as methods). Done once,
-- when the first sandbox is made; string.dump itself is untouched.
local function guard_string_methods()
  local meta = getmetatable("")
  if meta.__index ~= string then return end
  local why = FORBIDDEN_FIELDS.string.dump
  meta.__index = setmetatable({
    dump = function() refuse("string.dump", why, 2) end,
  }, { __index = string })
end

-- getmetatable in the sandbox: for strings, a stand-in whose __index is
-- the sandbox's own string library.
local function sandbox_getmetatable(env)
  local string_meta = setmetatable({}, {
    __index = function(_, k) if k == "__index" then return env.string end end,
    __newindex = function() error("the string metatable is read-only in a workflow", 2) end,
  })
  return function(v)
    if type(v) == "string" then return string_meta end
    return getmetatable(v)
  end
end

--- environment() -> a fresh environment for one workflow file.
function M.environment()
  guard_string_methods()
  local env = {}
  for _, name in ipairs(SAFE_GLOBALS) do env[name] = _G[name] end
  for name in pairs(FORBIDDEN_FIELDS) do env[name] = library(name) end
  env.getmetatable = sandbox_getmetatable(env)
  env.procman = { workflow = workflow.define, after = timers.after, at = timers.at,
                  cancel = timers.cancel, patched = patches.patched,
                  deprecate_patch = patches.deprecate_patch }
  env._G = env
  return setmetatable(env, {
    __index = function(_, k)
      local why = FORBIDDEN[k]
      if why then refuse(k, why, 2) end
    end,
    __metatable = false,
  })
end

-- Run a loaded chunk (with its budget) and check it returned a workflow.
local function run(chunk, where)
  local ok, wf = core.budget_call(workflow.DEFAULT_BUDGET, chunk)
  if not ok then return nil, tostring(wf) end
  if not workflow.is_workflow(wf) then
    return nil, string.format("%s: a workflow file must return a workflow (procman.workflow "
                              .. "{ ... }), got %s", where, type(wf))
  end
  return wf
end

--- procman.loadstring(source[, chunkname]) -> workflow, or nil, message.
-- Text only: precompiled chunks are refused (they can crash the VM).
function M.loadstring(source, chunkname)
  if type(source) ~= "string" then
    error("procman.loadstring: source must be a string, got " .. type(source), 2)
  end
  chunkname = chunkname or "=(workflow)"
  local chunk, err = load(source, chunkname, "t", M.environment())
  if not chunk then return nil, err end
  return run(chunk, (chunkname:gsub("^[=@]", "")))
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

--- procman.load(path) -> workflow, or nil, message.
function M.load(path)
  if type(path) ~= "string" then error("procman.load: path must be a string, got " .. type(path), 2) end
  local chunk, err = loadfile(path, "t", M.environment())
  if not chunk then return nil, err end
  return run(chunk, path)
end

return M
