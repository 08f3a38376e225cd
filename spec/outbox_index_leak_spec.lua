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

  -- The same after an error raised once the envelopes are staged (here:
  -- a command that fits its envelope but nests too deep for the journal
  -- record, which says so with an error, not a return): the step's stack,
  -- where the staged ids were, is gone by then.
  it("leaves no entry in the outbox's index after an error past staging", function()
    local function nested(levels)
      local t = {}
      local at = t
      for _ = 1, levels do at.x = {} at = at.x end
      return t
    end
    local deep = nested(96)
    local c = procman.workflow { name = "c", correlate = "id", starts = { "go" },
      on = { go = function(_, e)
        if e.deep then return { { command_type = "c", d = deep } } end
        return { { command_type = "c" }, { command_type = "d" } }
      end } }
    local r = procman.router { workflows = { c } }
    r:handle { event_type = "go", id = "keep" }
    r:ack(r:pending()[1].id)  -- the index is made; one command stays pending
    local ok, err = pcall(r.handle, r, { event_type = "go", id = "x0", deep = true })
    assert.is_false(ok)
    assert.matches("nested more than 100 deep", err)
    local function refuse(from, to)
      for i = from, to do
        assert.is_false(pcall(r.handle, r, { event_type = "go", id = "x" .. i, deep = true }))
      end
    end
    refuse(1, 2000)
    local before = heap()
    refuse(2001, 22000)
    local grown = heap() - before
    assert.equal(1, r:stats().pending)
    assert.is_false(r.outbox:has("c/x1/1/1"))
    assert.is_true(grown < 512, string.format("the heap grew by %.0f KB", grown))
    assert.same({ { command_type = "c" }, { command_type = "d" } },
      { r:handle { event_type = "go", id = "after" }[1].command, r:pending()[3].command })
  end)
end)
