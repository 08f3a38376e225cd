-- procman.fold_scan: recovery's first pass in C must leave exactly the
-- state the Lua fold (procman.fold) leaves, on every journal: the records
-- it takes, and where it hands over to the Lua fold.
local procman = require "procman"
local core = require "procman.core"
local fold = require "procman.fold"
local fold_scan = require "procman.fold_scan"
local batch = require "procman.workflows.batch"

local files = require "spec.support.files"

local other = procman.workflow {
  name = "other", correlate = "id", starts = { "go" },
  init = function(id) return { id = id, n = 0 } end,
  on = {
    go = function(state, event)
      state.n = state.n + 1
      if event.later then return { procman.after(event.later, { event_type = "go", id = state.id }, "k") } end
      if event.fail then error("cannot go", 0) end
      return { { command_type = "went", n = state.n, text = event.text } }
    end,
    stop = function(state) state.stopped = true end,
  },
  done = function(state) return state.stopped == true end,
}

local function open(path, extra)
  local opts = { workflows = { batch, other }, journal = path, on_error = "park", clock = function() return 1 end }
  for k, v in pairs(extra or {}) do opts[k] = v end
  return assert(procman.router(opts))
end

local function created(id, n)
  return { event_type = "batch_created", batch_id = id, event_id = "c" .. tostring(id) .. "/" .. n,
           files = { "a", "b" } }
end

local function processed(id, file, n)
  return { event_type = "file_processed", batch_id = id, event_id = "p" .. tostring(id) .. "/" .. n,
           file = { id = file, status = "success" } }
end

-- Flows that complete, flows left live, acks, integer and string ids
-- non-UTF-8 and long ids, an event without event_id, both workflows.
local function common(r)
  for i = 1, 6 do r:handle(created(i, 1)) end
  r:handle(created(7, 1))
  r:handle(created("\xff\xfe", 1))
  r:handle(created(string.rep("long", 10), 1))      -- command ids over 31 bytes
  r:handle(created(string.rep("\xfe", 300), 1))    -- over 255 bytes, not UTF-8
  for i = 1, 4 do
    r:handle(processed(i, "a", 2))
    r:handle(processed(i, "b", 3))
  end
  r:handle(processed(5, "a", 2))
  r:handle(processed(5, "a", 2))  -- a redelivery: no record
  r:handle { event_type = "go", id = 1, text = "\xff" }
  r:handle { event_type = "go", id = "x", event_id = 12 }
  r:handle { event_type = "stop", id = "x" }
  r:ack("batch/1/1/1")
  r:ack("batch/7/1/2")
  r:handle(processed(7, "a", 2))
end

