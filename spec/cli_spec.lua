-- The procman command: run, inspect, verify, diagram, the REPL's helpers,
-- and (when tmux is there) the REPL on a real terminal.
local procman = require "procman"
local batch = require "procman.workflows.batch"
local cjson = require "cjson"
local files = require "spec.support.files"

local procman_cmd = require "spec.support.procman_cmd"

local function lines(...)
  return table.concat({ ... }, "\n") .. "\n"
end

local CREATED = '{"event_type":"batch_created","batch_id":"b1","files":["a","b"]}'
local A_DONE = '{"event_type":"file_processed","batch_id":"b1","file":{"id":"a","status":"success"}}'

describe("procman run", function()
  local path
  files.journal_each_test(function(p) path = p end)

  it("reads events as JSON lines, writes command envelopes as JSON lines, acks them", function()
    local r = procman_cmd("run batch --journal " .. path, lines(CREATED, A_DONE,
      '{"event_type":"batch_created","batch_id":7,"files":["x"]}'))
    assert.equal(0, r.code)
    assert.equal(lines(
      '{"command":{"command_type":"process_file","file":"a"},"flow":"b1","id":"batch/b1/1/1","workflow":"batch"}',
      '{"command":{"command_type":"process_file","file":"b"},"flow":"b1","id":"batch/b1/1/2","workflow":"batch"}',
      '{"command":{"command_type":"process_file","file":"x"},"flow":7,"id":"batch/7/1/1","workflow":"batch"}'), r.out)
    assert.equal("", r.err)
    local router = assert(procman.router { workflows = { batch }, journal = path })
    assert.same({}, router:pending())
    assert.equal("pending", router:flow("batch", "b1"):status())
    assert.equal(1, router:flow("batch", 7):version())  -- 7, not 7.0: JSON numbers that are whole
    router:close()
  end)

  it("reports bad lines with their number and reason, and changes nothing for them", function()
    local r = procman_cmd("run batch --journal " .. path, lines(CREATED, "not json", "[1,2]", "",
      '{"event_type":"file_processed","batch_id":"zz","file":{"id":"a","status":"success"}}',
      '{"event_type":"file_processed","batch_id":"b1","file":{"id":"nope","status":"success"}}', A_DONE))
    assert.equal(0, r.code)
    assert.equal(lines(
      "procman run: line 2: not JSON: expected a value, found something that is not JSON at character 1",
      "procman run: line 3: not an event: a JSON object expected, got an array",
      "procman run: line 5: procman.router: no flow batch/zz for file_processed",
      "procman run: line 6: batch/b1: handler for 'file_processed' failed: file \"nope\" is not in this batch"),
      r.err)
    local router = assert(procman.router { workflows = { batch }, journal = path })
    assert.equal(2, router:flow("batch", "b1"):version())
    router:close()
  end)

  it("stops at the first bad line with --strict, status 1", function()
    local r = procman_cmd("run batch --strict --journal " .. path, lines(CREATED, "oops", A_DONE))
    assert.equal(1, r.code)
    assert.matches("line 2: not JSON", r.err)
    assert.matches("procman run: stopped at line 2 %(%-%-strict%)", r.err)
    local router = assert(procman.router { workflows = { batch }, journal = path })
    assert.equal(1, router:flow("batch", "b1"):version())
    router:close()
  end)

  it("first sends the commands an earlier run left pending", function()
    local router = assert(procman.router { workflows = { batch }, journal = path })
    router:handle { event_type = "batch_created", batch_id = "old", files = { "f" } }
    router:close()
    local r = procman_cmd("run batch --journal " .. path, "")
    assert.equal(0, r.code)
    assert.equal(lines('{"command":{"command_type":"process_file","file":"f"},"flow":"old",'
                       .. '"id":"batch/old/1/1","workflow":"batch"}'), r.out)
    r = procman_cmd("run batch --journal " .. path, "")
    assert.equal("", r.out)
  end)

  it("parks with --park and keeps dead letters with --dead-letter", function()
    local r = procman_cmd("run batch --park --dead-letter --journal " .. path, lines(CREATED,
      '{"event_type":"file_processed","batch_id":"b1","file":{"id":"nope","status":"success"}}',
      '{"event_type":"file_processed","batch_id":"zz","file":{"id":"a","status":"success"}}', A_DONE))
    assert.equal(0, r.code)
    assert.equal("", r.err)
    local router = assert(procman.router { workflows = { batch }, journal = path })
    assert.equal(2, router:parked()[1].held)
    assert.equal(1, #router:dead_letters())
    router:close()
  end)

  it("fires timers while its input is quiet", function()
    -- The feeder sends a flow that asks for a ping in a second, then waits
    -- (up to a minute: a guard against hanging, not a time limit) until the
    -- ping's command is out before it sends anything else. Reading lines
    -- only as they come, the ping would wait for the next line.
    local out, saw, fifo = os.tmpname(), os.tmpname(), os.tmpname()
    os.remove(saw)
    os.remove(fifo)
    local script = table.concat({
      "mkfifo %s || exit 1",
      "( printf '%%s\\n' '{\"event_type\":\"open\",\"id\":\"a\"}' "
        .. "'{\"event_type\":\"snooze\",\"id\":\"a\",\"seconds\":1}'",
      "  i=0; while [ $i -lt 600 ] && ! grep -q pinged %s; do sleep 0.1; i=$((i+1)); done",
      "  grep -q pinged %s && echo yes > %s",
      "  printf '%%s\\n' '{\"event_type\":\"close\",\"id\":\"a\"}' ) > %s &",
      "LUA_PATH=%q LUA_CPATH=%q lua5.4 bin/procman run spec/fixtures/reminder.lua --journal %s < %s > %s",
      "status=$?; wait; exit $status",
    }, "\n"):format(fifo, out, out, saw, fifo, package.path, package.cpath, path, fifo, out)
    local ok = os.execute(script)
    local written, seen = files.bytes(out), io.open(saw) ~= nil
    os.remove(out)
    os.remove(saw)
    os.remove(fifo)
    assert.is_true(ok)
    assert.is_true(seen, "the ping was not written while the input waited")
    assert.equal(lines('{"command":{"command_type":"hello","id":"a"},"flow":"a","id":"reminder/a/1/1","workflow":"reminder"}',
                       '{"command":{"command_type":"pinged","id":"a","n":1},"flow":"a","id":"reminder/a/3/1",'
                         .. '"workflow":"reminder"}'), written)
  end)

  it("runs in-process on streams a caller passes (procman.cli.io)", function()
    local cli = require "procman.cli"
    local inp, out, err = io.tmpfile(), io.tmpfile(), io.tmpfile()
    inp:write(lines(CREATED, "not json", A_DONE))
    inp:seek("set")
    local saved = cli.io
    cli.io = { stdin = inp, stdout = out, stderr = err }
    local ok, status = pcall(cli.main, { "run", "batch", "--journal", path, "--quiet" })
    cli.io = saved
    assert.is_true(ok, status)
    assert.equal(0, status)
    out:seek("set")
    err:seek("set")
    local written = {}
    for line in out:lines() do written[#written + 1] = cjson.decode(line).id end
    assert.same({ "batch/b1/1/1", "batch/b1/1/2" }, written)
    assert.matches("^procman run: line 2: ", err:read("a"))
  end)

  it("opens a damaged journal only with --repair, which the refusal names", function()
    local r = assert(procman.router { workflows = { batch }, journal = path })
    r:handle { event_type = "batch_created", batch_id = "b1", files = { "a" } }
    r:handle { event_type = "batch_created", batch_id = "b2", files = { "c" } }
    r:close()
    local bytes = files.bytes(path)
    files.write(path, bytes:sub(1, 20) .. string.char(bytes:byte(21) ~ 0xff) .. bytes:sub(22))
    local damaged = files.bytes(path)
    for _, command in ipairs { "run batch --journal " .. path, "compact " .. path .. " batch",
                               "resume " .. path .. " batch b1 batch", "drop-dead-letter " .. path .. " 1 batch" } do
      local out = procman_cmd(command)
      assert.equal(1, out.code, command)
      assert.matches("damaged record at byte 16: .*; run again with %-%-repair to skip it%)\n$", out.err)
      assert.equal(damaged, files.bytes(path))
      assert.matches("\n%s+%-%-repair%s+Skip a damaged range", procman_cmd(command:match("^%S+") .. " --help").out)
    end
    local out = procman_cmd("compact --repair " .. path .. " batch")
    assert.equal(0, out.code, out.err)
    assert.matches("skipped damaged records from byte 16", out.err)
    local again = assert(procman.router { workflows = { batch }, journal = path })  -- repaired
    assert.is_nil(again:flow("batch", "b1"))
    assert.equal("created", again:flow("batch", "b2"):status())
    again:close()
  end)

  it("says what is wrong with its arguments", function()
    local r = procman_cmd("run batch", "")
    assert.equal(2, r.code)
    assert.matches("^Usage: procman run", r.err)
    assert.matches("procman: missing option '%-j'", r.err)
    r = procman_cmd("run nosuch --journal " .. path, "")
    assert.equal(1, r.code)
    assert.equal("procman run: nosuch: no such file, and not a shipped workflow (batch, order)\n", r.err)
    r = procman_cmd("run batch --journal /nonexistent/dir/j.pmj", "")
    assert.equal(1, r.code)
    assert.matches("^procman run: procman.router: /nonexistent/dir/j.pmj", r.err)
  end)
end)

describe("procman inspect, verify and diagram", function()
  local path
  setup(function()
    path = files.temp_path()
    local r = assert(procman.router { workflows = { batch }, journal = path, on_error = "park",
                                      clock = function() return 1000 end })
    r:handle { event_type = "batch_created", batch_id = "b1", files = { "a", "b" } }
    r:handle { event_type = "file_processed", batch_id = "b1", file = { id = "a", status = "success" } }
    r:handle { event_type = "file_processed", batch_id = "b1", file = { id = "b", status = "error" } }
    r:handle { event_type = "batch_created", batch_id = "b2", files = { "c" }, file_timeout = 60 }
    r:handle { event_type = "batch_created", batch_id = "b3", files = { "d" } }
    r:handle { event_type = "file_processed", batch_id = "b3", file = { id = "zz", status = "success" } }
    r:ack("batch/b1/1/1")
    r:close()
  end)
  teardown(function() os.remove(path) end)

  it("summarizes a journal", function()
    local r = procman_cmd("inspect " .. path)
    assert.equal(0, r.code)
    assert.equal(lines(
      string.format("%s: %d bytes, 7 records, sequence 6", path, #files.bytes(path)),
      "flows:",
      "  batch        live 2 (created 2); completed 1 (error 1)",
      "pending commands: 3",
      "parked flows: 1",
      "  batch/b3 (1 events held): batch/b3: handler for 'file_processed' failed: file \"zz\" is not in this batch",
      "timers: 1 (next due at 1060: batch/b2 file_timed_out)",
      "dead letters: 0"), r.out)
  end)

  it("lists a workflow's flows, filtered by status, and shows a flow's timeline", function()
    local r = procman_cmd("inspect " .. path .. " --workflow batch")
    assert.equal(lines(
      "flow                     status            version  code  ",
      "b1                       error                   3    v1  completed",
      "b2                       created                 1    v1  live",
      "b3                       created                 1    v1  parked"), r.out)
    r = procman_cmd("inspect " .. path .. " --workflow batch --status error --json")
    assert.same({ { flow = "b1", status = "error", version = 3, workflow_version = 1, state = "completed" } },
                cjson.decode(r.out))
    r = procman_cmd("inspect " .. path .. " --flow b1")
    assert.equal(0, r.code)
    assert.matches("^batch/b1: error, version 3 %(completed%)\nv1  ", r.out)
    assert.matches('v3  {\n      batch_id = "b1",', r.out)
    assert.matches("    status: error\n$", r.out)
    local timeline = cjson.decode(procman_cmd("inspect " .. path .. " --flow b1 --json").out).timeline
    assert.same({ "created", "pending", "error" }, { timeline[1].status, timeline[2].status, timeline[3].status })
    r = procman_cmd("inspect " .. path .. " --flow nope")
    assert.equal(1, r.code)
    assert.equal("procman inspect: " .. path .. " has no flow nope\n", r.err)
  end)

  it("says which statuses there are when --status matches no flow, with or without --workflow", function()
    for _, options in ipairs { " --status bogus", " --workflow batch --status bogus" } do
      local r = procman_cmd("inspect " .. path .. options)
      assert.equal(1, r.code)
      assert.equal("", r.out)
      assert.equal("procman inspect: " .. path .. ' has no flows of workflow "batch" with status "bogus" '
                   .. "(its flows' statuses: created, error)\n", r.err)
    end
  end)

  it("shows the integer flow 7 and the string flow \"7\" apart, and reads \"7\" back as the string", function()
    local two = files.temp_path()
    local r = assert(procman.router { workflows = { batch }, journal = two })
    r:handle { event_type = "batch_created", batch_id = 7, files = { "a" } }
    r:handle { event_type = "batch_created", batch_id = "7", files = { "a", "b" } }
    r:handle { event_type = "batch_created", batch_id = "b1", files = { "c" } }
    r:close()
    local out = procman_cmd("inspect " .. two .. " --workflow batch").out
    local listed = {}
    for flow_id in out:gmatch("\n(%S+)") do listed[#listed + 1] = flow_id end
    assert.same({ "7", '"7"', "b1" }, listed)
    assert.matches('^batch/"7": created, version 1\n', procman_cmd("inspect " .. two .. " --flow '\"7\"'").out)
    assert.matches('"a", "b"', procman_cmd("inspect " .. two .. " --flow '\"7\"'").out)
    assert.matches("^batch/7: created, version 1\n", procman_cmd("inspect " .. two .. " --flow 7").out)
    os.remove(two)
  end)

  it("gives the summary as JSON", function()
    local s = cjson.decode(procman_cmd("inspect --json " .. path).out)
    assert.equal(3, s.pending)
    assert.equal(1, #s.parked)
    assert.equal(1060, s.timers[1].due)
    assert.same({ created = 2 }, s.workflows.batch.live_by_status)
  end)

  it("verifies a journal against workflow code, and reports each divergence", function()
    local r = procman_cmd("verify " .. path .. " batch")
    assert.equal(0, r.code)
    assert.equal(path .. ": 5 events replayed, 0 divergences\n", r.out)
    -- a deliberately changed workflow: the batch workflow with its command renamed
    local source = files.bytes(package.searchpath("procman.workflows.batch", package.path))
    local renamed = files.temp_path() .. ".lua"
    files.write(renamed, (source:gsub('"process_file"', '"handle_file"')))
    r = procman_cmd("verify " .. path .. " " .. renamed)
    os.remove(renamed)
    assert.equal(1, r.code)
    assert.matches("batch/b1 v1 %(sequence 1, byte 16%): 'batch_created' returns other commands\n"
                   .. '  journal: { { command_type = "process_file", file = "a" }, '
                   .. '{ command_type = "process_file", file = "b" } }\n'
                   .. '  now:     { { command_type = "handle_file", file = "a" }, '
                   .. '{ command_type = "handle_file", file = "b" } }', r.out)
    assert.matches("batch/b2 v1 .*batch/b3 v1 ", r.out)
    assert.matches(": 5 events replayed, 3 divergences\n$", r.out)
  end)

  it("does not pass a journal whose damage hid records from the check", function()
    local bytes = files.bytes(path)
    local damaged = files.temp_path()
    files.write(damaged, bytes:sub(1, 20) .. string.char(bytes:byte(21) ~ 0xff) .. bytes:sub(22))
    local r = procman_cmd("verify " .. damaged .. " batch")
    os.remove(damaged)
    assert.equal(1, r.code)
    assert.matches("^damaged at byte 16: the records up to byte %d+ were skipped, not checked\n", r.out)
  end)

  it("draws the observed state machine in Mermaid and in dot", function()
    local r = procman_cmd("diagram " .. path)
    assert.equal(0, r.code)
    assert.equal(lines(
      "---", "title: batch", "---", "stateDiagram-v2",
      '    state "created" as s1',
      '    state "pending" as s2',
      '    state "error" as s3',
      "    [*] --> s1 : batch_created (3)",
      "    s1 --> s2 : file_processed (1)",
      "    s3 --> [*] : completed (1)",
      "    s2 --> s3 : file_processed (1)"), r.out)
    r = procman_cmd("diagram --format dot " .. path)
    assert.matches('^digraph "batch" {\n  rankdir=LR;', r.out)
    assert.matches('  "__start" %-> "created" %[label="batch_created %(3%)"%];', r.out)
    assert.matches('  "error" %-> "__end" %[label="completed %(1%)"%];', r.out)
    if os.execute("command -v dot >/dev/null 2>&1") then
      local dot = os.tmpname()
      files.write(dot, r.out)
      assert.is_true(os.execute("dot -Tpng " .. dot .. " -o /dev/null"))
      os.remove(dot)
    end
  end)

  it("fails clearly on what is not a journal", function()
    local r = procman_cmd("inspect /etc/hostname")
    assert.equal(1, r.code)
    assert.equal("procman inspect: /etc/hostname: not a procman journal (bad magic)\n", r.err)
    r = procman_cmd("diagram /nonexistent")
    assert.equal("procman diagram: /nonexistent: cannot read the journal (No such file or directory)\n", r.err)
  end)

  it("has --help for every command", function()
    for _, command in ipairs { "repl", "run", "inspect", "verify", "diagram" } do
      local r = procman_cmd(command .. " --help")
      assert.equal(0, r.code)
      assert.matches("^Usage: procman " .. command, r.out)
    end
  end)
end)

describe("the REPL's helpers, piped", function()
  it("loads workflows, opens a journal, shows the outbox, acks, and shows a timeline", function()
    local path = files.temp_path()
    local r = procman_cmd("repl spec/fixtures/reminder.lua --journal " .. path, lines(
      ".help",
      'r:handle { event_type = "open", id = "a" }',
      ".pending",
      ".ack reminder/a/1/1",
      ".pending",
      "pm = r:flow('reminder', 'a')",
      ".timeline pm",
      ".nope"))
    os.remove(path)
    assert.equal(0, r.code)
    assert.matches("^procman.workflow: reminder %(as the global reminder%)\nprocman.router %(0 live", r.out)
    assert.matches("> .help\n.help              these commands\n", r.out)
    assert.matches('> .pending\nreminder/a/1/1  { command_type = "hello", id = "a" }\n> .ack', r.out)
    assert.matches("> .ack reminder/a/1/1\nacked; 0 pending\n> .pending\nno pending commands\n", r.out)
    assert.matches("> .timeline pm\nprocman.pm: reminder/a %(none, v1%): 1 events\nv1  "
                   .. '{ event_type = "open", id = "a" }\n    commands: {\n      { command_type = "hello"', r.out)
    assert.matches("    status: none  state: { closed = false, id = \"a\", pings = 0 }\n", r.out)
    assert.matches("> .nope\nerror: unknown command .nope %(.help lists them%)\n", r.out)
  end)
end)

describe("the REPL on a terminal (tmux)", function()
  local has_tmux = os.execute("command -v tmux >/dev/null 2>&1")
  -- A tmux server of our own (its socket named after this process): a
  -- server another checkout started would run the REPL in its environment
  -- (its LUA_PATH_5_4), not this one's.
  local TMUX = "tmux -L procman-spec-" .. assert(io.open("/proc/self/stat")):read("n")

  local function keys(session, ...)
    local args = {}
    for i, k in ipairs { ... } do args[i] = string.format("%q", k) end
    os.execute(TMUX .. " send-keys -t " .. session .. " " .. table.concat(args, " "))
  end

  -- Wait until the screen shows 'text' (polling; a loaded machine can be
  -- slow, so the cap, ~60 s, is there only so that a broken REPL fails
  -- instead of hanging). 'again', when given, is sent at every poll: for
  -- keys whose effect depends on when they arrive (Ctrl-C must reach a
  -- running loop, not the line editor before the loop has started).
  local function screen_until(session, text, again)
    local screen
    for _ = 1, 600 do
      local p = io.popen(TMUX .. " capture-pane -p -t " .. session)
      screen = p:read("a")
      p:close()
      if screen:find(text, 1, true) then return screen end
      if again then keys(session, again) end
      os.execute("sleep 0.1")
    end
    error("the screen never showed " .. text .. ":\n" .. screen)
  end

  -- End the REPL with Ctrl-D and wait until it has exited (it writes its
  -- history on the way out).
  local function quit(session)
    keys(session, "C-d")
    for _ = 1, 600 do
      if not os.execute(TMUX .. " has-session -t " .. session .. " 2>/dev/null") then return end
      os.execute("sleep 0.1")
    end
    error("the REPL did not exit on Ctrl-D")
  end

  it("edits lines, completes names, interrupts, and keeps history across sessions", function()
    if not has_tmux then
      pending("tmux is not installed")
      return
    end
    if os.getenv("LD_PRELOAD") then  -- make sanitize: tmux would start under the sanitizer too
      pending("not under the sanitizers' LD_PRELOAD")
      return
    end
    local home = os.tmpname()
    os.remove(home)
    os.execute("mkdir -p " .. home)
    local session = "procman-spec-" .. tostring(os.time())
    finally(function()  -- also when the test fails: no REPL left running (a loop, once)
      os.execute(TMUX .. " kill-session -t " .. session .. " 2>/dev/null")
      os.execute("rm -rf " .. home)
    end)
    local function start()
      os.execute(string.format("%s new-session -d -s %s -x 120 -y 30 'HOME=%s LUA_PATH_5_4=%q "
                               .. "LUA_CPATH_5_4=%q lua5.4 bin/procman'", TMUX, session, home, package.path,
                               package.cpath))
      screen_until(session, "REPL")
    end
    start()
    keys(session, 'pm = batch:new("b1")', "Enter")
    screen_until(session, "procman.pm: batch/b1 (idle, v0)")
    keys(session, "pm:ha", "Tab")
    screen_until(session, "> pm:handle")
    keys(session, '{ event_type = "batch_created", files = { "é" } }', "Enter")
    screen_until(session, '{ { command_type = "process_file", file = "é" } }')
    keys(session, "procman.lo", "Tab")
    screen_until(session, "> procman.load")  -- what the candidates share
    keys(session, "Tab")
    screen_until(session, "procman.load  procman.loadstring")
    keys(session, "C-u", "while true do end", "Enter")
    screen_until(session, "error: interrupted!", "C-c")
    -- Ctrl-C drops the line being typed. Each key waits for the screen, as
    -- a person would: keys typed ahead of a Ctrl-C are the terminal's to
    -- flush (spec/lineedit_spec.lua has the typed-ahead case).
    keys(session, "half a line")
    screen_until(session, "> half a line")
    keys(session, "C-c")
    screen_until(session, "> half a line\n>")
    keys(session, "40 + 2", "Enter")
    local screen = screen_until(session, "\n42")
    assert.is_nil(screen:find("half a line40", 1, true))
    quit(session)
    start()
    keys(session, "Up", "Up")
    screen_until(session, "> while true do end")
    keys(session, "C-u")
    quit(session)
    local history = files.bytes(home .. "/.procman_history")
    assert.matches("pm:handle", history)
    os.execute("rm -rf " .. home)
    os.execute(TMUX .. " kill-server 2>/dev/null")
  end)
end)
