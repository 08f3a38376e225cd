-- procman.schedule: a router's timers by flow, and the due index that lets
-- r:tick find what is due without looking at every waiting flow.
local procman = require "procman"
local schedule = require "procman.schedule"

local function after(seconds, key)
  return procman.after(seconds, { event_type = "ping" }, key)
end

local function names_of(taken)
  local out = {}
  for i, d in ipairs(taken) do out[i] = d.name .. "/" .. d.flow .. "@" .. d.timer.due end
  return out
end

describe("procman.schedule", function()
  it("takes what is due in order: due time, the order set, the workflow's place", function()
    local s = schedule.new { "first", "second" }
    s:set("second", "x", { after(5), after(1) }, 0, 1)
    s:set("first", "x", { after(5) }, 0, 1)
    s:set("first", "y", { after(1) }, 0, 2)
    s:set("first", "z", { after(9) }, 0, 3)
    local taken = s:take_due(5)
    assert.same({ "second/x@1", "first/y@1", "first/x@5", "second/x@5" }, names_of(taken))
    assert.equal(5, s:size())  -- taken is not removed: a timer leaves when it fires
  end)

  it("skips timers cancelled, replaced or dropped since they were indexed", function()
    local s = schedule.new { "w" }
    s:set("w", "a", { after(1, "k") }, 0, 1)
    s:set("w", "a", { after(3, "k") }, 0, 2)          -- replaces: due 3, not 1
    s:set("w", "b", { after(1, "k") }, 0, 3)
    s:set("w", "b", { procman.cancel("k") }, 0, 4)
    s:set("w", "c", { after(2) }, 0, 5)
    s:drop("w", "c")
    assert.same({ "w/a@3" }, names_of(s:take_due(10)))
    assert.equal(1, s:size())
  end)

  it("gives back what did not fire; what fired stays out", function()
    local s = schedule.new { "w" }
    s:set("w", "a", { after(1) }, 0, 1)
    s:set("w", "b", { after(2) }, 0, 2)
    local taken = s:take_due(5)
    local a = taken[1].timer
    s:remove("w", "a", a.seq, a.index)                 -- a fired, b did not
    s:put_back(taken)
    assert.same({ "w/b@2" }, names_of(s:take_due(5)))
  end)

  it("takes at most max, leaving the rest indexed", function()
    local s = schedule.new { "w" }
    for i = 1, 5 do s:set("w", i, { after(i) }, 0, i) end
    local taken = s:take_due(10, 2)
    assert.same({ "w/1@1", "w/2@2" }, names_of(taken))
    s:put_back(taken)
    assert.equal(5, #s:take_due(10))
  end)

  it("rebuilds an index that a failure left unsure before using it", function()
    local s = schedule.new { "w" }
    s:set("w", "a", { after(1) }, 0, 1)
    s:set("w", "b", { after(2) }, 0, 2)
    s:take_due(5)                                      -- and no put_back: say memory ran out
    assert.same({ "w/a@1", "w/b@2" }, names_of(s:take_due(5)))
  end)

  it("does not pile up cancelled timers in its index", function()
    local s = schedule.new { "w" }
    for i = 1, 20000 do  -- a batch's way: a timeout per file, cancelled by the result
      s:set("w", i % 7, { after(600, "timeout") }, 0, 2 * i)
      s:set("w", i % 7, { procman.cancel("timeout") }, 0, 2 * i + 1)
    end
    assert.equal(0, s:size())
    assert.is_true(#s.heap <= 1024 + 1, "the index holds " .. #s.heap .. " entries for no timer")
  end)

  it("lists copies of the timers, sorted, without the index's fields", function()
    local s = schedule.new { "w", "v" }
    s:set("v", "b", { after(1, "k") }, 10, 1)
    s:set("w", "a", { after(1) }, 10, 1)
    local list = s:list()
    assert.same({ { workflow = "w", flow = "a", due = 11, event = { event_type = "ping" } },
                  { workflow = "v", flow = "b", key = "k", due = 11, event = { event_type = "ping" } } }, list)
    list[1].event.event_type = "changed"
    assert.equal("ping", s:list("w")[1].event.event_type)
    assert.same({}, s:list("w", "zz"))
  end)
end)

describe("r:tick against the timers it lists", function()
  it("fires exactly the listed timers due, in the listed order, over random work", function()
    math.randomseed(1234)
    local reminder = assert(procman.load("spec/fixtures/reminder.lua"))
    local clock = 0
    local r = procman.router { workflows = { reminder }, clock = function() return clock end }
    local open = {}
    for step = 1, 3000 do
      local id = math.random(40)
      local roll = math.random(10)
      if not open[id] then
        if r:completed("reminder", id) == nil then
          r:handle { event_type = "open", id = id }
          open[id] = true
        end
      elseif roll <= 3 then
        r:handle { event_type = "snooze", id = id, seconds = math.random(0, 30) }
      elseif roll == 4 then
        r:handle { event_type = "stop", id = id }
      elseif roll == 5 then
        r:handle { event_type = "deadline", id = id, at = clock + math.random(0, 20), key = "d" .. step % 3 }
      elseif roll == 6 then
        r:handle { event_type = "close", id = id }
        open[id] = nil
      else
        clock = clock + math.random(0, 6)
        local max = math.random() < 0.3 and math.random(0, 3) or nil
        local expected = {}
        for _, t in ipairs(r:timers()) do
          if t.due <= clock and (max == nil or #expected < max) then expected[#expected + 1] = t.flow end
        end
        local fired = {}
        for _, e in ipairs(r:tick(clock, max)) do fired[#fired + 1] = e.flow end
        assert.same(expected, fired)
      end
    end
  end)
end)
