--- procman.cli: the procman command (bin/procman is a thin wrapper).
--
--   procman [repl] [--journal FILE] [WORKFLOW_FILE ...]
--   procman run WORKFLOW_FILE... --journal FILE [--sync S] [--strict] [--quiet] [--repair]
--   procman inspect FILE|CONNINFO [--workflow W] [--flow ID] [--status S] [--json]
--   procman verify FILE WORKFLOW_FILE... [--live]
--   procman compact FILE WORKFLOW_FILE... [--repair]
--   procman diagram FILE|CONNINFO [--workflow W] [--format mermaid|dot]
--   procman parked FILE [--json]
--   procman resume|skip FILE WORKFLOW FLOW WORKFLOW_FILE... [--repair]
--   procman dead-letters FILE [--json]
--   procman retry-dead-letter|drop-dead-letter FILE ID WORKFLOW_FILE... [--repair]
--
-- Unix habits: results on stdout, errors on stderr, status 0 for success,
-- 1 for a failure, 2 for a usage error. docs/cli.md is the manual.
local procman = require "procman"
local sandbox = require "procman.sandbox"

local M = {}

--- The streams a command uses (tests may pass their own).
M.io = { stdin = io.stdin, stdout = io.stdout, stderr = io.stderr }

--- A failure the command reports on stderr, with its exit status.
local Failure = {}
Failure.__index = Failure
Failure.__tostring = function(f) return f.message end

function M.fail(status, fmt, ...)
  error(setmetatable({ status = status, message = string.format(fmt, ...) }, Failure), 0)
end

--- A workflow named on the command line: a file (loaded in the sandbox),
-- or the name of a shipped workflow ("batch", "order").
function M.load_workflow(name)
  local path, why = sandbox.path_of(name)
  if not path then M.fail(1, "%s", why) end
  local wf, err = procman.load(path)
  if not wf then M.fail(1, "%s", err) end
  return wf
end

--- The workflows named on a command line: several versions of one name
-- are fine, one version twice is not.
function M.load_workflows(names)
  local list, seen = {}, {}
  for i, name in ipairs(names) do
    local wf = M.load_workflow(name)
    local key = wf.name .. "\0" .. wf.version
    if seen[key] then
      local which = wf.version == 1 and "" or string.format(" with version %d", wf.version)
      M.fail(1, "two workflows are named %q%s (%s)", wf.name, which, name)
    end
    list[i], seen[key] = wf, true
  end
  return list
end

--- procman.router for a command. What the router raises on opening a
-- journal this code cannot replay (a workflow not given, a divergence
-- under --on-divergence raise) is the command's failure, said in one
-- line, not a Lua traceback; the journal is left as it was. A damaged
-- journal's message names the command's flag (--repair), not the
-- router's option.
local function with_flag(message)
  return (message:gsub("open with repair = true to skip it", "run again with --repair to skip it"))
end

function M.router(opts)
  local built, r, err = pcall(procman.router, opts)
  if not built then M.fail(1, "%s", with_flag(tostring(r))) end
  if not r then M.fail(1, "%s", with_flag(err)) end
  return r
end

--- The --repair flag of the commands that open a router on a journal.
function M.repair_flag(command)
  command:flag("--repair", "Skip a damaged range of the journal (reported on stderr; the events in it "
                           .. "are lost) instead of failing.")
end

--- A router on a journal, for the commands that change it (resume, skip,
-- retry-dead-letter, drop-dead-letter): args.journal, args.workflows,
-- args.repair; warnings go to stderr.
function M.open_router(args)
  return M.router {
    workflows = M.load_workflows(args.workflows), journal = args.journal, repair = args.repair,
    warn = function(msg) M.io.stderr:write("procman: ", msg, "\n") end,
  }
end

