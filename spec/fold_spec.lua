-- procman.fold: one module says what a journal record does to the state.
-- The router's live state, its recovery, compaction and the tools'
-- journal_view must agree on a journal with every kind of record.
local procman = require "procman"
local core = require "procman.core"
local fold = require "procman.fold"
local journal_view = require "procman.journal_view"
local records = require "procman.records"

local files = require "spec.support.files"

local broken = true
local handled = 0  -- handler calls, to see which records recovery replays
local counter = procman.workflow {
  name = "counter", correlate = "id", starts = { "add" },
  init = function(id) return { id = id, total = 0 } end,
  on = {
    add = function(state, event)
      handled = handled + 1
      if event.poison and broken then error("cannot add " .. tostring(event.n), 0) end
      state.total = state.total + event.n
      local out = { { command_type = "added", total = state.total } }
      if event.remind then out[2] = procman.after(event.remind, { event_type = "add", id = state.id, n = 0 }, "r") end
      return out
    end,
    finish = function(state)
      handled = handled + 1
      state.finished = true
      return { { command_type = "finished" } }
    end,
  },
  done = function(state) return state.finished == true end,
}

local function add(id, n, extra)
  local e = { event_type = "add", id = id, n = n, event_id = id .. "/" .. n }
  for k, v in pairs(extra or {}) do e[k] = v end
  return e
end

-- Every kind of record: events applied, parked, held, resumed, skipped;
-- timers set, fired and replaced; acks; dead letters made, retried and
-- dropped; late events; flows completed with parked events left.
local function workload(r)
  r:handle(add("a", 1, { remind = 5 }))
  r:handle(add("b", 1))
  r:handle(add("b", 2, { poison = true }))  -- parks b
  r:handle(add("b", 3))                     -- held
  r:handle(add("c", 1))
  r:handle(add("c", 2, { poison = true }))  -- parks c
  r:handle(add("c", 3))                     -- held
  r:handle { event_type = "finish", id = "a" }
  r:handle(add("a", 9))                     -- late: a dead letter
  r:handle(add("d", 1, { remind = 1 }))
  r:tick(2)                                 -- d's timer fires
  r:handle(add("e", 1, { remind = 7 }))
  r:handle(add("e", 2, { remind = 8 }))     -- replaces e's timer (same key)
  r:skip("counter", "c")                    -- c: 2 skipped, 3 applied
  r:ack("counter/d/1/1")
  broken = false
  r:resume("counter", "b")
  r:handle(add("f", 1, { remind = 50 }))
  broken = true
  r:handle(add("f", 2, { poison = true }))  -- parks f
  r:handle { event_type = "finish", id = "e" }
  r:handle(add("e", 3))                     -- late: a dead letter
  r:drop_dead_letter(r:dead_letters()[1].id)
  r:ack("counter/b/1/1")
end

