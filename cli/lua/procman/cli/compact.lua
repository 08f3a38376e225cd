--- procman compact FILE WORKFLOW_FILE...: rewrite a journal as the state
-- it holds, as r:compact() does, from the command line. The router opened
-- on it needs the code of every version its live flows run (it replays
-- them first); a router still running on the journal holds its lock, and
-- the command then fails without touching it.

return function(args, cli)
  local before = io.open(args.journal, "rb")
  if not before then cli.fail(1, "%s: no such journal", args.journal) end
  local size = before:seek("end")
  before:close()
  local r = cli.router {
    workflows = cli.load_workflows(args.workflows), journal = args.journal, sync = "always",
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
