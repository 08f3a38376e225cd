-- A step taken back after it staged envelopes (a later target's command is
-- not data) must leave nothing behind in the outbox: with the index by id
-- made (r:ack made it) and a command pending (so it is kept), each refused
-- event added an entry (id -> false, from outbox_will_index) that stayed
-- until the outbox emptied: memory grew with every refused event.
local procman = require "procman"

local a = procman.workflow { name = "a", correlate = "id", starts = { "go" },
  on = { go = function() return { { command_type = "c" }, { command_type = "d" } } end } }
local b = procman.workflow { name = "b", correlate = "id", starts = { "go" },
  on = { go = function(_, e) if e.fail then return { { command_type = "x", f = print } } end end } }

local function heap()
  collectgarbage()
  collectgarbage()
  return collectgarbage("count")
end

describe("a step taken back after staging envelopes", function()
  it("leaves no entry in the outbox's index", function()
    local r = procman.router { workflows = { a, b } }
    r:handle { event_type = "go", id = "keep" }
    r:ack(r:pending()[1].id)  -- the index is made; one command stays pending
    local function refuse(from, to)
      for i = from, to do
        assert.is_false(pcall(r.handle, r, { event_type = "go", id = "x" .. i, fail = true }))
      end
    end
    refuse(1, 2000)  -- the index and the heap settle
    local before = heap()
    refuse(2001, 22000)
    local grown = heap() - before
    assert.equal(1, r:stats().pending)
    assert.is_false(r.outbox:has("a/x1/1/1"))
    assert.is_true(grown < 512, string.format("the heap grew by %.0f KB", grown))
  end)
end)