--- print_listing(args, of_view, as_text): a list read from the journal
-- at rest, without the code or the lock (of_view(view) gives it), printed
-- as JSON with --json, else as as_text(list) gives it.
function M.print_listing(args, of_view, as_text)
  local journal_view, json = require "procman.journal_view", require "procman.cli.json"
  local view, err = journal_view.read(args.journal)
  if not view then M.fail(1, "%s", err) end
  local list = of_view(view)
  M.io.stdout:write(args.json and assert(json.encode(json.array(list))) or as_text(list), "\n")
  return 0
end

--- act_on_journal(args, action) -> what action(r) returns: a router on
-- the journal (open_router(args)) for one change, closed after it. An error
-- the action raises, or its nil, message (the journal failed), is a failure.
function M.act_on_journal(args, action)
  local r <close> = M.open_router(args)
  local called, text, err = pcall(action, r)
  if not called then M.fail(1, "%s", tostring(text)) end
  if text == nil then M.fail(1, "%s", err) end
  local closed, why = r:close()
  if not closed then M.fail(1, "%s", why) end
  return text
end

--- Parse a flow id from the command line: digits are an integer id, a
-- quoted text ("7") a string (procman.operations.flow_id).
M.flow_id = require("procman.operations").flow_id

-- A command that changes a journal through a router: the journal, its
-- own arguments ({ name, description } each), the workflow files, --repair.
local function journal_action(p, commands, name, what, arguments)
  local c = p:command(name, what)
  c:argument("journal", "The journal file (no other process may have it open).")
  for _, a in ipairs(arguments) do c:argument(a[1], a[2]) end
  c:argument("workflows", "Workflow files (or batch, order), as procman run was given."):args("+")
  M.repair_flag(c)
  commands[name] = c
end

-- The commands for parked flows and dead letters (docs/operations.md).
local function operator_commands(p, commands)
  local parked = p:command("parked", "List the parked flows of a journal: error, first event, events held.")
  parked:argument("journal", "The journal file.")
  parked:flag("--json", "Print JSON instead of text.")
  commands.parked = parked
  local flow = { { "workflow", "The workflow's name." }, { "flow", "The flow id." } }
  journal_action(p, commands, "resume", "Retry a parked flow's events in order (after a fix of its code). "
                                        .. "Status 1 if the flow parks again.", flow)
  journal_action(p, commands, "skip", "Drop a parked flow's first event (journaled), then resume the rest. "
                                      .. "Status 1 if the flow parks again.", flow)
  local dead = p:command("dead-letters", "List the dead letters of a journal: id, time, event, reason.")
  dead:argument("journal", "The journal file.")
  dead:flag("--json", "Print JSON instead of text.")
  commands["dead-letters"] = dead
  local letter = { { "id", "The dead letter's id (procman dead-letters lists them)." } }
  journal_action(p, commands, "retry-dead-letter", "Hand a dead letter's event to the router again.", letter)
  journal_action(p, commands, "drop-dead-letter", "Forget a dead letter (journaled).", letter)
end

-- The module that implements each command, when not named after it.
local MODULE_OF = { skip = "parked", resume = "parked", ["dead-letters"] = "dead_letters",
                    ["retry-dead-letter"] = "dead_letters", ["drop-dead-letter"] = "dead_letters" }

