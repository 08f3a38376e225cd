--- procman run WORKFLOW_FILE... --journal FILE: events as JSON lines on
-- stdin, command envelopes as JSON lines on stdout.
--
-- Each envelope is acked once it is written and flushed, so a crash (or
-- a closed pipe) between the two leaves it pending, and the next run
-- sends it first: at-least-once, with ids receivers can deduplicate.
-- Timers fire as the wall clock (os.time) passes them: before the first
-- line is read (a timer that fell due while no run was going fires before
-- a late event can overtake it), while the input is quiet (stdin is read
-- through terminal.line_reader, which waits for a line at most until the next
-- timer is due) and at the end of the input.
local terminal = require "procman.terminal"
local json = require "procman.cli.json"

local PROGRESS_EVERY = 1  -- seconds between progress lines

local function open_router(args, cli)
  return cli.router {
    workflows = cli.load_workflows(args.workflows),
    journal = args.journal, sync = args.sync, repair = args.repair,
    on_error = args.park and "park" or nil,
    on_unroutable = args.dead_letter and "dead_letter" or nil,
    on_unknown = args.on_unknown, on_late = args.on_late,
    on_divergence = args.on_divergence,
    warn = function(msg) cli.io.stderr:write("procman run: ", msg, "\n") end,
  }
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

-- An event type no workflow handles, dropped (on_unknown = "ignore"): said
-- on stderr, once per type.
local function report_ignored(r, event, cli, ignored)
  local event_type = event.event_type
  if ignored == nil or ignored[event_type] or r:handles(event_type) then return end
  ignored[event_type] = true
  cli.io.stderr:write(string.format("procman run: no workflow handles event type '%s': ignored "
                                    .. "(said once per type; --on-unknown)\n", event_type))
end

-- Handle one line; false and the reason when it is bad.
local function handle_line(r, line, cli, ignored)
  local event, why = json.decode_event(line)
  if not event then return false, why end
  if type(event.event_type) == "string" then report_ignored(r, event, cli, ignored) end
  local ok, envelopes, err = pcall(r.handle, r, event)
  if not ok then return false, tostring(envelopes) end
  if envelopes == nil then cli.fail(1, "%s", err) end  -- the journal failed: stop
  return true
end

-- The next line of input, waiting at most until the router's next timer
-- is due: the line, false when that time came first, nil at the end.
-- (When the CLI's stdin was replaced, as a library caller may, lines come
-- from it and timers wait for them.)
local function next_line_source(r, cli, timers)
  if cli.io.stdin ~= io.stdin then return cli.io.stdin:lines() end
  local reader = terminal.line_reader(0)
  return function()
    local due = r:next_due()
    if due then due = math.max(0, math.max(due, timers.hold_until) - os.time()) end
    local line, err = reader:read(due)
    if line == nil and err then cli.fail(1, "%s", err) end
    return line
  end
end

-- Fire what is due. A timer whose event fails stays due: it is tried
-- again a second later, not in a busy loop.
local function tick(r, cli, timers)
  local now = os.time()
  local due = r:next_due()
  if due == nil or due > now or now < timers.hold_until then return end
  local ok, fired, err = pcall(r.tick, r, now)
  if not ok then
    cli.io.stderr:write("procman run: a timer's event failed: ", tostring(fired), "\n")
    timers.hold_until = now + 1
  end
  if ok and fired == nil then cli.fail(1, "%s", err) end
end

return function(args, cli)
  local readable, no_cjson = json.can_read()
  if not readable then cli.fail(1, "%s", no_cjson) end
  local r <close> = open_router(args, cli)
  local counts = { lines = 0, events = 0, commands = 0, bad = 0 }
  local show = not args.quiet and terminal.is_terminal(2)
  send_pending(r, cli, counts)  -- what an earlier run left
  local timers = { hold_until = 0 }
  tick(r, cli, timers)  -- what fell due while no run was going, before any line overtakes it
  send_pending(r, cli, counts)
  local ignored = (args.on_unknown or "ignore") == "ignore" and {} or nil
  local next_line = next_line_source(r, cli, timers)
  local last_progress = os.time()
  while true do
    local line = next_line()
    if line == nil then break end
    if line then
      counts.lines = counts.lines + 1
      if line:find("%S") then
        local ok, why = handle_line(r, line, cli, ignored)
        if ok then
          counts.events = counts.events + 1
        else
          counts.bad = counts.bad + 1
          cli.io.stderr:write(string.format("procman run: line %d: %s\n", counts.lines, why))
          if args.strict then cli.fail(1, "stopped at line %d (--strict)", counts.lines) end
        end
      end
    end
    tick(r, cli, timers)
    send_pending(r, cli, counts)
    if show and os.time() - last_progress >= PROGRESS_EVERY then
      progress(cli, counts)
      last_progress = os.time()
    end
  end
  tick(r, cli, timers)  -- what fell due while the last lines were read
  send_pending(r, cli, counts)
  if show then progress(cli, counts, true) end
  local ok, err = r:close()
  if not ok then cli.fail(1, "%s", err) end
  return 0
end
