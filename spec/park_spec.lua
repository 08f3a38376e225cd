-- Poison events: on_error = "park", r:parked, r:resume, r:skip; and
-- on_unroutable = "dead_letter".
local procman = require "procman"
local batch = require "procman.workflows.batch"

local files = require "spec.support.files"
local routers = require "spec.support.routers"

-- A counter that fails on events marked poison while 'broken' is set (the
-- bug), so that a test can "deploy a fix" by clearing it.
local broken = true
local counter = procman.workflow {
  name = "counter",
  correlate = "id",
  starts = { "add" },
  init = function(id) return { id = id, total = 0 } end,
  on = {
    add = function(state, event)
      if event.poison and broken then error("cannot add " .. tostring(event.n), 0) end
      state.total = state.total + event.n
      return { { command_type = "added", total = state.total } }
    end,
    bad_commands = function() return { { command_type = "x", f = print } } end,
    finish = function(state) state.finished = true end,
  },
  done = function(state) return state.finished == true end,
}

local function add(id, n, poison, event_id)
  return { event_type = "add", id = id, n = n, poison = poison, event_id = event_id }
end

-- Flow "a": 1 applied, then 2 (poison: parks the flow), then 3 (held).
local function park_a(r)
  r:handle(add("a", 1))
  r:handle(add("a", 2, true))
  r:handle(add("a", 3))
end

