--- procman compact FILE WORKFLOW_FILE...: rewrite a journal as the state
-- it holds, as r:compact() does, from the command line. The router opened
-- on it needs the code of every version its live flows run (it replays
-- them first); a router still running on the journal holds its lock, and
-- the command then fails without touching it. A journal without records
-- (an empty file, or only its header) has nothing to compact: it is left
-- as it is (a compacted journal starts with a record of the state, so
-- "compacting" it would make it bigger).
local core = require "procman.core"

-- Does the journal at 'path' hold no record (and no torn tail or damage,
-- which opening it would deal with)? A file that is no journal: false,
-- and the router says what is wrong with it.
local function has_no_records(path)
  local _, info = core.journal_scan(path)
  return type(info) == "table" and info.records == 0 and info.dropped == 0 and info.damaged_at == nil
end

return function(args, cli)
  local before = io.open(args.journal, "rb")
  if not before then cli.fail(1, "%s: no such journal", args.journal) end
  local size = before:seek("end")
  before:close()
  if has_no_records(args.journal) then
    cli.io.stdout:write(string.format("%s: %d bytes, no records: nothing to compact\n", args.journal, size))
    return 0
  end
  local r = cli.router {
    workflows = cli.load_workflows(args.workflows), journal = args.journal, sync = "always",
    repair = args.repair,
    warn = function(msg) cli.io.stderr:write("procman compact: ", msg, "\n") end,
  }
  local stats = r:stats()
  local ok, why = r:compact()
  if not ok then
    r:close()
    cli.fail(1, "%s", why)
  end
  local after = r:stats().journal_bytes
  r:close()
  cli.io.stdout:write(string.format("%s: %d bytes -> %d bytes (%d live flows, %d completed, "
                                    .. "%d pending commands)\n", args.journal, size, after,
                                    stats.live, stats.completed, stats.pending))
  return 0
end
