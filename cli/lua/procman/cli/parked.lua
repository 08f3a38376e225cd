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

local function act(args, cli)
  local parked_again
  local text = cli.act_on_journal(args, function(r)
    local ok, text = operations.resume(r, args.workflow, cli.flow_id(args.flow), args.command == "skip")
    if ok == nil then return nil, text end  -- the journal failed
    parked_again = not ok
    return text
  end)
  if parked_again then cli.fail(1, "%s", text) end
  cli.io.stdout:write(text, "\n")
  return 0
end

return function(args, cli)
  if args.command == "parked" then
    return cli.print_listing(args, journal_view.parked, operations.parked_text)
  end
  return act(args, cli)
end
