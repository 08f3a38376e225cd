-- Time as injected events: procman.after/at/cancel, r:tick, r:timers.
local procman = require "procman"

local files = require "spec.support.files"
local routers = require "spec.support.routers"

-- A flow that asks for a ping 10 s after it opens, can snooze (same key:
-- replaces), stop (cancel) and close (done). A file, so that a child
-- process can load it too.
local reminder = assert(procman.load("spec/fixtures/reminder.lua"))

local function clock_at(t)
  local clock = { now = t }
  clock.read = function() return clock.now end
  return clock
end

local function commands(envelopes)
  local out = {}
  for i, e in ipairs(envelopes) do out[i] = e.command end
  return out
end

describe("timers", function()
  local path
  files.journal_each_test(function(p) path = p end)

  describe("directives", function()
    it("are data, checked where the handler builds them", function()
      assert.same({ command_type = "procman.after", seconds = 5, event = { event_type = "x" }, key = "k" },
                  procman.after(5, { event_type = "x" }, "k"))
      assert.same({ command_type = "procman.at", at = 100, event = { event_type = "x" } },
                  procman.at(100, { event_type = "x" }))
      assert.same({ command_type = "procman.cancel", key = "k" }, procman.cancel("k"))
      assert.error_matches(function() procman.after(-1, { event_type = "x" }) end,
                           "procman.after: seconds must be a finite number >= 0, got %-1")
      assert.error_matches(function() procman.after(0 / 0, { event_type = "x" }) end, "seconds must be")
      assert.error_matches(function() procman.at(math.huge, { event_type = "x" }) end,
                           "procman.at: time must be a finite number")
      assert.error_matches(function() procman.after(1, "x") end,
                           "event must be a table with a non%-empty string event_type")
      assert.error_matches(function() procman.after(1, { event_type = "x" }, "") end,
                           "key must be a non%-empty string")
      assert.error_matches(function() procman.cancel() end, "procman.cancel: needs the key")
    end)

    it("never reach the outbox; the flow keeps them as timers", function()
      local clock = clock_at(1000)
      local r = procman.router { workflows = { reminder }, clock = clock.read }
      local out = r:handle { event_type = "open", id = "a" }
      assert.same({ { command_type = "hello", id = "a" } }, commands(out))
      assert.equal("reminder/a/1/1", out[1].id)
      assert.equal(1, #r:pending())
      assert.same({ { workflow = "reminder", flow = "a", key = "ping", due = 1010,
                      event = { event_type = "ping", id = "a" } } }, r:timers())
      assert.same(r:timers(), r:timers("reminder", "a"))
      assert.same({}, r:timers("reminder", "b"))
      assert.equal(1, r:stats().timers)
    end)

    it("refuses a hand-built directive that is malformed, changing nothing", function()
      local wf = procman.workflow {
        name = "bad", correlate = "id", starts = { "go" },
        on = { go = function() return { { command_type = "procman.after", seconds = "soon",
                                          event = { event_type = "x" } } } end },
      }
      local r = procman.router { workflows = { wf } }
      routers.refuses(r, { event_type = "go", id = 1 },
                      "bad/1: handler for 'go' returned a bad timer directive: commands[1]: "
                      .. 'procman.after: seconds must be a finite number >= 0, got "soon"')
    end)
  end)

  describe("r:tick", function()
    it("injects each due event once, and returns the envelopes", function()
      local clock = clock_at(0)
      local r = procman.router { workflows = { reminder }, clock = clock.read }
      r:handle { event_type = "open", id = "a" }
      assert.same({}, r:tick(9.5))
      local out = r:tick(10)
      assert.same({ { command_type = "pinged", id = "a", n = 1 } }, commands(out))
      assert.equal("reminder/a/2/1", out[1].id)
      assert.same({}, r:timers())
      assert.same({}, r:tick(1000))
      assert.equal(2, r:flow("reminder", "a"):version())
    end)

    it("reads the clock only when resolving 'after' and when tick has no time", function()
      local reads = 0
      local r = procman.router { workflows = { reminder }, clock = function() reads = reads + 1 return 50 end }
      r:handle { event_type = "open", id = "a" }
      assert.equal(1, reads)
      r:handle { event_type = "close", id = "a" }
      assert.equal(1, reads)
      r:handle { event_type = "open", id = "b" }
      assert.equal(2, reads)
      assert.same({ { command_type = "pinged", id = "b", n = 1 } }, commands(r:tick(60)))
      assert.equal(2, reads)
      assert.same({}, r:tick())
      assert.equal(3, reads)
    end)

    it("resolves 'after' inside a tick from the tick's time, not the clock", function()
      local r = procman.router { workflows = { reminder }, clock = function() return 0 end }
      r:handle { event_type = "open", id = "a" }
      r:handle { event_type = "stop", id = "a" }
      r:handle { event_type = "deadline", id = "a", at = 100, again = 7, key = "d" }
      assert.equal(1, #r:tick(200))
      assert.same({ 207 }, { r:timers()[1].due })
    end)

    it("fires in due order across flows, ties in the order they were set", function()
      local r = procman.router { workflows = { reminder }, clock = function() return 0 end }
      for _, id in ipairs { "a", "b", "c" } do r:handle { event_type = "open", id = id } end
      r:handle { event_type = "snooze", id = "a", seconds = 30 }  -- a now due at 30
      r:handle { event_type = "deadline", id = "c", at = 5, key = "early" }
      local fired = {}
      for _, e in ipairs(r:tick(100)) do fired[#fired + 1] = e.flow end
      assert.same({ "c", "b", "c", "a" }, fired)  -- c at 5, b at 10, c at 10 (set before), a at 30
    end)

    it("fires at most max timers when asked, leaving the rest due", function()
      local r = procman.router { workflows = { reminder }, clock = function() return 0 end }
      for _, id in ipairs { "a", "b", "c" } do r:handle { event_type = "open", id = id } end
      assert.same({}, r:tick(100, 0))
      assert.same({ "a" }, { r:tick(100, 1)[1].flow })
      assert.equal(2, #r:timers())
      assert.equal(2, #r:tick(100, 5))
      assert.error_matches(function() r:tick(100, -1) end, "tick's max must be an integer >= 0, got %-1")
      assert.error_matches(function() r:tick(100, 1.5) end, "tick's max must be an integer")
    end)

    it("tells when the next timer is due, so a loop knows how long it may sleep", function()
      local r = procman.router { workflows = { reminder }, clock = function() return 0 end }
      assert.is_nil(r:next_due())
      r:handle { event_type = "open", id = "a" }                 -- a: 10
      r:handle { event_type = "open", id = "b" }                 -- b: 10
      r:handle { event_type = "snooze", id = "a", seconds = 3 }  -- a: 3, replacing 10
      assert.equal(3, r:next_due())
      r:handle { event_type = "stop", id = "a" }
      assert.equal(10, r:next_due())
      assert.equal(1, #r:tick(10))
      assert.is_nil(r:next_due())
      r:close()
      assert.error_matches(function() r:next_due() end, "closed")
    end)

    it("replaces a timer with the same key, and cancels by key", function()
      local r = procman.router { workflows = { reminder }, clock = function() return 0 end }
      r:handle { event_type = "open", id = "a" }
      r:handle { event_type = "snooze", id = "a", seconds = 60 }
      assert.same({ 60 }, { r:timers()[1].due })
      assert.equal(1, #r:timers())
      r:handle { event_type = "stop", id = "a" }
      assert.same({}, r:timers())
      assert.same({}, r:tick(1000))
    end)

    it("drops the timers of a completed flow", function()
      local r = procman.router { workflows = { reminder }, clock = function() return 0 end }
      r:handle { event_type = "open", id = "a" }
      r:handle { event_type = "close", id = "a" }
      assert.same({}, r:timers())
      assert.same({}, r:tick(1000))
      assert.equal("reminder/a", next({ ["reminder/a"] = r:completed("reminder", "a") ~= nil }))
    end)

    it("fires a timer set while ticking at a later tick, so handlers cannot loop", function()
      local r = procman.router { workflows = { reminder }, clock = function() return 0 end }
      r:handle { event_type = "open", id = "a" }
      r:handle { event_type = "deadline", id = "a", at = 10, again = 0, key = "ping" }
      assert.equal(1, #r:tick(10))
      assert.same({ { workflow = "reminder", flow = "a", due = 10,
                      event = { event_type = "ping", id = "a" } } }, r:timers())
      assert.equal(1, #r:tick(10))
      assert.same({}, r:timers())
    end)

    it("leaves a timer whose event fails in place, changing nothing", function()
      local fail = true
      local wf = procman.workflow {
        name = "w", correlate = "id", starts = { "go" },
        on = { go = function() return { procman.after(1, { event_type = "boom" }) } end,
               boom = function() if fail then error("not now", 0) end end },
      }
      local r = procman.router { workflows = { wf }, journal = path, clock = function() return 0 end }
      r:handle { event_type = "go", id = 1 }
      local before = routers.snapshot(r)
      local bytes = r:stats().journal_bytes
      assert.error_matches(function() r:tick(5) end, "w/1: handler for 'boom' failed: not now")
      assert.same(before, routers.snapshot(r))
      assert.equal(bytes, r:stats().journal_bytes)
      fail = false
      r:tick(5)
      assert.same({}, r:timers())
      r:close()
    end)

    it("refuses a time that is not a number, and a clock that returns none", function()
      local r = procman.router { workflows = { reminder }, clock = function() return "noon" end }
      assert.error_matches(function() r:tick("later") end, "tick needs a time %(a number%), got later")
      assert.error_matches(function() r:tick() end, "clock%(%) must return a number, got noon")
      routers.refuses(r, { event_type = "open", id = "a" }, "clock() must return a number, got noon")
    end)
  end)

  describe("with a journal", function()
    it("keeps timers across restart and compaction, and fires each once", function()
      local r = procman.router { workflows = { reminder }, journal = path, clock = function() return 0 end }
      r:handle { event_type = "open", id = "a" }
      r:handle { event_type = "open", id = "b" }
      r:handle { event_type = "deadline", id = "b", at = 3, key = "d" }
      local timers = r:timers()
      r:close()
      r = procman.router { workflows = { reminder }, journal = path, clock = function() return 999 end }
      assert.same(timers, r:timers())
      assert.same({ "b" }, { r:tick(5)[1].flow })
      local expected = r:timers()
      assert.truthy(r:compact())
      r:close()
      r = procman.router { workflows = { reminder }, journal = path }
      assert.same(expected, r:timers())
      assert.equal(2, #r:tick(10))
      r:close()
      r = procman.router { workflows = { reminder }, journal = path }
      assert.same({}, r:timers())
      assert.same({}, r:tick(1e9))
      assert.equal(2, r:flow("reminder", "a"):version())
      assert.equal(4, r:flow("reminder", "b"):version())
      r:close()
    end)

    it("fires a timer once across a crash, before or after it fired", function()
      local setup = [[
        local procman = require "procman"
        local wf = assert(procman.load("spec/fixtures/reminder.lua"))
        local r = procman.router { workflows = { wf }, journal = arg[1], clock = function() return 0 end }
        r:handle { event_type = "open", id = "a" }
        if arg[2] == "tick" then assert(#r:tick(10) == 1) end
      ]]
      for _, when in ipairs { "before", "tick" } do
        os.remove(path)
        routers.crash_after(setup, path, when)
        local wf = assert(procman.load("spec/fixtures/reminder.lua"))
        local r = procman.router { workflows = { wf }, journal = path }
        assert.equal(when == "tick" and 0 or 1, #r:timers())
        local fired = #r:tick(10)
        assert.equal(when == "tick" and 0 or 1, fired)
        assert.equal(2, r:flow("reminder", "a"):version())
        assert.same({ event_type = "ping", id = "a" }, r:flow("reminder", "a"):history()[2])
        r:close()
      end
    end)

    it("journals a fired timer whose event the flow had already handled", function()
      local wf = procman.workflow {
        name = "w", correlate = "id", starts = { "go" },
        on = { go = function() return { procman.after(1, { event_type = "poke", event_id = "p1" }) } end,
               poke = function() end },
      }
      local r = procman.router { workflows = { wf }, journal = path, clock = function() return 0 end }
      r:handle { event_type = "go", id = 1 }
      r:handle { event_type = "poke", id = 1, event_id = "p1" }
      assert.same({}, r:tick(5))
      assert.same({}, r:timers())
      r:close()
      r = procman.router { workflows = { wf }, journal = path }
      assert.same({}, r:timers())
      r:close()
    end)
  end)
end)