-- What every reader must agree on, from a router.
local function router_state(r)
  local flows = {}
  for pm in r:flows() do flows[#flows + 1] = { tostring(pm), pm:version(), pm:status(), pm:state() } end
  table.sort(flows, function(x, y) return x[1] < y[1] end)
  local completed = {}
  for _, id in ipairs { "a", "b", "c", "d", "e", "f" } do completed[id] = r:completed("counter", id) end
  return { pending = r:pending(), parked = r:parked(), timers = r:timers(), dead = r:dead_letters(),
           completed = completed, seq = r:stats().seq, flows = flows }
end

-- The same, from a folded state (counted flows: no states).
local function folded(state)
  local completed = {}
  for id, final in pairs(state.finished.counter or {}) do completed[id] = fold.final_status(final) end
  local versions = {}
  for id, g in pairs(state.live.counter or {}) do versions[id] = { g:version(), g:status() } end
  return { pending = state.outbox:list(), timers = state.schedule:list(), dead = state.dead.list,
           completed = completed, seq = state.seq, versions = versions }
end

local function versions_of(r)
  local out = {}
  for pm in r:flows() do out[pm:id()] = { pm:version(), pm:status() } end
  return out
end

local function fold_file(path)
  local state = fold.new()
  local next_record = assert(core.journal_scan(path))
  for offset, kind, payload in next_record do fold.record(state, kind, core.decode(payload), offset, payload) end
  return state
end

describe("procman.fold", function()
  local path
  before_each(function()
    broken, handled = true, 0
    path = files.temp_path()
  end)
  after_each(function()
    os.remove(path)
    os.remove(path .. ".compact")
  end)

  local function open()
    return assert(procman.router { workflows = { counter }, journal = path, on_error = "park",
                                   on_late = "dead_letter", clock = function() return 1 end })
  end

  it("gives the live router's state when it reads the router's journal", function()
    local r = open()
    workload(r)
    local live = router_state(r)
    r:close()
    assert.is_true(#live.pending > 0 and #live.parked == 1 and #live.timers > 0 and #live.dead > 0)
    local state = fold_file(path)
    local want = { pending = live.pending, timers = live.timers, dead = live.dead, completed = live.completed,
                   seq = live.seq, versions = nil }
    local got = folded(state)
    got.versions = nil
    assert.same(want, got)
  end)

  it("recovery gives the live router back, replaying only the flows live at the end", function()
    local r = open()
    workload(r)
    local live, versions = router_state(r), versions_of(r)
    r:close()
    local live_calls = handled
    broken, handled = false, 0  -- the fix is deployed: b's resumed event replays
    local again = open()
    assert.same(live, router_state(again))
    assert.same(versions, versions_of(again))
    -- a and e completed: none of their events ran again; b, d, f (live) and c did
    local replayed = 0
    for _, v in pairs(versions) do replayed = replayed + v[1] end
    assert.equal(replayed, handled)
    assert.is_true(handled < live_calls - 4)
    again:close()
  end)

  it("compaction writes the state as records that fold back into it", function()
    local r = open()
    workload(r)
    local live = router_state(r)
    local list = fold.state_records(r)
    local state = fold.new()
    for i, rec in ipairs(list) do
      local payload = type(rec[2]) == "string" and rec[2] or core.encode(rec[2])
      fold.record(state, rec[1], core.decode(payload), i, payload)
    end
    local got = folded(state)
    assert.same(live.pending, got.pending)
    assert.same(live.timers, got.timers)
    assert.same(live.dead, got.dead)
    assert.same(live.completed, got.completed)
    assert.equal(live.seq, got.seq)
    assert.is_true(r:compact())
    assert.same(live, router_state(r))
    r:close()
    broken = false
    local again = open()
    assert.same(live, router_state(again))
    again:close()
  end)

  it("is what procman inspect shows (journal_view)", function()
    local r = open()
    workload(r)
    local live, versions = router_state(r), versions_of(r)
    r:close()
    local view = assert(journal_view.read(path))
    assert.same(live.pending, journal_view.pending(view))
    assert.same(live.parked, journal_view.parked(view))
    assert.same(live.dead, journal_view.dead_letters(view))
    assert.equal(live.seq, view.seq)
    for id, v in pairs(versions) do
      assert.same(v, { view.flows.counter[id].version, view.flows.counter[id].status })
    end
    assert.is_true(view.flows.counter.a.completed)
    assert.is_false(view.flows.counter.b.completed)
  end)

  it("refuses a journal that names a workflow the router was not given, even with no live flow", function()
    local other = procman.workflow { name = "other", correlate = "id", starts = { "go" },
                                     on = { go = function(state) state.done = true end },
                                     done = function(state) return state.done end }
    local w = assert(procman.router { workflows = { counter, other }, journal = path })
    w:handle { event_type = "go", id = 1 }
    assert.equal("done", w:completed("other", 1) and "done")
    w:close()
    local ok, err = pcall(procman.router, { workflows = { counter }, journal = path })
    assert.is_false(ok)
    assert.matches('the journal has flows of workflow "other", which this router was not given %(byte 16 of ', err)
  end)

  it("names a record of an unknown type, where it is", function()
    local j = assert(core.journal_open(path))
    j:append(records.EVENT, core.encode { seq = 1, event = add("a", 1), flows = {} })
    j:append(99, core.encode {})
    j:close()
    local ok, err = pcall(procman.router, { workflows = { counter }, journal = path })
    assert.is_false(ok)
    assert.matches("unknown record type 99 at byte %d+", err)
    local view, why = journal_view.read(path)
    assert.is_nil(view)
    assert.matches("%(type 99%) is not a router record: unknown type", why)
  end)
end)
