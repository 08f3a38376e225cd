-- procman run's timers at the edges of its input, its policies and
-- divergence option, and procman compact.
local procman = require "procman"
local cjson = require "cjson"
local files = require "spec.support.files"

local procman_cmd = require "spec.support.procman_cmd"

local function types(out)
  local list = {}
  for line in out:gmatch("[^\n]+") do list[#list + 1] = cjson.decode(line).command.command_type end
  return list
end

local REMINDER = "spec/fixtures/reminder.lua"

-- A journal whose flow 'a' has a timer that fell due long ago (at 100; the
-- router that wrote it had a clock of its own).
local function overdue_journal(path)
  local r = procman.router { workflows = { assert(procman.load(REMINDER)) }, journal = path,
                            clock = function() return 0 end }
  r:handle { event_type = "open", id = "a" }
  r:handle { event_type = "snooze", id = "a", seconds = 100 }
  r:dispatch(function() end)
  r:close()
end

describe("procman run", function()
  local path
  files.journal_each_test(function(p) path = p end)

  it("fires an overdue timer before it reads its first line", function()
    overdue_journal(path)
    -- the flow closes on the first line: the ping, overdue, must come first
    local r = procman_cmd("run -q " .. REMINDER .. " --journal " .. path, '{"event_type":"close","id":"a"}\n')
    assert.equal(0, r.code, r.err)
    assert.same({ "pinged" }, types(r.out))
  end)

  it("fires an overdue timer with no input at all", function()
    overdue_journal(path)
    local r = procman_cmd("run -q " .. REMINDER .. " --journal " .. path, "")
    assert.equal(0, r.code, r.err)
    assert.same({ "pinged" }, types(r.out))
  end)

  it("fires the timers due at the end of its input", function()
    -- lines from a stream the caller passes (procman.cli.io), read without
    -- waiting for timers: the last one sets a timer 2 s ahead, and the
    -- stream ends once that time has come (waiting for the clock, not a
    -- time limit).
    local cli = require "procman.cli"
    local due = os.time() + 2
    local lines = { '{"event_type":"open","id":"a"}',
                    string.format('{"event_type":"deadline","id":"a","at":%d,"key":"ping"}', due) }
    local input = { lines = function()
      local i = 0
      return function()
        i = i + 1
        if lines[i] == nil then
          while os.time() < due + 1 do os.execute("sleep 0.2") end
        end
        return lines[i]
      end
    end }
    local out, err = io.tmpfile(), io.tmpfile()
    local saved = cli.io
    cli.io = { stdin = input, stdout = out, stderr = err }
    local ok, status = pcall(cli.main, { "run", "-q", REMINDER, "--journal", path })
    cli.io = saved
    assert.is_true(ok, tostring(status))
    assert.equal(0, status)
    out:seek("set")
    assert.same({ "hello", "pinged" }, types(out:read("a")))
  end)

  it("says once per type which event types no workflow handles (on_unknown = ignore)", function()
    local r = procman_cmd("run -q batch --journal " .. path,
                          '{"event_type":"batch_creatd","batch_id":"b"}\n{"event_type":"batch_creatd","batch_id":"c"}\n')
    assert.equal(0, r.code)
    assert.equal("procman run: no workflow handles event type 'batch_creatd': ignored (said once per type; "
                 .. "--on-unknown)\n", r.err)
    r = procman_cmd("run -q batch --on-unknown raise --journal " .. path,
                    '{"event_type":"batch_creatd","batch_id":"b"}\n')
    assert.matches("line 1: procman.router: no workflow handles event type 'batch_creatd'", r.err, 1, true)
  end)

  it("takes --on-late", function()
    local created = '{"event_type":"batch_created","batch_id":"b","files":[]}\n'  -- done at once
    local late = '{"event_type":"file_processed","batch_id":"b","file":{"id":"x","status":"success"}}\n'
    local r = procman_cmd("run -q batch --journal " .. path, created .. late)
    assert.matches("line 2: procman.router: flow batch/b is complete", r.err, 1, true)
    r = procman_cmd("run -q batch --on-late ignore --journal " .. path, late)
    assert.equal("", r.err)
    r = procman_cmd("run -q batch --on-late dead_letter --journal " .. path, late)
    assert.equal("", r.err)
    assert.equal(1, #cjson.decode(procman_cmd("inspect --json " .. path).out).dead_letters)
  end)

  it("raises or warns on divergence (--on-divergence)", function()
    local r = procman_cmd("run -q batch --journal " .. path, '{"event_type":"batch_created","batch_id":"b","files":["a"]}\n')
    assert.equal(0, r.code)
    local source = files.bytes(package.searchpath("procman.workflows.batch", package.path))
    local renamed = os.tmpname() .. ".lua"
    files.write(renamed, (source:gsub('"process_file"', '"handle_file"')))
    r = procman_cmd("run -q " .. renamed .. " --journal " .. path, "")
    assert.equal(1, r.code)
    assert.matches("^procman run: procman.router: replay diverged at batch/b", r.err)  -- one line, no traceback
    assert.not_matches("stack traceback", r.err, 1, true)
    r = procman_cmd("run -q --on-divergence warn " .. renamed .. " --journal " .. path, "")
    os.remove(renamed)
    assert.equal(0, r.code)
    assert.matches("procman run: procman.router: replay diverged at batch/b", r.err, 1, true)
  end)

  it("compacts a journal (procman compact)", function()
    local events = {}
    for i = 1, 20 do
      events[#events + 1] = string.format('{"event_type":"batch_created","batch_id":"b%d","files":["a"]}', i)
      events[#events + 1] = string.format('{"event_type":"file_processed","batch_id":"b%d",'
                                          .. '"file":{"id":"a","status":"success"}}', i)
    end
    events[#events + 1] = '{"event_type":"batch_created","batch_id":"live","files":["a"]}'
    assert.equal(0, procman_cmd("run -q batch --journal " .. path, table.concat(events, "\n") .. "\n").code)
    local before = #files.bytes(path)
    local r = procman_cmd("compact " .. path .. " batch")
    assert.equal(0, r.code, r.err)
    assert.matches("^" .. path:gsub("%p", "%%%0") .. ": %d+ bytes %-> %d+ bytes %(1 live flows, 20 completed, "
                   .. "0 pending commands%)\n$", r.out)
    assert.is_true(#files.bytes(path) < before)
    local s = cjson.decode(procman_cmd("inspect --json " .. path).out)
    assert.equal(1, s.workflows.batch.live)
    assert.equal(20, s.workflows.batch.completed)
    r = procman_cmd("compact " .. path .. ".missing batch")
    assert.equal(1, r.code)
    -- code that cannot replay the journal: one line, and the journal untouched
    local kept = files.bytes(path)
    r = procman_cmd("compact " .. path .. " " .. REMINDER)
    assert.equal(1, r.code)
    assert.matches('^procman compact: procman.router: [^\n]*workflow "batch", which this router was not given[^\n]*\n$',
                   r.err)
    assert.equal(kept, files.bytes(path))
  end)

  it("compact leaves a journal without records as it is: nothing to compact", function()
    files.write(path, "")
    local r = procman_cmd("compact " .. path .. " batch")
    assert.equal(0, r.code, r.err)
    assert.equal(path .. ": 0 bytes, no records: nothing to compact\n", r.out)
    assert.equal("", files.bytes(path))
    os.remove(path)  -- a journal that has only its header: a router that handled nothing
    assert(procman.router { workflows = { (require "procman.workflows.batch") }, journal = path }):close()
    local header = files.bytes(path)
    r = procman_cmd("compact " .. path .. " batch")
    assert.equal(0, r.code, r.err)
    assert.equal(string.format("%s: %d bytes, no records: nothing to compact\n", path, #header), r.out)
    assert.equal(header, files.bytes(path))
  end)
end)
