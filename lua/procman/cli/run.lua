--- procman run WORKFLOW_FILE... --journal FILE: events as JSON lines on
-- stdin, command envelopes as JSON lines on stdout.
--
-- Each envelope is acked once it is written and flushed, so a crash (or
-- a closed pipe) between the two leaves it pending, and the next run
-- sends it first: at-least-once, with ids receivers can deduplicate.
-- Timers fire as the wall clock passes them, checked at most once a
-- second between lines.
local procman = require "procman"
local core = require "procman.core"
local json = require "procman.cli.json"

local PROGRESS_EVERY = 1  -- seconds between progress lines

local function open_router(args, cli)
  local r, err = procman.router {
    workflows = cli.load_workflows(args.workflows),
    journal = args.journal, sync = args.sync,
    on_error = args.park and "park" or nil,
    on_unroutable = args.dead_letter and "dead_letter" or nil,
    warn = function(msg) cli.io.stderr:write("procman run: ", msg, "\n") end,
  }
  if not r then cli.fail(1, "%s", err) end
  return r
end

-- Write every pending envelope, acking each once it is out.
local function send_pending(r, cli, counts)
  local out = cli.io.stdout
  local _, err = r:dispatch(function(_, envelope)
    local line = assert(json.encode(envelope))
    assert(out:write(line, "\n"))
    assert(out:flush())
    counts.commands = counts.commands + 1
  end)
  if err then cli.fail(1, "cannot write a command to stdout: %s", tostring(err)) end
end

local function progress(cli, counts, final)
  cli.io.stderr:write(string.format("\r%d lines, %d events, %d commands, %d bad%s", counts.lines,
                                    counts.events, counts.commands, counts.bad, final and "\n" or ""))
end

-- Handle one line; false and the reason when it is bad.
local function handle_line(r, line, cli)
  local event, why = json.decode_event(line)
  if not event then return false, why end
  local ok, envelopes, err = pcall(r.handle, r, event)
  if not ok then return false, tostring(envelopes) end
  if envelopes == nil then cli.fail(1, "%s", err) end  -- the journal failed: stop
  return true
end

return function(args, cli)
  local r <close> = open_router(args, cli)
  local counts = { lines = 0, events = 0, commands = 0, bad = 0 }
  local show = not args.quiet and core.is_terminal(2)
  send_pending(r, cli, counts)  -- what an earlier run left
  local last_tick, last_progress = os.time(), os.time()
  for line in cli.io.stdin:lines() do
    counts.lines = counts.lines + 1
    if line:find("%S") then
      local ok, why = handle_line(r, line, cli)
      if ok then
        counts.events = counts.events + 1
      else
        counts.bad = counts.bad + 1
        cli.io.stderr:write(string.format("procman run: line %d: %s\n", counts.lines, why))
        if args.strict then cli.fail(1, "stopped at line %d (--strict)", counts.lines) end
      end
    end
    local now = os.time()
    if now ~= last_tick then
      local ok, fired, err = pcall(r.tick, r, now)
      if not ok then cli.io.stderr:write("procman run: a timer's event failed: ", tostring(fired), "\n") end
      if ok and fired == nil then cli.fail(1, "%s", err) end
      last_tick = now
    end
    send_pending(r, cli, counts)
    if show and now - last_progress >= PROGRESS_EVERY then
      progress(cli, counts)
      last_progress = now
    end
  end
  if show then progress(cli, counts, true) end
  local ok, err = r:close()
  if not ok then cli.fail(1, "%s", err) end
  return 0
end
