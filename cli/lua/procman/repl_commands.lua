--- procman.repl_commands: the REPL's dot commands, for exploring flows.
--
--   .help              these commands
--   .load FILE         load a workflow file (sandboxed) as a global named after it
--   .journal FILE      open a router on FILE with the session's workflows, as r
--   .timeline PM       each event of a flow, with its commands, status and state after
--   .pending           the router's outbox: play the gateway by hand
--   .ack ID            ack a pending command (after doing its work by hand)
--   .parked, .resume WORKFLOW FLOW, .skip WORKFLOW FLOW: parked flows of r
--   .dead, .retry ID, .drop ID: dead letters of r (procman.operations)
--
-- A Lua line never starts with '.', so these cannot shadow code. Each
-- returns the text to show; errors are raised as strings and shown by the
-- session like any other error.
local procman = require "procman"
local core = require "procman.core"
local pretty = require "procman.pretty"
local sandbox = require "procman.sandbox"
local operations = require "procman.operations"

local M = {}

local HELP = [[
.help              these commands
.load FILE         load a workflow file (sandboxed; or batch, order) as a global named after it
.journal FILE      open a router on FILE with the session's workflows, as the global r
.timeline PM       a flow's events, each with its commands, status and state after it
.pending           the router r's outbox: the commands waiting for a gateway
.ack ID            ack a pending command of r (once you did its work by hand)
.parked            r's parked flows: error, first event, events held
.resume W FLOW     retry parked flow W/FLOW's events (after a fix); .skip W FLOW drops the first
.dead              r's dead letters: id, time, event, reason
.retry ID          hand dead letter ID's event to r again; .drop ID forgets it
Lua works as usual: pm:handle{ ... } returns the flow's commands; r:handle{ ... } routes an event
and returns the command envelopes it produced ({ id, workflow, flow, command }, pending until
acked); pm:state() and r:flow(name, id) look at a flow.]]

local function fail(fmt, ...)
  error(string.format(fmt, ...), 0)
end

local function need_argument(arg, usage)
  if arg == "" then fail("usage: %s", usage) end
  return arg
end

local function router_of(session)
  local r = rawget(session.env, "r")
  if getmetatable(r) == nil or tostring(r):find("^procman.router") == nil then
    fail("no router: open one with .journal FILE (or set r = procman.router { ... })")
  end
  return r
end

function M.help()
  return HELP
end

function M.load(session, arg)
  local path, why = sandbox.path_of(need_argument(arg, ".load FILE"))
  if not path then fail("%s", why) end
  local wf, err = procman.load(path)
  if not wf then fail("%s", err) end
  session.workflows[wf.name] = wf
  session.env[wf.name] = wf
  return string.format("%s (as the global %s)", tostring(wf), wf.name)
end

function M.journal(session, arg)
  local path = need_argument(arg, ".journal FILE")
  local list = {}
  for _, wf in pairs(session.workflows) do list[#list + 1] = wf end
  table.sort(list, function(a, b) return a.name < b.name end)
  local old = rawget(session.env, "r")
  if getmetatable(old) and tostring(old):find("^procman.router") then old:close() end
  local r, err = procman.router { workflows = list, journal = path,
                                  warn = function(msg) session.warnings[#session.warnings + 1] = msg end }
  if not r then fail("%s", err) end
  session.env.r = r
  return tostring(r) .. " as r"
end

-- Replay a flow's history step by step from where it starts.
function M.timeline(session, arg)
  local expr = need_argument(arg, ".timeline PM (an expression giving a procman.pm)")
  local fn, err = load("return " .. expr, "=.timeline", "t", session.env)
  if not fn then fail("%s", err) end
  local pm = fn()
  if tostring(pm):find("^procman.pm:") == nil then
    fail(".timeline needs a procman.pm, got %s", pretty.format(pm))
  end
  local spec, base = core.origin(pm)
  local history = pm:history()
  local version = pm:version() - #history
  local replica = base and core.restore(spec, pm:id(), base, version, {}) or core.new(spec, pm:id())
  local lines = { string.format("%s: %d events%s", tostring(pm), #history,
                                base and string.format(" since its snapshot at v%d", version) or "") }
  for _, event in ipairs(history) do
    local commands = replica:handle(event)
    lines[#lines + 1] = string.format("v%d  %s", replica:version(), pretty.block(event))
    lines[#lines + 1] = "    commands: " .. pretty.block(commands)
    lines[#lines + 1] = string.format("    status: %s  state: %s", replica:status(),
                                      pretty.block(replica:state()))
  end
  return table.concat(lines, "\n")
end

function M.pending(session)
  local pending = router_of(session):pending()
  if #pending == 0 then return "no pending commands" end
  local lines = {}
  for i, e in ipairs(pending) do lines[i] = string.format("%s  %s", e.id, pretty.format(e.command)) end
  return table.concat(lines, "\n")
end

function M.ack(session, arg)
  local r = router_of(session)
  local ok, err = r:ack(need_argument(arg, ".ack ID"))
  if not ok then fail("%s", err) end
  return string.format("acked; %d pending", #r:pending())
end

function M.parked(session)
  return operations.parked_text(router_of(session):parked())
end

-- WORKFLOW FLOW, as the command line takes them (digits: an integer id).
local function flow_args(arg, usage)
  local name, id = need_argument(arg, usage):match("^(%S+)%s+(%S+)$")
  if name == nil then fail("usage: %s", usage) end
  return name, math.tointeger(tonumber(id)) or id
end

local function resume(session, arg, skip)
  local name, id = flow_args(arg, skip and ".skip WORKFLOW FLOW" or ".resume WORKFLOW FLOW")
  local ok, text = operations.resume(router_of(session), name, id, skip)
  if ok == nil then fail("%s", text) end
  return text
end

function M.resume(session, arg) return resume(session, arg, false) end
function M.skip(session, arg) return resume(session, arg, true) end

function M.dead(session)
  return operations.dead_letters_text(router_of(session):dead_letters())
end

local function letter_id(arg, usage)
  local id = math.tointeger(tonumber(need_argument(arg, usage)))
  if id == nil then fail("usage: %s (an integer id: .dead lists them)", usage) end
  return id
end

function M.retry(session, arg)
  local text, err = operations.retry(router_of(session), letter_id(arg, ".retry ID"))
  if not text then fail("%s", err) end
  return text
end

function M.drop(session, arg)
  local text, err = operations.drop(router_of(session), letter_id(arg, ".drop ID"))
  if not text then fail("%s", err) end
  return text
end

--- run(session, line) -> the text to show, or nil when 'line' is not a
-- dot command.
function M.run(session, line)
  local name, arg = line:match("^%s*%.(%a+)%s*(.-)%s*$")
  if name == nil then return nil end
  local command = M[name]
  if command == nil or name == "run" then
    fail("unknown command .%s (.help lists them)", name)
  end
  return command(session, arg)
end

return M