local function parser()
  local argparse = require "argparse"
  local p = argparse("procman", "Durable, event-sourced process managers for Lua 5.4.")
    :epilog("Each command has --help. From Lua: local procman = require \"procman\" (docs/api.md).")
    :command_target("command")
    :require_command(false)
  p:flag("-v --version", "Print the version and exit.")

  local repl = p:command("repl", "Explore flows interactively (the default): procman, batch and order "
                                 .. "are loaded.")
  repl:option("-j --journal", "Open a router on this journal, as the global r.")
  repl:argument("workflows", "Workflow files to load (sandboxed), as globals named after them."):args("*")

  local run = p:command("run", "Run workflows over JSON-lines events on stdin; commands as JSON lines "
                               .. "on stdout.")
  run:argument("workflows", "Workflow files (or batch, order)."):args("+")
  run:option("-j --journal", "The journal file (created if missing)."):count(1)
  run:option("--sync", "When the journal syncs: always, batch or none."):choices { "always", "batch", "none" }
     :default("always")
  run:flag("--strict", "Stop at the first bad line, with status 1.")
  run:flag("-q --quiet", "No progress line on stderr.")
  run:flag("--park", "Park a flow whose handler fails (on_error = \"park\") instead of reporting the line.")
  run:flag("--dead-letter", "Keep events no flow can take as dead letters instead of reporting the line.")
  run:option("--on-divergence", "When replaying the journal finds that the code returns other commands: "
                                .. "raise (stop) or warn (go on)."):choices { "raise", "warn" }
  run:option("--on-unknown", "Events of a type no workflow handles: ignore (said once per type on "
                             .. "stderr), dead_letter or raise (report the line).")
     :choices { "ignore", "dead_letter", "raise" }
  run:option("--on-late", "A new event for a completed flow that reaches no live flow: raise (report the "
                          .. "line), ignore or dead_letter."):choices { "raise", "ignore", "dead_letter" }
  M.repair_flag(run)

  local inspect = p:command("inspect", "Summarize a journal, list a workflow's flows, or show one "
                                       .. "flow's timeline.")
  inspect:argument("journal", "The journal file, or a PostgreSQL conninfo (host=... dbname=...).")
  inspect:option("-w --workflow", "List this workflow's flows.")
  inspect:option("-f --flow", "Show this flow's timeline (with --workflow when several workflows have it).")
  inspect:option("-s --status", "Only flows with this status.")
  inspect:flag("--json", "Print JSON instead of text.")
  inspect:flag("--metrics", "Print the state's gauges in Prometheus text format.")

  local verify = p:command("verify", "Replay a journal through workflow code and report every divergence.")
  verify:argument("journal", "The journal file.")
  verify:argument("workflows", "Workflow files (or batch, order); several versions of one workflow "
                               .. "are fine."):args("+")
  verify:flag("--live", "Only the flows still live at the end of the journal (those a deploy concerns).")

  local compact = p:command("compact", "Rewrite a journal as the state it holds (live flows, the completed "
                                       .. "set, pending commands, timers), so that opening it is quick.")
  compact:argument("journal", "The journal file (no router may have it open).")
  compact:argument("workflows", "Workflow files (or batch, order): every version live flows run."):args("+")
  M.repair_flag(compact)

  local diagram = p:command("diagram", "Draw a workflow's observed state machine from a journal.")
  diagram:argument("journal", "The journal file, or a PostgreSQL conninfo (host=... dbname=...).")
  diagram:option("-w --workflow", "The workflow (needed when the journal has several).")
  diagram:option("--format", "mermaid or dot."):choices { "mermaid", "dot" }:default("mermaid")

  local commands = { repl = repl, run = run, inspect = inspect, verify = verify, diagram = diagram,
                     compact = compact }
  operator_commands(p, commands)
  return p, commands
end

--- main(args) -> exit status.
function M.main(args)
  local has_argparse = pcall(require, "argparse")
  if not has_argparse then
    M.io.stderr:write("procman: needs argparse: luarocks install argparse ",
                      "(Debian: apt-get install lua-argparse)\n")
    return 1
  end
  local p, commands = parser()
  local ok, parsed = p:pparse(args)
  if not ok then  -- the usage of the command that was meant, if any
    local usage = (commands[args[1]] or p):get_usage()
    M.io.stderr:write(usage, "\n\nprocman: ", parsed, "\n")
    return 2
  end
  if parsed.version then
    M.io.stdout:write(procman._VERSION, "\n")
    return 0
  end
  local command = parsed.command or "repl"
  parsed.command = command
  local done, status = pcall(require("procman.cli." .. (MODULE_OF[command] or command)), parsed, M)
  if done then return status or 0 end
  if getmetatable(status) == Failure then
    M.io.stderr:write("procman ", command, ": ", status.message, "\n")
    return status.status
  end
  error(status, 0)
end

return M
