--- procman dead-letters FILE [--json]: each dead letter of a journal (id,
-- time, event, reason), read without the workflow code and without its lock.
-- procman retry-dead-letter FILE ID WORKFLOW_FILE...: hand the letter's
-- event to the router again; it leaves the dead letters in the same
-- journal record. procman drop-dead-letter FILE ID WORKFLOW_FILE...:
-- forget it (journaled).
--
-- Retrying and dropping open a router on the journal (with the workflow
-- code, to recover), so no other process may hold it: stop `procman run`
-- first. Commands a retried event emits stay pending for the next run.
local journal_view = require "procman.journal_view"
local operations = require "procman.operations"

local function act(args, cli)
  local id = math.tointeger(tonumber(args.id))
  if id == nil then
    cli.fail(2, "a dead letter id is an integer (procman dead-letters lists them), got %s", args.id)
  end
  local action = args.command == "retry-dead-letter" and operations.retry or operations.drop
  local text = cli.act_on_journal(args, function(r) return action(r, id) end)
  cli.io.stdout:write(text, "\n")
  return 0
end

return function(args, cli)
  if args.command == "dead-letters" then
    return cli.print_listing(args, journal_view.dead_letters, operations.dead_letters_text)
  end
  return act(args, cli)
end