-- Everything the router keeps, from its own tables (exact bytes of the outbox).
local function internals(r)
  local flows = {}
  for pm in r:flows() do
    flows[#flows + 1] = { tostring(pm) .. " " .. type(pm:id()), pm:version(), pm:status(), pm:state(),
                          core.event_ids(pm) }
  end
  table.sort(flows, function(x, y) return x[1] < y[1] end)  -- 7 and "7" apart
  local finished = {}
  for name, by_id in pairs(r.finished) do
    for id, final in pairs(by_id) do finished[#finished + 1] = { name, id, fold.final_status(final), fold.final_ids(final) } end
  end
  local function key(x) return x[1] .. "/" .. type(x[2]) .. "/" .. tostring(x[2]) end
  table.sort(finished, function(x, y) return key(x) < key(y) end)
  return { flows = flows, finished = finished, finished_count = r.finished_count,
           finished_of = r.finished_of, outbox = r.outbox:encoded(), pending = r:pending(),
           seq = r.seq, next_dead_letter = r.dead.next_id, dead = r:dead_letters(), parked = r:parked(),
           timers = r:timers(), recovered = r.recovered, count = r.outbox:size() }
end

-- The state recovery gives with the scan and with the Lua fold alone, and
-- how far the scan went (records).
local function both(path, extra)
  fold_scan.enabled = false
  local plain = open(path, extra)
  local want = internals(plain)
  plain:close()
  fold_scan.enabled = true
  local scanned = open(path, extra)
  local got = internals(scanned)
  scanned:close()
  local j = assert(core.journal_open(path, { repair = extra and extra.repair }))
  local names = { "batch", "other" }
  local records, stopped = core.fold_scan(j, names):result()
  j:close()
  return want, got, records, stopped
end

describe("procman.fold_scan (recovery's first pass in C)", function()
  local path
  files.journal_each_test(function(p) path = p end)
  after_each(function() fold_scan.enabled = true end)

  it("folds a journal of common records entirely, to the Lua fold's state", function()
    local r = open(path)
    common(r)
    r:close()
    local want, got, records, stopped = both(path)
    assert.same(want, got)
    assert.is_nil(stopped)
    assert.equal(want.recovered, records)
    assert.is_true(#want.finished > 4 and #want.flows > 3 and #want.outbox > 3)
  end)

  it("hands over to the Lua fold at a record it does not take, with the same state", function()
    local r = open(path)
    common(r)
    local before = r:stats().journal_bytes
    r:handle { event_type = "go", id = 2, later = 5 }  -- a timer directive
    r:handle { event_type = "go", id = 3, fail = true }  -- parked
    r:handle(created(20, 1))
    r:ack("batch/2/1/1")
    r:close()
    local want, got, records, stopped = both(path)
    assert.same(want, got)
    assert.equal(before, stopped)
    assert.is_true(records > 10 and records < want.recovered)
    assert.equal(1, #want.timers)
    assert.equal(1, #want.parked)
  end)

  it("hands over when the command ids of two flows read alike (7 and \"7\")", function()
    local r = open(path)
    common(r)
    local at = r:stats().journal_bytes
    r:handle(created("7", 1))
    r:handle(processed("7", "a", 2))
    r:close()
    local want, got, _, stopped = both(path)
    assert.same(want, got)
    assert.equal(at, stopped)
  end)

  it("takes a compacted journal (sequence, completed, live and pending records) and what follows", function()
    local r = open(path)
    common(r)
    assert.is_true(r:compact())
    r:handle(processed(5, "b", 3))
    r:handle(processed(6, "a", 2))
    r:ack("batch/6/1/1")
    r:close()
    local want, got, records, stopped = both(path)
    assert.same(want, got)
    assert.is_nil(stopped)
    assert.equal(want.recovered, records)
  end)

  it("keeps redeliveries no-ops after recovery, for completed and live flows", function()
    local r = open(path)
    common(r)
    r:close()
    local again = open(path)
    local before = internals(again)
    assert.same({}, again:handle(processed(1, "a", 2)))  -- completed: a redelivery
    assert.same({}, again:handle(processed(5, "a", 2)))  -- live
    local after = internals(again)
    before.recovered, after.recovered = nil, nil
    assert.same(before, after)
    again:close()
  end)

  -- A journal with one record written by hand after the router's.
  local function append_raw(kind, payload)
    local j = assert(core.journal_open(path))
    assert(j:append(kind, payload))
    j:close()
  end

  -- The common journal; its size (where what follows starts).
  local function common_journal()
    local r = open(path)
    common(r)
    local at = r:stats().journal_bytes
    r:close()
    return at
  end

  it("leaves bytes that are not canonical to the Lua fold (an integer in a long form)", function()
    local at = common_journal()
    -- seq 9999 as uint32 (0xce) where the encoder writes uint16: decodes the same
    local canonical = core.encode { seq = 9999, event = { event_type = "stop", id = 9 },
                                    flows = { { workflow = "other", flow = 9, commands = {}, done = true } } }
    local long = canonical:gsub("\xcd\x27\x0f", "\xce\x00\x00\x27\x0f")
    assert.are_not.equal(canonical, long)
    assert.same(core.decode(canonical), core.decode(long))
    append_raw(1, long)
    local want, got, _, stopped = both(path)
    assert.same(want, got)
    assert.equal(at, stopped)
    assert.equal(9999, got.seq)
  end)

  it("takes acks of ids that are not pending, and of ids that are not strings, as no-ops", function()
    common_journal()
    append_raw(2, core.encode { id = "no such id" })
    append_raw(2, core.encode { id = 12 })
    append_raw(2, core.encode { "an array" })
    append_raw(2, core.encode { id = "batch/2/1/1" })
    local want, got, records, stopped = both(path)
    assert.same(want, got)
    assert.is_nil(stopped)
    assert.equal(want.recovered, records)
  end)

  it("leaves a record that lists one flow twice to the Lua fold", function()
    local at = common_journal()
    local twice = { workflow = "other", flow = 40, commands = {}, status = "b" }
    append_raw(1, core.encode { seq = 500, event = { event_type = "go", id = 40, event_id = "twice" },
                                flows = { { workflow = "other", flow = 40, commands = {}, status = "a" }, twice } })
    local want, got, _, stopped = both(path, { on_divergence = "warn", warn = function() end })
    assert.same(want, got)
    assert.equal(at, stopped)
  end)

  it("leaves a record the Lua fold refuses to it: the same error", function()
    common_journal()
    append_raw(1, core.encode { seq = 1, event = {}, flows = { { workflow = "nope", flow = 1, commands = {} } } })
    fold_scan.enabled = false
    local ok1, plain = pcall(open, path)
    fold_scan.enabled = true
    local ok2, scanned = pcall(open, path)
    assert.is_false(ok1)
    assert.is_false(ok2)
    assert.equal(plain, scanned)
    assert.matches("workflow \"nope\"", scanned)
  end)

  it("reads a repaired journal's records around the damaged range as the Lua fold does", function()
    local r = open(path)
    common(r)
    local middle = r:stats().journal_bytes
    r:handle(created(30, 1))
    r:handle(created(31, 1))
    r:close()
    local f = assert(io.open(path, "r+b"))
    f:seek("set", middle + 12)
    f:write("\0\0\0\0")
    f:close()
    local want, got = both(path, { repair = true, warn = function() end })
    assert.same(want, got)
    assert.is_true(got.recovered > 0)
  end)

  it("gives its memory back when told to, once, and is then refused", function()
    common_journal()
    local j = assert(core.journal_open(path))
    local scan = core.fold_scan(j, { "batch", "other" })
    j:close()
    assert.is_true(scan:result() > 0)
    scan:free()
    scan:free()
    assert.error_matches(function() scan:result() end, "the scan was freed")
    scan = nil  -- luacheck: ignore
    collectgarbage()
  end)

  it("reads as a stream: a journal larger than its window", function()
    local r = open(path)
    for i = 1, 3000 do r:handle(created(i, 1)) end
    for i = 1, 3000, 2 do r:handle(processed(i, "a", 2)) r:handle(processed(i, "b", 3)) end
    local bytes = r:stats().journal_bytes
    r:close()
    local want, got, _, stopped = both(path)
    assert.is_true(bytes > 1024 * 1024)
    assert.same(want, got)
    assert.is_nil(stopped)
  end)
end)
