-- Operating procman: dead letters with stable ids (retry, drop), and the
-- operator commands on a real journal (bin/procman parked, resume, skip,
-- dead-letters, retry-dead-letter, drop-dead-letter, inspect) and in the
-- REPL (.parked, .resume, .skip, .dead, .retry, .drop).
local procman = require "procman"
local core = require "procman.core"
local records = require "procman.records"
local batch = require "procman.workflows.batch"
local repl = require "procman.repl"
local cjson = require "cjson"
local files = require "spec.support.files"

local procman_cmd = require "spec.support.procman_cmd"

local function clock() return 1700000000 end

local LOST = { event_type = "file_processed", batch_id = "zz", file = { id = "a", status = "success" } }

local function open(path, opts)
  opts = opts or {}
  opts.workflows, opts.journal, opts.clock = { batch }, path, clock
  opts.on_unroutable = opts.on_unroutable or "dead_letter"
  return assert(procman.router(opts))
end

-- A journal with a parked flow b1 (an unknown file, then a good one held)
-- and two dead letters: #1 for flow zz (not started yet), #2 for yy.
local function setup(path)
  local r = open(path, { on_error = "park" })
  r:handle { event_type = "batch_created", batch_id = "b1", files = { "a", "b" } }
  r:handle { event_type = "file_processed", batch_id = "b1", file = { id = "nope", status = "success" } }
  r:handle { event_type = "file_processed", batch_id = "b1", file = { id = "a", status = "success" } }
  r:handle(LOST)
  r:handle { event_type = "file_processed", batch_id = "yy", file = { id = "a", status = "error" } }
  r:dispatch(function() end)
  r:close()
end

