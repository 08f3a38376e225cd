-- procman.patched / procman.deprecate_patch: code changes inside one
-- version, journaled per flow, as Temporal's patching.
local procman = require "procman"
local files = require "spec.support.files"

-- An order flow. 'patched' is the new code: a 'paid' order also asks for a
-- receipt (patch "receipt"); 'fail' makes a handler raise.
local function order(patched, seen)
  return procman.workflow {
    name = "order", correlate = "order", starts = { "placed" },
    init = function(id) return { id = id, paid = 0 } end,
    on = {
      placed = function(state) return { { command_type = "reserve", order = state.id } } end,
      paid = function(state, event)
        state.paid = state.paid + 1
        local out = { { command_type = "ship", order = state.id } }
        local took = patched and procman.patched("receipt")
        if seen then seen[#seen + 1] = took end
        if took then
          state.receipts = (state.receipts or 0) + 1
          out[#out + 1] = { command_type = "receipt", order = state.id }
        end
        if event.fail then error("card declined") end
        return out
      end,
    },
  }
end

local function types(envelopes)
  local out = {}
  for i, e in ipairs(envelopes) do out[i] = e.command.command_type end
  return out
end

describe("procman.patched", function()
  local path
  files.journal_each_test(function(p) path = p end)

  it("is true outside a router, and checks its id", function()
    local pm = order(true):new("o1")
    pm:handle { event_type = "placed" }
    assert.same({ "ship", "receipt" }, types((function()
      local out = {}
      for i, c in ipairs(pm:handle { event_type = "paid" }) do out[i] = { command = c } end
      return out
    end)()))
    for _, bad in ipairs { "", 7, nil } do
      local ok, err = pcall(procman.patched, bad)
      assert.is_false(ok)
      assert.matches("procman.patched: the change id must be a non-empty string", err, 1, true)
    end
  end)

  it("replays old history without the change and takes it for new events, across restarts", function()
    local r = procman.router { workflows = { order(false) }, journal = path }
    r:handle { event_type = "placed", order = "o1" }
    r:handle { event_type = "paid", order = "o1" }  -- old code: no receipt
    r:close()
    local seen = {}
    r = procman.router { workflows = { order(true, seen) }, journal = path }  -- no divergence
    assert.same({ false }, seen)  -- the old 'paid' replayed without the change
    local pm = r:flow("order", "o1")
    assert.same({ "ship", "receipt" }, types(r:handle { event_type = "paid", order = "o1" }))
    assert.equal(pm, r:flow("order", "o1"))  -- the same flow, its history restarted
    r:close()
    seen = {}
    r = procman.router { workflows = { order(true, seen) }, journal = path }
    assert.same({ false, true }, seen)  -- as the journal recorded
    assert.equal(1, procman.decode(procman.encode(r:flow("order", "o1"):state())).receipts)
    r:close()
  end)

  it("is recorded in the journal with the event that took it", function()
    local r = procman.router { workflows = { order(true) }, journal = path }
    r:handle { event_type = "placed", order = "o1" }
    r:handle { event_type = "paid", order = "o1" }
    r:close()
    local view = require("procman.journal_view").read(path)
    assert.same({ "receipt" }, view.flows.order.o1.patches)
  end)

  it("answers from what the flow took when a failed handler makes it rebuild its state", function()
    local r = procman.router { workflows = { order(false) }, journal = path }
    r:handle { event_type = "placed", order = "o1" }
    r:handle { event_type = "paid", order = "o1" }
    r:close()
    local seen = {}
    r = procman.router { workflows = { order(true, seen) }, journal = path, on_error = "park" }
    r:handle { event_type = "paid", order = "o1" }  -- takes the change
    r:handle { event_type = "paid", order = "o1", fail = true }  -- fails: the state is rebuilt
    assert.equal(1, #r:parked())
    local state = r:flow("order", "o1"):state()
    assert.equal(2, state.paid)
    assert.equal(1, state.receipts)
    r:close()
    r = procman.router { workflows = { order(true) }, journal = path, on_error = "park" }
    assert.same(state, r:flow("order", "o1"):state())
    r:close()
  end)

  it("is false for old history rebuilt after a failure, before the flow took it", function()
    local r = procman.router { workflows = { order(false) }, journal = path }
    r:handle { event_type = "placed", order = "o1" }
    r:handle { event_type = "paid", order = "o1" }
    r:close()
    r = procman.router { workflows = { order(true) }, journal = path, on_error = "park" }
    r:handle { event_type = "paid", order = "o1", fail = true }  -- takes it, fails: not taken
    local state = r:flow("order", "o1"):state()
    assert.equal(1, state.paid)
    assert.is_nil(state.receipts)
    r:close()
  end)

  it("survives compaction", function()
    local r = procman.router { workflows = { order(true) }, journal = path }
    r:handle { event_type = "placed", order = "o1" }
    r:handle { event_type = "paid", order = "o1" }
    assert.truthy(r:compact())
    r:close()
    local seen = {}
    r = procman.router { workflows = { order(true, seen) }, journal = path }
    r:handle { event_type = "paid", order = "o1" }
    assert.same({ true }, seen)
    assert.same({ "receipt" }, require("procman.journal_view").read(path).flows.order.o1.patches)
    r:close()
  end)

  it("retires with deprecate_patch: the new branch alone, the change still recorded", function()
    local r = procman.router { workflows = { order(true) }, journal = path }
    r:handle { event_type = "placed", order = "o1" }
    r:handle { event_type = "paid", order = "o1" }  -- took "receipt"
    r:close()
    local retired = procman.workflow {
      name = "order", correlate = "order", starts = { "placed" },
      on = {
        placed = function(state) return { { command_type = "reserve", order = state.id } } end,
        paid = function(state)
          procman.deprecate_patch("receipt")
          return { { command_type = "ship", order = state.id }, { command_type = "receipt", order = state.id } }
        end,
      },
      init = function(id) return { id = id } end,
    }
    r = procman.router { workflows = { retired }, journal = path }  -- replays o1: no divergence
    r:handle { event_type = "placed", order = "o2" }
    r:handle { event_type = "paid", order = "o2" }
    r:close()
    local flows = require("procman.journal_view").read(path).flows.order
    assert.same({ "receipt" }, flows.o1.patches)
    assert.same({ "receipt" }, flows.o2.patches)
  end)

  it("is in the sandbox's procman", function()
    local wf = assert(procman.loadstring([[
      return procman.workflow { name = "s", correlate = "id", starts = { "go" },
        on = { go = function()
          procman.deprecate_patch("old-change")
          return { { command_type = procman.patched("x") and "new" or "old" } }
        end } }]]))
    local r = procman.router { workflows = { wf }, journal = path }
    assert.same({ "new" }, types(r:handle { event_type = "go", id = 1 }))
    r:close()
    assert.same({ "old-change", "x" }, require("procman.journal_view").read(path).flows.s[1].patches)
  end)
end)
