--- procman parked FILE [--json]: the parked flows of a journal, read
-- without the workflow code and without its lock.
-- procman resume FILE WORKFLOW FLOW WORKFLOW_FILE...: retry a parked
-- flow's events in order (after fixing the code); status 1 if it parks
-- again. procman skip ...: drop the first parked event (journaled), then
-- resume the rest.
--
-- resume and skip open a router on the journal (with the workflow code,
-- to recover), so no other process may hold it: stop `procman run` first.
-- The commands they emit stay pending in the outbox: the next `procman
-- run` sends them.
local journal_view = require "procman.journal_view"
local operations = require "procman.operations"
local json = require "procman.cli.json"

local function list(args, cli)
  local view, err = journal_view.read(args.journal)
  if not view then cli.fail(1, "%s", err) end
  local parked = journal_view.parked(view)
  local text = args.json and assert(json.encode(json.array(parked))) or operations.parked_text(parked)
  cli.io.stdout:write(text, "\n")
  return 0
end

local function act(args, cli)
  local r <close> = cli.open_router(args.journal, args.workflows)
  local flow_id = cli.flow_id(args.flow)
  local called, ok, text = pcall(operations.resume, r, args.workflow, flow_id, args.command == "skip")
  if not called then cli.fail(1, "%s", tostring(ok)) end
  if ok == nil then cli.fail(1, "%s", text) end
  local closed, err = r:close()
  if not closed then cli.fail(1, "%s", err) end
  if not ok then cli.fail(1, "%s", text) end
  cli.io.stdout:write(text, "\n")
  return 0
end

return function(args, cli)
  if args.command == "parked" then return list(args, cli) end
  return act(args, cli)
end
