-- procman.engine (csrc/engine.c): the router's common step in C. The same
-- events through the engine and through the router's Lua path give the
-- same journal, byte for byte, and the same router; what the engine does
-- not take it leaves to the Lua path having changed nothing.
local procman = require "procman"
local core = require "procman.core"
local fold = require "procman.fold"

local files = require "spec.support.files"
local routers = require "spec.support.routers"

-- Two workflows that share an event type, one of them on version 2 (its
-- new flows' entries name it), with commands of every kind of data.
local alpha = procman.workflow {
  name = "alpha", correlate = "a", starts = { "open", "shared" },
  on = {
    open = function(state, event)
      state.status, state.n = "open", 0
      return { { command_type = "greet", who = event.a, list = { 1, 2.5, "ü", true }, nested = { x = { y = -7 } } } }
    end,
    shared = function(state, event)
      state.n = (state.n or 0) + 1
      return { { command_type = "noted", n = state.n, big = 2 ^ 40, from = event.b } }
    end,
    close = function(state) state.status = "closed" end,
    boom = function(state, event)
      if event.fail then error("boom") end
      state.n = (state.n or 0) + 10
    end,
    later = function() return { procman.after(5, { event_type = "close" }) } end,
    patch = function(state)
      if procman.patched("p1") then state.p = true end
    end,
  },
  done = function(state) return state.status == "closed" end,
}

local beta = procman.workflow {
  name = "beta", version = 2, correlate = "b", starts = { "shared" },
  on = { shared = function(state) state.seen = (state.seen or 0) + 1 end },
}

local by_fn = procman.workflow {
  name = "by_fn", correlate = function(event) return event.f end, starts = { "fn" },
  on = { fn = function(state) state.x = true end },
}

local EVENTS = {
  { event_type = "open", a = "a1", event_id = "e1" },
  { event_type = "shared", a = "a1", b = 7, event_id = "e2" },             -- two targets, one new on v2
  { event_type = "shared", a = "a1", b = 7, event_id = "e2" },             -- a redelivery everywhere
  { event_type = "open", a = 42, event_id = 3 },
  { event_type = "boom", a = "a1", fail = true, event_id = "e4" },         -- parks a1 (Lua path)
  { event_type = "shared", a = 42, b = 7, event_id = "e5" },
  { event_type = "close", a = 42, event_id = "e6" },                        -- completes 42
  { event_type = "shared", a = 42, b = 8, event_id = "e7" },               -- late for 42, new beta 8
  { event_type = "close", a = 42, event_id = "e6" },                        -- a redelivery to a completed flow
  { event_type = "open", a = "t", event_id = "e8" },
  { event_type = "later", a = "t", event_id = "e9" },                       -- a timer (Lua path)
  { event_type = "patch", a = "t", event_id = "e10" },                      -- a patch (Lua path)
  { event_type = "fn", f = "f1" },                                          -- correlate function (Lua path)
  { event_type = "nobody" },
  { event_type = "shared", a = "t", b = 9 },                                -- no event id
  { event_type = "close", a = "t" },
  { event_type = "open", a = -5 },                                          -- ids as tostring writes them
  { event_type = "open", a = math.mininteger },
  { event_type = "open", a = "z\0\255" },                                  -- a zero byte, not UTF-8
}

local function open(path, sync)
  return procman.router { workflows = { alpha, beta, by_fn }, journal = path, sync = sync or "none",
                          on_error = "park", on_late = "dead_letter", clock = function() return 100 end }
end

-- Count what the engine took (a table back) and left (false).
local function counting(r)
  local engine, count = r.engine, { taken = 0, left = 0 }
  r.engine = { step = function(_, event)
    local out, err, journaled = engine:step(event)
    if out then count.taken = count.taken + 1 elseif out == false then count.left = count.left + 1 end
    return out, err, journaled
  end }
  return count
end

describe("procman.engine", function()
  local temp = files.temps_each_test()

  it("writes the journal the Lua path writes, byte for byte, and leaves the same router", function()
    local pe, pl = temp(), temp()
    local re, rl = assert(open(pe)), assert(open(pl))
    local count = counting(re)
    rl.engine = false  -- the Lua path only
    for i, event in ipairs(EVENTS) do
      local a, b = { pcall(re.handle, re, event) }, { pcall(rl.handle, rl, event) }
      assert.same(b, a, "event " .. i)
    end
    local state = routers.snapshot(rl)
    assert.same(state, routers.snapshot(re))
    assert.same({ taken = 12, left = 7 }, count)
    re:close()
    rl:close()
    assert.equal(files.bytes(pl), files.bytes(pe))
    local again = assert(open(pe))  -- and recovery reads it
    assert.same(state, routers.snapshot(again))
  end)

  it("leaves the router as it was when it does not take an event", function()
    local r = assert(open(temp()))
    for i = 1, 2 do r:handle(EVENTS[i]) end
    local before, bytes = routers.snapshot(r), r:stats().journal_bytes
    for _, event in ipairs {
      { event_type = "boom", a = "a1", fail = true },  -- ran, failed: taken back
      { event_type = "later", a = "a1" },              -- ran, a timer: taken back
      { event_type = "patch", a = "a1" },              -- ran, a patch: taken back
      { event_type = "fn", f = "f1" },
      { event_type = "nobody" },
      { event_type = "shared", a = 1.5 },
    } do
      assert.is_false(r.engine:step(event))
      assert.same(before, routers.snapshot(r))
      assert.equal(bytes, r:stats().journal_bytes)
    end
  end)

  it("leaves events to the Lua path while hooks are set", function()
    local r = assert(open(temp()))
    local count = counting(r)
    local started = {}
    r:hook("flow_started", function(name, flow) started[#started + 1] = name .. "/" .. flow end)
    r:handle(EVENTS[1])
    assert.same({ "alpha/a1" }, started)
    r:hook("flow_started", nil)
    r:handle(EVENTS[4])
    assert.same({ taken = 1, left = 1 }, count)
  end)

  it("returns nil and a message when the journal refuses the record, changing nothing", function()
    local r = assert(open(temp(), "always"))  -- "none" would only buffer it: no file operation
    r:handle(EVENTS[1])
    local before, bytes = routers.snapshot(r), r:stats().journal_bytes
    core.journal_faults(1, "ENOSPC")
    local out, err = r.engine:step(EVENTS[2])
    core.journal_faults()
    assert.is_nil(out)
    assert.matches("^procman.router: .*No space left on device", err)
    assert.same(before, routers.snapshot(r))
    assert.equal(bytes, r:stats().journal_bytes)
    assert.equal(1, #assert(r:handle(EVENTS[2])))  -- and takes it once there is room
    assert.equal(1, r:flow("beta", 7):version())
  end)

  it("leaves r:handle's refusals to it: a closed router, an event that is not one", function()
    local r = assert(open(temp()))
    for _, event in ipairs { 7, { a = "a1" }, { event_type = "", a = "a1" }, { event_type = 5, a = "a1" } } do
      assert.is_false(r.engine:step(event))
    end
    assert.matches("event must be a table", select(2, pcall(r.handle, r, 7)))
    assert.matches("event_type must be a non%-empty string", select(2, pcall(r.handle, r, { event_type = "" })))
    r:close()
    assert.is_false(r.engine:step(EVENTS[1]))
    assert.matches("this router is closed", select(2, pcall(r.handle, r, EVENTS[1])))
  end)

  it("completes flows as the Lua path does: status, remembered ids, counts, timers dropped", function()
    local re, rl = assert(open(temp())), assert(open(temp()))
    local count = counting(re)
    rl.engine = false
    for _, event in ipairs {
      { event_type = "open", a = "c1", event_id = "x1" },
      { event_type = "shared", a = "c1", b = 1, event_id = 2 },
      { event_type = "close", a = "c1", event_id = "x3" },         -- completes, with ids
      { event_type = "open", a = "c2" },
      { event_type = "close", a = "c2" },                          -- completes, no ids
      { event_type = "open", a = "c3", event_id = "x4" },
      { event_type = "later", a = "c3", event_id = "x5" },         -- a timer (Lua path)
      { event_type = "close", a = "c3", event_id = "x6" },         -- completes: the timer goes
      { event_type = "close", a = "c1", event_id = "x3" },         -- a redelivery: a no-op
    } do
      assert.same({ rl:handle(event) }, { re:handle(event) })
    end
    assert.same({ taken = 7, left = 2 }, count)
    for _, r in ipairs { re, rl } do
      assert.same({ "x1", 2, "x3" }, fold.completed_ids(r.finished.alpha.c1))  -- kept as bytes
      assert.equal(core.encode { "x1", 2, "x3" }, fold.final_ids(r.finished.alpha.c1))
      assert.equal("closed", fold.final_status(r.finished.alpha.c1))
      assert.is_nil(fold.final_ids(r.finished.alpha.c2))
      assert.same({}, r:timers())
    end
    assert.same(rl.finished, re.finished)
    assert.same(rl.finished_of, re.finished_of)
    assert.same(rl:stats(), re:stats())
    assert.equal(rl:metrics(), re:metrics())
    assert.same(routers.snapshot(rl), routers.snapshot(re))
  end)

  it("journals acks as the Lua path does, byte for byte", function()
    for _, id in ipairs { "alpha/a1/1/1", "z\0\255", string.rep("x", 300), "ü" } do
      assert.equal(core.encode({ id = id }), open(temp()).engine:ack_record(id))
    end
    local pe, pl = temp(), temp()
    local re, rl = assert(open(pe)), assert(open(pl))
    rl.engine = false
    for i = 1, 4 do
      re:handle(EVENTS[i])
      rl:handle(EVENTS[i])
    end
    assert.equal(3, re:dispatch(function() end))
    assert.equal(3, rl:dispatch(function() end))
    re:close()
    rl:close()
    assert.equal(files.bytes(pl), files.bytes(pe))
  end)

  it("r:dispatch journals its own acks as r:ack does, byte for byte", function()
    local pd, pa = temp(), temp()
    local rd, ra = assert(open(pd, "always")), assert(open(pa, "always"))
    for _, r in ipairs { rd, ra } do
      for _, i in ipairs { 1, 2, 3, 4, 17, 18, 19 } do r:handle(EVENTS[i]) end  -- ids not UTF-8 too
    end
    local ids = {}
    for _, e in ipairs(ra:pending()) do ids[#ids + 1] = e.id end
    assert.is_true(#ids >= 5)
    local seen = {}
    assert.equal(#ids, rd:dispatch(function(_, e) seen[#seen + 1] = e.id end))
    assert.same(ids, seen)
    for _, id in ipairs(ids) do assert(ra:ack(id)) end
    rd:close()
    ra:close()
    assert.equal(files.bytes(pa), files.bytes(pd))
    assert.same({}, assert(open(pd)):pending())
  end)

  it("r:dispatch stops at an ack the journal refuses: that command stays pending", function()
    local path = temp()
    local r = assert(open(path, "always"))
    r:handle(EVENTS[1])
    r:handle(EVENTS[19])
    local ids = {}
    for _, e in ipairs(r:pending()) do ids[#ids + 1] = e.id end
    assert.equal(2, #ids)
    local sent = {}
    core.journal_faults(1, "ENOSPC")  -- the first ack's write
    local count, err = r:dispatch(function(_, e) sent[#sent + 1] = e.id end)
    core.journal_faults()
    assert.equal(0, count)
    assert.matches("^procman.router: .*No space left on device", err)
    assert.same({ ids[1] }, sent)
    assert.equal(2, r:stats().pending)
    assert.equal(2, r:dispatch(function(_, e) sent[#sent + 1] = e.id end))  -- sent again: at least once
    assert.same({ ids[1], ids[1], ids[2] }, sent)
    r:close()
    assert.same({}, assert(open(path)):pending())
  end)

  it("r:dispatch acks through the router's hooks when it has some", function()
    local r = assert(open(temp()))
    for i = 1, 4 do r:handle(EVENTS[i]) end
    local acks = 0
    r:hook("journal_append", function(kind) if kind == 2 then acks = acks + 1 end end)
    assert.equal(3, r:dispatch(function() end))
    assert.equal(3, acks)
    assert.equal(0, r:stats().pending)
  end)

  it("writes to the journal compaction puts in place of the one it wrote to before", function()
    local path = temp()
    local r = assert(open(path))
    local count = counting(r)
    for i = 1, 2 do assert(r:handle(EVENTS[i])) end
    local before = r.journal
    assert(r:compact())
    assert.are_not.equal(before, r.journal)
    assert(r:handle(EVENTS[4]))
    assert.same({ taken = 3, left = 0 }, count)
    local state = routers.snapshot(r)
    r:close()
    local again = assert(open(path))
    assert.same(state, routers.snapshot(again))
    assert.equal(3, again:stats().seq)
    again:close()
  end)

  it("routes in memory as with a journal", function()
    local r = procman.router { workflows = { alpha, beta } }
    local count = counting(r)
    for i = 1, 4 do r:handle(EVENTS[i]) end
    assert.same({ taken = 4, left = 0 }, count)
    assert.equal(2, r:flow("alpha", "a1"):version())
    assert.equal(1, r:flow("beta", 7):version())
    assert.same({ "alpha/a1/1/1", "alpha/a1/2/1", "alpha/42/1/1" },
                { r:pending()[1].id, r:pending()[2].id, r:pending()[3].id })
    assert.equal(3, r:stats().seq)
  end)
end)