describe("dead letters", function()
  local path
  files.journal_each_test(function(p) path = p end)

  it("have stable ids, times and reasons, across reopening and compaction", function()
    setup(path)
    local r = open(path)
    local letters = r:dead_letters()
    assert.same({ 1, 2 }, { letters[1].id, letters[2].id })
    assert.same({ LOST, 1700000000, "procman.router: no flow batch/zz for file_processed" },
                { letters[1].event, letters[1].time, letters[1].error })
    assert.is_true(r:drop_dead_letter(2))
    assert.truthy(r:compact())
    r:close()
    r = open(path)
    assert.same(letters[1], r:dead_letters()[1])
    r:handle { event_type = "file_processed", batch_id = "xx", file = { id = "a", status = "success" } }
    assert.same({ 1, 3 }, { r:dead_letters()[1].id, r:dead_letters()[2].id })  -- 2 is never given again
    r:close()
  end)

  it("retry: the event goes to its flow now, the letter goes in the same record", function()
    setup(path)
    local r = open(path)
    r:handle { event_type = "batch_created", batch_id = "zz", files = { "a", "b" } }
    local envelopes = assert(r:retry_dead_letter(1))
    assert.same({}, envelopes)
    assert.same({ id = "zz", files = { a = "success", b = "pending" }, status = "pending" },
                r:flow("batch", "zz"):state())
    assert.same({ 2 }, { r:dead_letters()[1].id })
    r:close()
    local last
    for _, kind, payload in assert(core.journal_scan(path)) do last = { kind, core.decode(payload) } end
    assert.equal(records.EVENT, last[1])
    assert.equal(1, last[2].dead_letter)
    r = open(path)  -- recovered: the flow has the event, the letter is gone
    assert.equal("pending", r:flow("batch", "zz"):status())
    assert.equal(1, r:stats().dead_letters)
    r:close()
  end)

  it("retry of an event that still cannot be routed raises and keeps the letter", function()
    setup(path)
    local r = open(path)
    local before = files.bytes(path)
    assert.has_error(function() r:retry_dead_letter(1) end,
                     "procman.router: dead letter 1 still cannot be delivered: no flow batch/zz for file_processed")
    assert.equal(2, #r:dead_letters())
    assert.equal(before, files.bytes(path))
    r:close()
  end)

  it("drop is journaled; bad ids are refused, changing nothing", function()
    setup(path)
    local r = open(path)
    assert.is_true(r:drop_dead_letter(1))
    r:close()
    r = open(path)
    assert.same({ 2 }, { r:dead_letters()[1].id })
    local before = files.bytes(path)
    for _, bad in ipairs { 1, 99, "2", 2.5 } do
      assert.has_error(function() r:drop_dead_letter(bad) end, "procman.router: no dead letter with id " .. bad)
      assert.has_error(function() r:retry_dead_letter(bad) end, "procman.router: no dead letter with id " .. bad)
    end
    assert.equal(before, files.bytes(path))
    r:close()
  end)

  it("a drop the journal cannot take changes nothing", function()
    setup(path)
    local r = open(path)
    core.journal_faults(1, "ENOSPC")
    local ok, err = r:drop_dead_letter(1)
    core.journal_faults()
    assert.is_nil(ok)
    assert.matches("procman.router: cannot write to the journal", err)
    assert.equal(2, #r:dead_letters())
    r:close()
  end)

  it("reads letters of journals written before ids, giving them ids in order", function()
    local j = assert(core.journal_open(path))
    j:append(records.DEAD, core.encode { event = LOST, error = "old" })
    j:append(records.DEAD, core.encode { event = LOST, error = "older" })
    j:close()
    local r = open(path)
    assert.same({ { 1, "old" }, { 2, "older" } },
                { { r:dead_letters()[1].id, r:dead_letters()[1].error },
                  { r:dead_letters()[2].id, r:dead_letters()[2].error } })
    r:handle(LOST)
    assert.equal(3, r:dead_letters()[3].id)
    r:close()
  end)
end)

describe("operator commands on a journal (bin/procman and the REPL)", function()
  local path
  before_each(function()
    path = files.temp_path()
    setup(path)
  end)
  after_each(function() os.remove(path) end)

  it("procman parked lists parked flows, as text and JSON", function()
    local r = procman_cmd("parked " .. path)
    assert.equal(0, r.code)
    assert.equal(table.concat({
      "batch/b1  2 events held",
      "  error: batch/b1: handler for 'file_processed' failed: file \"nope\" is not in this batch",
      '  first: { batch_id = "b1", event_type = "file_processed", file = { id = "nope", status = "success" } }',
      "" }, "\n"), r.out)
    r = procman_cmd("parked --json " .. path)
    local list = cjson.decode(r.out)
    assert.equal(1, #list)
    assert.same({ "batch", "b1", 2, "nope" }, { list[1].workflow, list[1].flow, list[1].held, list[1].event.file.id })
  end)

  it("procman skip drops the poison event and resumes the rest; resume on a flow not parked fails", function()
    local r = procman_cmd("skip " .. path .. " batch b1 batch")
    assert.equal("", r.err)
    assert.equal(0, r.code)
    assert.equal("skipped the first parked event of batch/b1: 0 commands emitted, 0 pending\n", r.out)
    assert.equal("no parked flows\n", procman_cmd("parked " .. path).out)
    local router = open(path)
    assert.same({ id = "b1", files = { a = "success", b = "pending" }, status = "pending" },
                router:flow("batch", "b1"):state())
    router:close()
    r = procman_cmd("resume " .. path .. " batch b1 batch")
    assert.equal(1, r.code)
    assert.equal("procman resume: procman.router: flow batch/b1 is not parked\n", r.err)
  end)

  it("procman resume: status 1 and the error when the flow parks again", function()
    local before = #files.bytes(path)
    local r = procman_cmd("resume " .. path .. " batch b1 batch")
    assert.equal(1, r.code)
    assert.equal("procman resume: resumed batch/b1, which is parked again: batch/b1: handler for "
                 .. "'file_processed' failed: file \"nope\" is not in this batch (0 commands emitted, "
                 .. "0 pending)\n", r.err)
    assert.is_true(#files.bytes(path) > before)  -- the retry is journaled
    assert.equal(2, cjson.decode(procman_cmd("parked --json " .. path).out)[1].held)
  end)

  it("procman resume applies every parked event once the code is fixed", function()
    local fixed = os.tmpname() .. ".lua"
    files.write(fixed, [[
return procman.workflow {
  name = "batch", correlate = "batch_id", starts = { "batch_created" },
  on = {
    batch_created = function(state, event)
      state.files = event.files
      return { { command_type = "process_file", file = "a" }, { command_type = "process_file", file = "b" } }
    end,
    file_processed = function(state, event)
      state.seen = (state.seen or 0) + 1
      return { { command_type = "noted", file = event.file.id } }
    end,
  },
}]])
    local r = procman_cmd("resume " .. path .. " batch b1 " .. fixed .. " --sync none")
    assert.equal(2, r.code)  -- (no such option: the usage, nothing done)
    r = procman_cmd("resume " .. path .. " batch b1 " .. fixed)
    os.remove(fixed)
    assert.equal("", r.err)
    assert.equal("resumed batch/b1: 2 commands emitted, 2 pending\n", r.out)
    assert.equal("no parked flows\n", procman_cmd("parked " .. path).out)
  end)

  it("procman dead-letters lists id, time, event and reason, as text and JSON", function()
    local r = procman_cmd("dead-letters " .. path)
    assert.equal(0, r.code)
    assert.equal(table.concat({
      "#1  2023-11-14T22:13:20Z  file_processed",
      "  reason: procman.router: no flow batch/zz for file_processed",
      '  event:  { batch_id = "zz", event_type = "file_processed", file = { id = "a", status = "success" } }',
      "#2  2023-11-14T22:13:20Z  file_processed",
      "  reason: procman.router: no flow batch/yy for file_processed",
      '  event:  { batch_id = "yy", event_type = "file_processed", file = { id = "a", status = "error" } }',
      "" }, "\n"), r.out)
    local list = cjson.decode(procman_cmd("dead-letters --json " .. path).out)
    assert.same({ id = 1, time = 1700000000, event = LOST, error = "procman.router: no flow batch/zz for file_processed" },
                list[1])
  end)

  it("procman retry-dead-letter and drop-dead-letter act on one letter, journaled", function()
    local r = procman_cmd("retry-dead-letter " .. path .. " 1 batch")
    assert.equal(1, r.code)
    assert.equal("procman retry-dead-letter: procman.router: dead letter 1 still cannot be delivered: "
                 .. "no flow batch/zz for file_processed\n", r.err)
    local router = open(path)
    router:handle { event_type = "batch_created", batch_id = "zz", files = { "a" } }
    router:close()
    r = procman_cmd("retry-dead-letter " .. path .. " 1 batch")
    assert.equal("", r.err)
    assert.equal("retried dead letter #1: 0 commands emitted, 1 dead letters left\n", r.out)
    router = open(path)
    assert.equal("success", router:completed("batch", "zz"))
    router:close()
    r = procman_cmd("drop-dead-letter " .. path .. " 2 batch")
    assert.equal("dropped dead letter #2; 0 left\n", r.out)
    assert.equal("no dead letters\n", procman_cmd("dead-letters " .. path).out)
    r = procman_cmd("drop-dead-letter " .. path .. " 2 batch")
    assert.equal(1, r.code)
    assert.equal("procman drop-dead-letter: procman.router: no dead letter with id 2\n", r.err)
    r = procman_cmd("drop-dead-letter " .. path .. " two batch")
    assert.equal(2, r.code)
    assert.matches("a dead letter id is an integer", r.err)
  end)

  it("report a journal the code does not replay without a traceback", function()
    local r = procman_cmd("skip " .. path .. " batch b1 order")
    assert.equal(1, r.code)
    assert.equal("procman skip: procman.router: " .. path .. ": the journal has 1 live flow of workflow "
                 .. "\"batch\", which this router was not given\n", r.err)
  end)

  it("refuse a journal another process holds, changing nothing", function()
    local router = open(path)
    local before = files.bytes(path)
    for _, args in ipairs { "skip " .. path .. " batch b1 batch", "drop-dead-letter " .. path .. " 1 batch" } do
      local r = procman_cmd(args)
      assert.equal(1, r.code)
      assert.matches("the journal is in use by another process", r.err)
    end
    assert.equal(before, files.bytes(path))
    router:close()
  end)

  it("procman inspect shows each dead letter's event and reason, as text and JSON", function()
    local r = procman_cmd("inspect " .. path)
    assert.matches("dead letters: 2\n  #1 2023%-11%-14T22:13:20Z file_processed: procman.router: no flow "
                   .. "batch/zz for file_processed\n    { batch_id = \"zz\",", r.out)
    local summary = cjson.decode(procman_cmd("inspect --json " .. path).out)
    assert.equal(2, #summary.dead_letters)
    assert.same({ 2, "procman.router: no flow batch/yy for file_processed", "yy" },
                { summary.dead_letters[2].id, summary.dead_letters[2].error,
                  summary.dead_letters[2].event.batch_id })
  end)

  it("the REPL's .parked, .skip, .dead, .retry, .drop act on the router r", function()
    local s = repl.new()
    s:feed("r = procman.router { workflows = { batch }, journal = " .. string.format("%q", path)
           .. ", clock = function() return 1700000000 end }")
    assert.matches("^batch/b1  2 events held\n  error: ", (s:feed(".parked")))
    assert.equal("error: usage: .skip WORKFLOW FLOW", (s:feed(".skip batch")))
    assert.equal("skipped the first parked event of batch/b1: 0 commands emitted, 0 pending",
                 (s:feed(".skip batch b1")))
    assert.equal("no parked flows", (s:feed(".parked")))
    assert.equal("error: procman.router: flow batch/b1 is not parked", (s:feed(".resume batch b1")))
    assert.matches("^#1  2023%-11%-14T22:13:20Z  file_processed\n  reason: ", (s:feed(".dead")))
    s:feed('r:handle { event_type = "batch_created", batch_id = "zz", files = { "a" } }')
    assert.equal("retried dead letter #1: 0 commands emitted, 1 dead letters left", (s:feed(".retry 1")))
    assert.equal("error: usage: .drop ID (an integer id: .dead lists them)", (s:feed(".drop x")))
    assert.equal("dropped dead letter #2; 0 left", (s:feed(".drop 2")))
    assert.equal("no dead letters", (s:feed(".dead")))
    s:feed("r:close()")
  end)
end)