describe("parking", function()
  local path
  before_each(function()
    broken = true
    path = files.temp_path()
  end)
  after_each(function()
    os.remove(path)
    os.remove(path .. ".compact")
  end)

  local function router(opts)
    opts = opts or {}
    opts.workflows = opts.workflows or { counter }
    if opts.on_error == nil then opts.on_error = "park" end
    return assert(procman.router(opts))
  end

  it("raises by default, changing nothing", function()
    local r = router { on_error = "raise" }
    r:handle(add("a", 1))
    routers.refuses(r, add("a", 2, true), "counter/a: handler for 'add' failed: cannot add 2")
    assert.same({}, r:parked())
  end)

  it("parks the failing flow, keeps its later events unapplied, and lets others go on", function()
    local r = router { journal = path }
    r:handle(add("a", 1))
    assert.same({}, r:handle(add("a", 2, true)))
    assert.same({}, r:handle(add("a", 3)))
    assert.equal(1, #r:handle(add("b", 5)))
    assert.same({ { workflow = "counter", flow = "a", error = "counter/a: handler for 'add' failed: cannot add 2",
                    event = add("a", 2, true), held = 2 } }, r:parked())
    local pm = r:flow("counter", "a")
    assert.equal(1, pm:version())
    assert.same({ id = "a", total = 1 }, pm:state())
    assert.equal(1, r:stats().parked)
    r:close()
  end)

  it("resumes the parked events in order after a fix", function()
    local r = router { journal = path }
    park_a(r)
    local out, err = r:resume("counter", "a")
    assert.is_nil(out[1])
    assert.equal("counter/a: handler for 'add' failed: cannot add 2", err)
    assert.equal(2, r:parked()[1].held)
    broken = false
    out, err = r:resume("counter", "a")
    assert.is_nil(err)
    assert.same({ "counter/a/2/1", "counter/a/3/1" }, { out[1].id, out[2].id })
    assert.same({ command_type = "added", total = 6 }, out[2].command)
    assert.same({}, r:parked())
    assert.same({ id = "a", total = 6 }, r:flow("counter", "a"):state())
    assert.error_matches(function() r:resume("counter", "a") end, "flow counter/a is not parked")
    assert.error_matches(function() r:resume("nope", "a") end, "no workflow named nope")
    local before = routers.snapshot(r)
    r:close()
    r = router { journal = path }
    assert.same(before, routers.snapshot(r))
    r:close()
  end)

  it("skips the first parked event, journaled, then resumes the rest", function()
    local r = router { journal = path }
    park_a(r)
    r:handle(add("a", 4, true))
    local out, err = r:skip("counter", "a")
    assert.equal(1, #out)
    assert.equal("counter/a: handler for 'add' failed: cannot add 4", err)
    assert.same(add("a", 4, true), r:parked()[1].event)
    local before = routers.snapshot(r)
    r:close()
    r = router { journal = path }
    assert.same(before, routers.snapshot(r))
    out, err = r:skip("counter", "a")
    assert.same({}, out)
    assert.is_nil(err)
    assert.same({}, r:parked())
    assert.same({ id = "a", total = 4 }, r:flow("counter", "a"):state())
    r:close()
  end)

  it("keeps parked flows across restart, also when the fix comes with the restart", function()
    local r = router { journal = path }
    park_a(r)
    local before = routers.snapshot(r)
    r:close()
    broken = false  -- the journal, not the code, says what happened
    r = router { journal = path }
    assert.same(before, routers.snapshot(r))
    assert.equal(2, #r:resume("counter", "a"))
    r:close()
  end)

  it("parks a new flow whose first event fails; the flow is live at version 0", function()
    local r = router {}
    r:handle(add("n", 1, true))
    assert.equal(0, r:flow("counter", "n"):version())
    assert.equal(1, #r:parked())
    broken = false
    assert.equal(1, #r:resume("counter", "n"))
    assert.equal(1, r:flow("counter", "n"):version())
  end)

  it("parks a flow whose handler returns commands that are not data", function()
    local r = router { journal = path }
    r:handle(add("a", 1))
    assert.same({}, r:handle { event_type = "bad_commands", id = "a" })
    assert.matches("counter/a: handler for 'bad_commands' returned commands that are not data",
                   r:parked()[1].error)
    assert.equal(1, r:flow("counter", "a"):version())
    r:close()
  end)

  it("keeps parked flows through compaction", function()
    local r = router { journal = path }
    park_a(r)
    r:handle(add("b", 3))
    local before = routers.snapshot(r, true)
    assert.truthy(r:compact())
    r:close()
    r = router { journal = path }
    assert.same(before, routers.snapshot(r, true))
    broken = false
    assert.equal(2, #r:resume("counter", "a"))
    r:close()
  end)

  it("dead-letters parked events left when a retried event completes the flow", function()
    local r = router { clock = function() return 1000 end }
    r:handle(add("a", 1))
    r:handle(add("a", 2, true))
    r:handle { event_type = "finish", id = "a" }
    r:handle(add("a", 3))
    broken = false
    local out = r:resume("counter", "a")
    assert.equal(1, #out)
    assert.equal(1, 0 + #r:dead_letters())
    assert.same({ id = 1, event = add("a", 3), error = "flow counter/a completed while this event was parked",
                  time = 1000 }, r:dead_letters()[1])
    assert.same({}, r:parked())
    assert.truthy(r:completed("counter", "a"))
  end)

  it("parks a flow whose timer event fails, and holds the timer events of a parked flow", function()
    local wf = procman.workflow {
      name = "t", correlate = "id", starts = { "go" },
      on = { go = function() return { procman.after(1, { event_type = "boom" }), procman.after(2, { event_type = "ok" }) } end,
             boom = function() if broken then error("boom", 0) end end,
             ok = function() return { { command_type = "fine" } } end },
    }
    local r = router { workflows = { wf }, journal = path, clock = function() return 0 end }
    r:handle { event_type = "go", id = 1 }
    assert.same({}, r:tick(10))
    assert.same({}, r:timers())
    assert.same({ { workflow = "t", flow = 1, error = "t/1: handler for 'boom' failed: boom",
                    event = { event_type = "boom" }, held = 2 } }, r:parked())
    r:close()
    r = router { workflows = { wf }, journal = path }
    broken = false
    local out = r:resume("t", 1)
    assert.same({ command_type = "fine" }, out[1].command)
    assert.equal(3, r:flow("t", 1):version())
    r:close()
  end)

  it("does not hold up 10,000 other flows", function()
    local r = router { workflows = { batch, counter } }
    r:handle(add("stuck", 1, true))
    for i = 1, 10000 do
      r:handle { event_type = "batch_created", batch_id = i, files = { "f" } }
      r:handle(add("stuck", i))
      r:handle { event_type = "file_processed", batch_id = i, file = { id = "f", status = "success" } }
    end
    local s = r:stats()
    assert.equal(10000, s.completed)
    assert.equal(1, s.parked)
    assert.equal(1, s.live)
    assert.equal(10001, r:parked()[1].held)
  end)

  it("redelivery of an event the flow already applied stays a no-op after resume", function()
    local r = router {}
    r:handle(add("a", 1, false, "e1"))
    r:handle(add("a", 2, true, "e2"))
    r:handle(add("a", 1, false, "e1"))  -- held, though already applied
    broken = false
    local out = r:resume("counter", "a")
    assert.equal(1, #out)
    assert.same({ id = "a", total = 3 }, r:flow("counter", "a"):state())
  end)
end)

describe("dead letters", function()
  local path
  files.journal_each_test(function(p) path = p end)

  it("raise by default", function()
    local r = procman.router { workflows = { batch } }
    routers.refuses(r, { event_type = "file_processed", batch_id = "x", file = { id = "f", status = "success" } },
                    "no flow batch/x for file_processed")
    assert.same({}, r:dead_letters())
  end)

  it("keep unroutable events with the reason, journaled", function()
    local r = procman.router { workflows = { batch }, journal = path, on_unroutable = "dead_letter",
                               clock = function() return 1234 end }
    local lost = { event_type = "file_processed", batch_id = "x", file = { id = "f", status = "success" } }
    assert.same({}, r:handle(lost))
    assert.same({}, r:handle { event_type = "file_processed" })
    r:handle { event_type = "batch_created", batch_id = "b", files = {} }
    r:handle { event_type = "batch_created", batch_id = "b", files = {} }
    local expected = {
      { id = 1, time = 1234, event = lost, error = "procman.router: no flow batch/x for file_processed" },
      { id = 2, time = 1234, event = { event_type = "file_processed" },
        error = "procman.router: event 'file_processed' lacks the field batch_id, which workflow \"batch\" needs" },
      { id = 3, time = 1234, event = { event_type = "batch_created", batch_id = "b", files = {} },
        error = "procman.router: flow batch/b is complete (success): event 'batch_created' came after it finished" },
    }
    assert.same(expected, r:dead_letters())
    assert.equal(3, r:stats().dead_letters)
    r:close()
    r = procman.router { workflows = { batch }, journal = path }
    assert.same(expected, r:dead_letters())
    assert.truthy(r:compact())
    r:close()
    r = procman.router { workflows = { batch }, journal = path }
    assert.same(expected, r:dead_letters())
    r:close()
  end)

  it("still raises for events that are not events", function()
    local r = procman.router { workflows = { batch }, on_unroutable = "dead_letter" }
    assert.error_matches(function() r:handle("x") end, "event must be a table")
    assert.error_matches(function() r:handle {} end, "event.event_type must be a non%-empty string")
  end)

  it("checks the options", function()
    assert.error_matches(function() procman.router { workflows = { batch }, on_error = "ignore" } end,
                         'on_error must be "raise" or "park", got ignore')
    assert.error_matches(function() procman.router { workflows = { batch }, on_unroutable = true } end,
                         'on_unroutable must be "raise" or "dead_letter", got true')
    assert.error_matches(function() procman.router { workflows = { batch }, clock = 5 } end,
                         "clock must be a function, got number")
  end)
end)
