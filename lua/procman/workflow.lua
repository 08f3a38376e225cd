--- procman.workflow: check a workflow definition and build the workflow.
--
-- A workflow is the code of one kind of flow: its handlers per event type,
-- its initial state and how to find and finish its flows. The definition
-- is checked once, here, so that mistakes surface where they are written
-- (with the caller's file and line), not at the first event.
local core = require "procman.core"
local message = require "procman.message"
local did_you_mean = require("procman.describe").did_you_mean

local M = {}

-- Each field a definition may have, and how to check it.
local FIELDS = { "name", "on", "init", "correlate", "starts", "done", "status", "view", "budget",
                 "memory", "version" }

-- Instructions one handler call may run before it is stopped: enough for
-- a batch of millions of files, little enough to stop a runaway loop in
-- about a second.
local DEFAULT_BUDGET = 100000000
M.DEFAULT_BUDGET = DEFAULT_BUDGET
-- Bytes the Lua heap may grow by during one call: room for what the
-- instruction budget lets a handler build (a batch of two million files,
-- its state and its commands: about 350 MiB; one million: 170 MiB),
-- little enough that a memory bomb fails the call long before the machine
-- runs out.
local DEFAULT_MEMORY = 512 * 1024 * 1024
M.DEFAULT_MEMORY = DEFAULT_MEMORY
local KNOWN = {}
for _, f in ipairs(FIELDS) do KNOWN[f] = true end

-- The checked definitions behind workflow objects (weak: a workflow that
-- is no longer used may be collected).
local specs = setmetatable({}, { __mode = "k" })

local function describe(v)
  if type(v) == "string" then return string.format("%q", v) end
  return type(v)
end

-- Raise "procman.workflow 'name': message" at the caller of define().
local function fail(name, fmt, ...)
  local who = name and string.format("procman.workflow '%s'", name) or "procman.workflow"
  error(who .. ": " .. string.format(fmt, ...), 4)
end

local function check_optional_function(def, field)
  local v = rawget(def, field)
  if v ~= nil and type(v) ~= "function" then
    fail(def.name, "%s must be a function, got %s", field, describe(v))
  end
  return v
end

local function check_name(def)
  if type(def) ~= "table" then
    fail(nil, "the definition must be a table, got %s", describe(def))
  end
  local name = rawget(def, "name")
  if type(name) ~= "string" or name == "" then
    fail(nil, "name must be a non-empty string, got %s", describe(name))
  end
  if name:find("/", 1, true) then
    fail(nil, "name %q must not contain '/' (flows are named workflow/id)", name)
  end
  return name
end

local function check_handlers(def, name)
  local on = rawget(def, "on")
  if type(on) ~= "table" then
    fail(name, "on must be a table of handlers by event type, got %s", describe(on))
  end
  local copy = {}
  for event_type, handler in next, on do
    if type(event_type) ~= "string" or event_type == "" then
      fail(name, "on has a key %s: event types are non-empty strings", describe(event_type))
    end
    if type(handler) ~= "function" then
      fail(name, "on.%s must be a function(state, event), got %s", event_type, describe(handler))
    end
    copy[event_type] = handler
  end
  if next(copy) == nil then
    fail(name, "on must have at least one handler")
  end
  return copy
end

local function check_correlate(def, name)
  local c = rawget(def, "correlate")
  if c == nil or type(c) == "function" or (type(c) == "string" and c ~= "") then
    return c
  end
  fail(name, "correlate must be an event field name or a function(event), got %s", describe(c))
end

local function check_starts(def, name, on)
  local starts = rawget(def, "starts")
  if starts == nil then return {} end
  if type(starts) ~= "table" then
    fail(name, "starts must be an array of event types, got %s", describe(starts))
  end
  local copy = {}
  for i = 1, #starts do
    local t = starts[i]
    if type(t) ~= "string" or on[t] == nil then
      fail(name, "starts[%d] is %s, which has no handler in on", i, describe(t))
    end
    copy[i] = t
  end
  for k in next, starts do
    if math.type(k) ~= "integer" or k < 1 or k > #starts then
      fail(name, "starts must be an array, but has the key %s", describe(k))
    end
  end
  return copy
end

-- version: which code of the workflow this is (an integer >= 1, default
-- 1). A router given several versions of one name starts new flows on the
-- highest and keeps each flow on the version it started with.
local function check_version(def, name)
  local v = rawget(def, "version")
  if v == nil then return 1 end
  if math.type(v) == "integer" and v >= 1 then return v end
  fail(name, "version must be an integer >= 1, got %s", describe(v))
end

-- budget and memory: a positive integer (VM instructions, bytes) per call
-- into the workflow's code, or false for no limit. 'host' says what the
-- code may ask for: sandboxed code (host.max_budget, host.max_memory set)
-- may not ask for more than those, nor for no limit.
local LIMITS = {
  budget = { default = DEFAULT_BUDGET, max = "max_budget", unit = "instructions per call" },
  memory = { default = DEFAULT_MEMORY, max = "max_memory", unit = "bytes per call" },
}

local function check_limit(def, name, field, host)
  local rule, v = LIMITS[field], rawget(def, field)
  local max = host and host[rule.max]
  if v == nil then
    if max and max < rule.default then return max end
    return rule.default
  end
  if v ~= false and not (math.type(v) == "integer" and v > 0) then
    -- a number says what it is: 1e9 is a float, not the integer it looks like
    local got = type(v) == "number" and string.format("%s (%s)", tostring(v), math.type(v)) or describe(v)
    fail(name, "%s must be a positive integer (%s) or false, got %s", field, rule.unit, got)
  end
  if max and (v == false or v > max) then
    fail(name, "%s = %s is more than this sandbox allows (at most %d %s; the host sets it)",
         field, tostring(v), max, rule.unit)
  end
  return v
end

-- Every function of the workflow, wrapped so that each call runs under
-- the workflow's budgets (csrc/budget.c). Sandboxed code also gets the
-- bounded string methods, table results copied (data without metatables
-- reach the library) and error objects turned into text under a budget.
local FLAGS = core.guard_flags

local function guarded(fn, spec, label, results_are_data)
  if fn == nil or (spec.budget == false and spec.memory == false and not spec.sandboxed) then
    return fn
  end
  local flags = 0
  if spec.sandboxed then
    flags = FLAGS.sandbox + (results_are_data and FLAGS.copy or 0)
  end
  -- "order's done: ...": the router passes these errors on as they are
  label = label and string.format("%s's %s", spec.name, label)
  return core.guard(fn, spec.budget, spec.memory, flags, label, spec.sandboxed and message or nil)
end

local function guard_functions(spec)
  for event_type, handler in next, spec.on do
    spec.on[event_type] = guarded(handler, spec, nil, true)
  end
  spec.init = guarded(spec.init, spec, "init", true)
  spec.done = guarded(spec.done, spec, "done", false)
  spec.status = guarded(spec.status, spec, "status", false)
  spec.view = guarded(spec.view, spec, "view", true)
  if type(spec.correlate) == "function" then
    spec.correlate = guarded(spec.correlate, spec, "correlate", true)
  end
end

local function check_fields(def)
  for key in next, def do
    if not KNOWN[key] then
      fail(rawget(def, "name"), "unknown field %s%s; the fields are %s",
           describe(key), did_you_mean(key, FIELDS), table.concat(FIELDS, ", "))
    end
  end
end

-- The workflow object users see: read-only, fields and methods.
local Workflow = {}

local meta = {
  __name = "procman.workflow",
  -- The methods, as a plain table for tools that must not call __index
  -- (the REPL's Tab completion reads it with rawget).
  __methods = Workflow,
  __index = function(self, key)
    local m = Workflow[key]
    if m ~= nil then return m end
    local v = specs[self].fields[key]
    if type(v) == "table" then  -- hand out copies: the definition is frozen
      local copy = {}
      for k, x in next, v do copy[k] = x end
      return copy
    end
    return v
  end,
  __newindex = function(self, key)
    error(string.format("procman.workflow '%s' is read-only (tried to set %s)",
                        specs[self].name, describe(key)), 2)
  end,
  __tostring = function(self)
    local spec = specs[self]
    if spec.version == 1 then return "procman.workflow: " .. spec.name end
    return string.format("procman.workflow: %s v%d", spec.name, spec.version)
  end,
}

--- wf:new(flow_id) -> a procman.pm for flow 'flow_id'.
function Workflow:new(flow_id)
  local spec = specs[self]
  if spec == nil then error("procman.workflow: new must be called as wf:new(id)", 2) end
  return core.new(spec, flow_id)
end

--- wf:handles(event_type) -> true if the workflow has a handler for it.
function Workflow:handles(event_type)
  return specs[self].on[event_type] ~= nil
end

--- wf:starts_on(event_type) -> true if that event type may start a flow.
function Workflow:starts_on(event_type)
  return specs[self].starts_set[event_type] == true
end

--- procman.workflow(def) -> workflow. Raises on a bad definition.
-- 'host' (for the sandbox): { sandboxed = true, max_budget = n, max_memory = n }.
function M.define(def, host)
  local name = check_name(def)
  check_fields(def)
  local on = check_handlers(def, name)
  local spec = {
    name = name,
    version = check_version(def, name),
    on = on,
    init = check_optional_function(def, "init"),
    correlate = check_correlate(def, name),
    starts = check_starts(def, name, on),
    done = check_optional_function(def, "done"),
    status = check_optional_function(def, "status"),
    view = check_optional_function(def, "view"),
    budget = check_limit(def, name, "budget", host),
    memory = check_limit(def, name, "memory", host),
    sandboxed = host ~= nil and host.sandboxed or nil,
    starts_set = {},
  }
  spec.fields = { name = name, version = spec.version, budget = spec.budget,  -- as written
                  memory = spec.memory }
  for _, field in ipairs { "on", "init", "correlate", "starts", "done", "status", "view" } do
    spec.fields[field] = spec[field]
  end
  spec.on = {}  -- the runtime's: every function guarded
  for k, v in next, spec.fields.on do spec.on[k] = v end
  guard_functions(spec)
  if spec.sandboxed then  -- the host never runs sandboxed code unguarded, even by wf.on.x(...)
    for _, field in ipairs { "on", "init", "correlate", "done", "status", "view" } do
      spec.fields[field] = spec[field]
    end
  end
  for _, t in ipairs(spec.starts) do spec.starts_set[t] = true end
  local wf = setmetatable({}, meta)
  specs[wf] = spec
  return wf
end

--- The checked definition behind a workflow object (for the runtime).
function M.spec(wf)
  return specs[wf]
end

-- Add one version of a workflow to 'by_name' (the newest of each name)
-- and 'versions' (name -> version -> spec); nil or what is wrong.
local function add_version(spec, i, by_name, versions)
  local name = spec.name
  local known = versions[name]
  if known and known[spec.version] then
    local which = spec.version == 1 and "" or string.format(" with version %d", spec.version)
    return string.format("workflows[%d]: two workflows are named %q%s", i, name, which)
  end
  if spec.correlate == nil then
    return string.format("workflow %q has no correlate: its flows cannot be told apart", name)
  end
  versions[name] = known or {}
  versions[name][spec.version] = spec
  if by_name[name] == nil or spec.version > by_name[name].version then by_name[name] = spec end
  return nil
end

--- routable(list) -> specs, by_name, versions; or nil and what is wrong:
-- the workflows of a router or a worker, which must be a non-empty array
-- of workflows, each with a correlate (a router cannot tell a workflow's
-- flows apart without one). One name may come in several versions:
-- 'specs' holds the newest of each name (in the order the names first
-- appear), 'by_name' the same by name, 'versions' name -> version -> spec.
-- Read with rawlen/rawget.
function M.routable(list)
  if type(list) ~= "table" or rawlen(list) == 0 then
    return nil, string.format("workflows must be a non-empty array of workflows, got %s", type(list))
  end
  local names, by_name, versions = {}, {}, {}
  for i = 1, rawlen(list) do
    local wf = rawget(list, i)
    local spec = specs[wf]
    if spec == nil then
      -- { require "m" } also keeps require's second result, the file name
      local hint = (type(wf) == "string" and wf:match("%.lua$"))
                   and "; a second result of require? write (require \"...\")" or ""
      return nil, string.format("workflows[%d] is not a workflow (see procman.workflow)%s", i, hint)
    end
    if versions[spec.name] == nil then names[#names + 1] = spec.name end
    local why = add_version(spec, i, by_name, versions)
    if why then return nil, why end
  end
  local ordered = {}
  for i, name in ipairs(names) do ordered[i] = by_name[name] end
  return ordered, by_name, versions
end

--- flow_id(spec, event) -> the id of the flow of workflow 'spec' that the
-- event is for; or nil and why not (the field is missing, or the id is not
-- a non-empty string or an integer: a table would name no flow). One rule
-- for every runtime that routes (the router's wording; procman.pg's worker).
function M.flow_id(spec, event)
  local c = spec.correlate
  local ok, id = true, nil  -- luacheck: ignore 311
  if type(c) == "string" then id = rawget(event, c) else ok, id = pcall(c, event) end
  local event_type = rawget(event, "event_type")
  if not ok then
    return nil, string.format("event '%s': correlate of workflow %q failed: %s", event_type, spec.name,
                              tostring(id))
  end
  if id == nil then
    local how = type(c) == "string" and ("the field " .. c) or "a flow id (correlate returned nil)"
    return nil, string.format("event '%s' lacks %s, which workflow %q needs", event_type, how, spec.name)
  end
  if not (math.type(id) == "integer" or (type(id) == "string" and id ~= "")) then
    return nil, string.format("event '%s': flow id for workflow %q must be a non-empty string or an integer, "
                              .. "got %s", event_type, spec.name, type(id))
  end
  return id
end

--- Is 'v' a workflow object?
function M.is_workflow(v)
  return specs[v] ~= nil
end

return M
