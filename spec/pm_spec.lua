-- The procman.pm userdata: the rules of pm:handle in DESIGN.md, for
-- workflows other than the shipped ones.
local procman = require "procman"
local flow = require "spec.support.flow"

-- A counter workflow: small enough to see every rule at work.
local function counter(extra)
  local def = {
    name = "counter",
    init = function(id) return { id = id, n = 0, log = {} } end,
    on = {
      add = function(state, event)
        state.n = state.n + (event.by or 1)
        state.log[#state.log + 1] = event.by or 1
        if event.emit then return { { command_type = "added", n = state.n } } end
      end,
      -- changes the state, then fails: atomicity must undo the change
      half_then_fail = function(state)
        state.n = state.n + 1000
        state.log[#state.log + 1] = "poison"
        error("boom", 0)
      end,
      bad_return = function(state, event)
        state.n = -1
        return event.ret
      end,
      raise_table = function(state)
        state.n = -2
        error({ code = 42 })
      end,
      raise_number = function(state)
        state.n = -3
        error(100)
      end,
      keep_event = function(state, event)
        state.kept = event.payload
      end,
    },
    status = function(state) return state.n >= 10 and "big" or "small" end,
  }
  for k, v in pairs(extra or {}) do def[k] = v end
  return procman.workflow(def)
end

describe("procman.pm", function()
  it("has the metatable name procman.pm", function()
    local pm = counter():new("c1")
    assert.equal("procman.pm", getmetatable(pm).__name)
    assert.equal("c1", pm:id())
    assert.equal(0, pm:version())
    assert.equal("small", pm:status())
    assert.equal("procman.pm: counter/c1 (small, v0)", tostring(pm))
  end)

  it("accepts integer flow ids and refuses others", function()
    assert.equal(7, counter():new(7):id())
    for _, bad in ipairs({ "", 1.5, true, {} }) do
      local ok, err = pcall(counter().new, counter(), bad)
      assert.is_false(ok)
      assert.matches("non%-empty string or integer flow id expected", err)
    end
    assert.has_error(function() counter():new() end)
  end)

  it("applies events and counts versions", function()
    local pm = counter():new("c1")
    assert.same({}, pm:handle { event_type = "add" })
    assert.same({ { command_type = "added", n = 6 } }, pm:handle { event_type = "add", by = 5, emit = true })
    assert.equal(2, pm:version())
    assert.same({ id = "c1", n = 6, log = { 1, 5 } }, pm:state())
  end)

  describe("refuses bad events and changes nothing", function()
    local pm
    before_each(function()
      pm = counter({ correlate = "counter_id" }):new("c1")
      pm:handle { event_type = "add", by = 2 }
    end)

    it("not a table", function()
      flow.refuses(pm, nil, "counter/c1: event must be a table, got nil")
      flow.refuses(pm, "add", "event must be a table, got string")
    end)
    it("without an event_type", function()
      flow.refuses(pm, {}, "event.event_type must be a non-empty string, got nil")
      flow.refuses(pm, { event_type = "" }, "got an empty string")
      flow.refuses(pm, { event_type = 3 }, "got number")
    end)
    it("of a type the workflow does not handle", function()
      flow.refuses(pm, { event_type = "nope" }, "counter/c1: workflow has no handler for event type 'nope'")
    end)
    it("for another flow", function()
      flow.refuses(pm, { event_type = "add", counter_id = "c2" },
                   "event 'add' belongs to flow 'c2' (event.counter_id), not to this one")
    end)
    it("that is not data", function()
      flow.refuses(pm, { event_type = "add", f = print }, "cannot encode a function")
      local cyclic = { event_type = "add" }
      cyclic.self = cyclic
      flow.refuses(pm, cyclic, "cannot encode a cycle")
    end)
    it("with an event_id that is not a string or integer", function()
      flow.refuses(pm, { event_type = "add", event_id = 1.5 }, "event.event_id must be a string or an integer, got a float")
      flow.refuses(pm, { event_type = "add", event_id = {} }, "got table")
    end)
  end)

  it("accepts an event without the correlation field", function()
    local pm = counter({ correlate = "counter_id" }):new("c1")
    pm:handle { event_type = "add" }
    pm:handle { event_type = "add", counter_id = "c1" }
    assert.equal(2, pm:version())
  end)

  it("correlates with a function", function()
    local wf = counter({ correlate = function(e) return e.key and e.key.flow end })
    local pm = wf:new("c1")
    pm:handle { event_type = "add", key = { flow = "c1" } }
    pm:handle { event_type = "add" }
    flow.refuses(pm, { event_type = "add", key = { flow = "zz" } }, "belongs to flow 'zz', not to this one")
  end)

  describe("is atomic", function()
    it("when the handler changes the state and then fails", function()
      local pm = counter():new("c1")
      pm:handle { event_type = "add", by = 3 }
      local err = flow.refuses(pm, { event_type = "half_then_fail" }, "counter/c1: handler for 'half_then_fail' failed: boom")
      assert.equal("counter/c1: handler for 'half_then_fail' failed: boom", err)
      assert.same({ id = "c1", n = 3, log = { 3 } }, pm:state())
      -- and the flow goes on from there
      pm:handle { event_type = "add", by = 4 }
      assert.same({ id = "c1", n = 7, log = { 3, 4 } }, pm:state())
      assert.equal(2, pm:version())
    end)

    it("when the handler returns something that is not commands", function()
      local pm = counter():new("c1")
      pm:handle { event_type = "add" }
      flow.refuses(pm, { event_type = "bad_return", ret = "x" },
                   "handler for 'bad_return' must return an array of commands or nil, got string")
      flow.refuses(pm, { event_type = "bad_return", ret = { {} } },
                   "handler for 'bad_return' returned a bad command at [1]")
      flow.refuses(pm, { event_type = "bad_return", ret = { { command_type = "" } } }, "bad command at [1]")
      flow.refuses(pm, { event_type = "bad_return", ret = { { command_type = "ok" }, 5 } }, "bad command at [2]")
      flow.refuses(pm, { event_type = "bad_return", ret = { { command_type = "ok" }, x = 1 } },
                   "its table has keys other than 1..1")
      flow.refuses(pm, { event_type = "bad_return", ret = { [2] = { command_type = "ok" } } },
                   "its table has keys other than 1..0")
    end)

    it("keeps error objects that are not strings as they are", function()
      local pm = counter():new("c1")
      local before = flow.snapshot(pm)
      local ok, err = pcall(pm.handle, pm, { event_type = "raise_table" })
      assert.is_false(ok)
      assert.same({ code = 42 }, err)
      assert.same(before, flow.snapshot(pm))
    end)

    it("takes a number raised by a handler as a message, like a string", function()
      local pm = counter():new("c1")
      flow.refuses(pm, { event_type = "raise_number" }, "counter/c1: handler for 'raise_number' failed: 100")
    end)

    it("stays dirty when the rebuild fails too, and rebuilds on a later use", function()
      local flaky = false
      local wf = procman.workflow { name = "d", on = {
        add = function(state)
          if flaky then error("flaky", 0) end
          state.n = (state.n or 0) + 1
        end,
        poison = function(state)
          state.n = 99
          error("poison", 0)
        end,
      } }
      local pm = wf:new("x")
      pm:handle { event_type = "add" }
      flaky = true  -- the replay after the poison fails as well
      assert.has_error(function() pm:handle { event_type = "poison" } end, "d/x: handler for 'poison' failed: poison")
      assert.has_error(function() pm:state() end,
        "d/x: cannot rebuild the state: event #1 ('add') failed on replay: flaky")
      assert.equal(1, pm:version())
      flaky = false
      assert.same({ n = 1 }, pm:state())
      assert.same({ { event_type = "add" } }, pm:history())
    end)

    it("does not record the event_id of a failed event", function()
      local pm = counter():new("c1")
      flow.refuses(pm, { event_type = "half_then_fail", event_id = "e1" }, "boom")
      pm:handle { event_type = "add", event_id = "e1" }
      assert.equal(1, pm:version())
    end)
  end)

  describe("deduplicates by event_id", function()
    it("returns {} for a redelivered event and changes nothing", function()
      local pm = counter():new("c1")
      assert.same({ { command_type = "added", n = 1 } }, pm:handle { event_type = "add", event_id = "e1", emit = true })
      local before = flow.snapshot(pm)
      assert.same({}, pm:handle { event_type = "add", event_id = "e1", emit = true })
      assert.same({}, pm:handle { event_type = "add", event_id = "e1", by = 100 })
      assert.same(before, flow.snapshot(pm))
    end)

    it("tells string and integer ids apart", function()
      local pm = counter():new("c1")
      pm:handle { event_type = "add", event_id = 1 }
      pm:handle { event_type = "add", event_id = "1" }
      pm:handle { event_type = "add", event_id = 1 }
      assert.equal(2, pm:version())
    end)

    -- A short history is the set of ids (pm.c searches its bytes); a longer
    -- one, or a snapshot, moves them to a table. Every way through must
    -- give the same answers.
    it("remembers every id, from a short history, a long one and a snapshot", function()
      local core = require "procman.core"
      local ids = { 1, "a", 300, "b", -7, 70000, "a long id " .. string.rep("x", 50), 1 << 40, "c", 5 }
      for _, undo_at in ipairs { 0, 1, 2, 3, 4, 5, 8 } do
        local pm = counter():new("c1")
        for i, id in ipairs(ids) do
          pm:handle { event_type = "add", event_id = id, pad = string.rep("p", i * 10) }
          if i == undo_at then
            core.undo(pm)  -- forgets this id, whichever way ids are kept now
            assert.equal(i - 1, pm:version())
            assert.equal(1, #pm:handle { event_type = "add", event_id = id, emit = true }, "undo at " .. i)
          end
          for j = 1, i do  -- every id so far is a redelivery, in either form
            assert.same({}, pm:handle { event_type = "add", event_id = ids[j], emit = true })
          end
          assert.same({}, pm:handle { event_type = "add", event_id = id, emit = true })
          assert.equal(i, pm:version())
          local remembered = core.event_ids(pm)
          assert.equal(i, #remembered)
        end
        -- ids that were never handled are new: "1" is not 1
        assert.equal(1, #pm:handle { event_type = "add", event_id = "1", emit = true })
        assert.equal(11, pm:version())
      end
    end)

    it("remembers an id that sits too far into its event to be noted (a table takes it)", function()
      local core = require "procman.core"
      local pm = counter():new("c1")
      -- "a" sorts before "event_id": the id is 70,000 bytes into the event
      pm:handle { event_type = "add", event_id = "far", a = string.rep("x", 70000) }
      pm:handle { event_type = "add", event_id = 2 }
      assert.same({}, pm:handle { event_type = "add", event_id = "far", emit = true })
      assert.same({}, pm:handle { event_type = "add", event_id = 2, emit = true })
      assert.equal(2, pm:version())
      core.undo(pm)
      assert.equal(1, #pm:handle { event_type = "add", event_id = 2, emit = true })
      assert.equal(2, #core.event_ids(pm))
    end)

    it("keeps remembering ids across a snapshot that drops the history", function()
      local core = require "procman.core"
      local pm = counter():new("c1")
      pm:handle { event_type = "add", event_id = "first" }
      pm:handle { event_type = "add", event_id = 2 }
      assert.is_true(core.trim(pm))
      assert.same({}, pm:history())
      assert.same({}, pm:handle { event_type = "add", event_id = "first", emit = true })
      assert.same({}, pm:handle { event_type = "add", event_id = 2, emit = true })
      local ids = core.event_ids(pm)
      table.sort(ids, function(a, b) return tostring(a) < tostring(b) end)
      assert.same({ 2, "first" }, ids)
      -- and a restored flow without ids searches its (new) history
      local spec = require("procman.workflow").spec(counter())
      local copy = core.restore(spec, "c2", { id = "c2", n = 0, log = {} }, 0, {})
      copy:handle { event_type = "add", event_id = "x" }
      assert.same({}, copy:handle { event_type = "add", event_id = "x", emit = true })
      assert.same({ "x" }, core.event_ids(copy))
    end)

    it("still refuses a redelivery meant for another flow", function()
      local pm = counter({ correlate = "counter_id" }):new("c1")
      pm:handle { event_type = "add", event_id = "e1" }
      flow.refuses(pm, { event_type = "add", event_id = "e1", counter_id = "c2" }, "belongs to flow 'c2'")
    end)
  end)

  -- pm:handle of 'count' events with a large pad (event_id i), each after
  -- 200 objects whose finalizers call on_gc(n) (n: finalizers run so far),
  -- with the generational collector. Returns the pad and n.
  local function handle_among_finalizers(pm, count, on_gc)
    local ran, pad = 0, {}
    for i = 1, 300 do pad["k" .. i] = { i, tostring(i) } end
    collectgarbage()
    collectgarbage("generational")
    for i = 1, count do
      for _ = 1, 200 do
        setmetatable({}, { __gc = function() ran = ran + 1; on_gc(ran) end })
      end
      pm:handle { event_type = "add", event_id = i, pad = pad }
    end
    collectgarbage("incremental")
    collectgarbage()
    return pad, ran
  end

  it("stages events right when a finalizer handles one meanwhile (handle's scratch is not shared)", function()
    local other, pm = counter():new("o"), counter():new("c1")
    local pad, ran = handle_among_finalizers(pm, 20, function(n)
      other:handle { event_type = "add", event_id = "g" .. n, pad = { "from a finalizer", n } }
    end)
    assert.is_true(ran > 0)
    assert.equal(20, pm:version())
    local first = pm:version() - #pm:history()  -- the history since the last snapshot
    assert.is_true(#pm:history() > 0)
    for i, event in ipairs(pm:history()) do
      assert.equal(first + i, event.event_id)
      assert.equal(procman.encode(pad), procman.encode(event.pad))
    end
    first = other:version() - #other:history()
    for i, event in ipairs(other:history()) do assert.same({ "from a finalizer", first + i }, event.pad) end
    for i = 1, 20 do assert.same({}, pm:handle { event_type = "add", event_id = i }) end
  end)

  it("stages events right when a finalizer handles one of the same flow meanwhile (events are encoded "
     .. "straight into the log)", function()
    local pm = counter():new("c1")
    local nested = 0
    local pad, ran = handle_among_finalizers(pm, 60, function(n)
      -- refused while the handler runs (busy); taken while the event is staged
      if pcall(pm.handle, pm, { event_type = "add", event_id = "g" .. n, pad = { "nested", n } }) then
        nested = nested + 1
      end
    end)
    assert.is_true(ran > 0)
    assert.is_true(nested > 0)
    assert.equal(60 + nested, pm:version())
    for _, event in ipairs(pm:history()) do  -- every event whole: none written over another
      if type(event.event_id) == "number" then
        assert.equal(procman.encode(pad), procman.encode(event.pad))
      else
        assert.equal("nested", event.pad[1])
      end
    end
    flow.refuses(pm, { event_type = "half_then_fail" }, "boom")  -- rebuilt from the log
    assert.equal(pm:version(), pm:state().n)
    for i = 1, 20 do assert.same({}, pm:handle { event_type = "add", event_id = i }) end
  end)

  it("keeps its id beside the seen table it makes past a few events (one user value for both)", function()
    local core = require "procman.core"
    local pm = counter({ correlate = "counter_id" }):new("c1")
    for i = 1, 10 do pm:handle { event_type = "add", event_id = i } end  -- past SCAN_MAX: a seen table
    assert.equal("c1", pm:id())
    assert.matches("counter/c1", tostring(pm), 1, true)
    flow.refuses(pm, { event_type = "add", event_id = 11, counter_id = "c2" }, "belongs to flow 'c2'")
    for i = 1, 10 do assert.same({}, pm:handle { event_type = "add", event_id = i }) end
    assert.equal(10, pm:version())
    core.undo(pm)  -- forgets event 10, in the seen table
    assert.equal(9, pm:version())
    pm:handle { event_type = "add", event_id = 10 }
    assert.equal(10, pm:version())
    assert.equal(10, #core.event_ids(pm))
    pm:close()
    assert.equal("c1", pm:id())
    assert.matches("counter/c1 (closed)", tostring(pm), 1, true)
  end)

  it("keeps a short log at its exact size, and its events whole as it grows past that", function()
    local core = require "procman.core"
    local pm = counter():new("c1")
    local handled = {}
    for i = 1, 12 do  -- about 40 bytes each: the log outgrows a short one on the way
      local event = { event_type = "add", event_id = i, pad = string.rep("x", 20) }
      pm:handle(event)
      handled[#handled + 1] = event
      assert.same(handled, pm:history())
      if i % 3 == 0 then
        core.undo(pm)
        table.remove(handled)
        flow.refuses(pm, { event_type = "half_then_fail" }, "boom")  -- rebuilt from the log
        pm:handle(event)
        handled[#handled + 1] = event
      end
      assert.same({}, pm:handle(event))  -- a redelivery, found in the log or the seen table
    end
    assert.equal(12, pm:version())
    assert.equal(12, pm:state().n)
  end)

  describe("state()", function()
    it("returns a deep copy", function()
      local pm = counter():new("c1")
      pm:handle { event_type = "add", by = 2 }
      local s = pm:state()
      s.n = 99
      s.log[1] = "changed"
      s.log[2] = "added"
      assert.same({ id = "c1", n = 2, log = { 2 } }, pm:state())
    end)

    it("shows what view returns", function()
      local wf = counter({ view = function(state) return { total = state.n } end })
      local pm = wf:new("c1")
      pm:handle { event_type = "add", by = 4 }
      assert.same({ total = 4 }, pm:state())
    end)

    it("gives the handler a copy of the event, not the caller's table", function()
      local pm = counter():new("c1")
      local payload = { a = 1 }
      pm:handle { event_type = "keep_event", payload = payload }
      payload.a = 2
      assert.same({ a = 1 }, pm:state().kept)
    end)

    it("raises when the view is not data", function()
      local pm = counter({ view = function() return { f = print } end }):new("c1")
      assert.has_error(function() pm:state() end,
        "counter/c1: state is not data: cannot encode a function (only nil, booleans, numbers, "
        .. "strings and tables are data) at state.f")
    end)
  end)

  describe("status()", function()
    it("defaults to state.status, and 'none' when there is none", function()
      local wf = procman.workflow { name = "s", on = { set = function(state, e) state.status = e.to end } }
      local pm = wf:new("x")
      assert.equal("none", pm:status())
      pm:handle { event_type = "set", to = "running" }
      assert.equal("running", pm:status())
      assert.equal("procman.pm: s/x (running, v1)", tostring(pm))
    end)

    it("refuses a status that is not a string", function()
      local wf = procman.workflow { name = "s", on = { x = function() end }, status = function() return 5 end }
      local pm = wf:new("x")
      assert.has_error(function() pm:status() end, "s/x: status must be a string or nil, got number")
      assert.equal("procman.pm: s/x (status unknown, v0)", tostring(pm))
    end)
  end)

  it("history() lists committed events only", function()
    local pm = counter():new("c1")
    assert.same({}, pm:history())
    pm:handle { event_type = "add", by = 1 }
    pcall(pm.handle, pm, { event_type = "half_then_fail" })
    pm:handle { event_type = "add", by = 2, event_id = "x" }
    pm:handle { event_type = "add", by = 2, event_id = "x" }
    assert.same({ { event_type = "add", by = 1 }, { event_type = "add", by = 2, event_id = "x" } }, pm:history())
  end)

  describe("memory bounded by the state", function()
    local core = require "procman.core"
    -- a flow whose state keeps a constant size, whatever it handles
    local ring = procman.workflow {
      name = "ring", init = function() return { n = 0, last = {} } end,
      on = {
        add = function(state, event)
          state.n = state.n + 1
          state.last[state.n % 4 + 1] = event.pad
        end,
        fail = function(state)
          state.n = -1
          state.last = nil
          error("refused", 0)
        end,
      },
    }
    local function history_bytes(pm)
      local n = 0
      for _, e in ipairs(pm:history()) do n = n + #procman.encode(e) end
      return n
    end
    -- what the fold of init and every event handled gives
    local function expected(count, pad_of)
      local state = { n = 0, last = {} }
      for i = 1, count do ring.on.add(state, { pad = pad_of(i) }) end
      return state
    end
    local function pad_of(i) return string.rep(string.char(97 + i % 26), 50) end
    -- a flow whose history reached the snapshot threshold, and how many events it took
    local function at_threshold()
      local pm, i = ring:new("r"), 0
      while history_bytes(pm) < 4096 do
        i = i + 1
        pm:handle { event_type = "add", pad = pad_of(i) }
      end
      return pm, i
    end

    it("keeps only the events since its last snapshot", function()
      local pm = ring:new("r")
      local most = 0
      for i = 1, 3000 do
        pm:handle { event_type = "add", pad = pad_of(i) }
        most = math.max(most, history_bytes(pm))
      end
      assert.equal(3000, pm:version())
      assert.same(expected(3000, pad_of), pm:state())
      assert.is_true(#pm:history() < 3000 // 2)  -- history was cut, more than once
      assert.is_true(most < 4096 + 200)          -- never much more than the first threshold
      -- the history continues the snapshot: origin state + history = state
      local spec, base = core.origin(pm)
      local replica = core.restore(spec, "r", base, pm:version() - #pm:history(), {})
      for _, e in ipairs(pm:history()) do replica:handle(e) end
      assert.same(pm:state(), replica:state())
    end)

    it("puts the next snapshot off until the history holds four times a large event", function()
      local pm = ring:new("r")
      pm:handle { event_type = "add", pad = string.rep("x", 20000) }  -- alone past 4096
      local i, most = 1, 0
      repeat
        i = i + 1
        pm:handle { event_type = "add", pad = pad_of(i) }
        most = math.max(most, history_bytes(pm))
      until #pm:history() < i
      assert.is_true(most >= 4 * 20000)              -- not taken at 4096: the event holds more
      assert.is_true(most < 4 * 20000 * 2 + 200)     -- taken once the history was 4 times it
      assert.same(expected(i, function(j) return j == 1 and string.rep("x", 20000) or pad_of(j) end),
                  pm:state())
      for j = i + 1, i + 1000 do                      -- then the usual period again
        pm:handle { event_type = "add", pad = pad_of(j) }
      end
      assert.is_true(history_bytes(pm) < 4096 + 200)
    end)

    it("keeps a large first event as it was encoded: history, undo, replay", function()
      local pm, first = ring:new("r"), string.rep("x", 100000)  -- past 64 KB
      pm:handle { event_type = "add", event_id = 1, pad = first }
      assert.same({ { event_type = "add", event_id = 1, pad = first } }, pm:history())
      core.undo(pm)
      assert.same({}, pm:history())
      assert.same({ n = 0, last = {} }, pm:state())
      pm:handle { event_type = "add", event_id = 1, pad = first }  -- forgotten: applies
      assert.same({}, pm:handle { event_type = "add", event_id = 1, pad = first })
      pm:handle { event_type = "add", event_id = 2, pad = "y" }
      assert.same({ { event_type = "add", event_id = 1, pad = first },
                    { event_type = "add", event_id = 2, pad = "y" } }, pm:history())
      flow.refuses(pm, { event_type = "fail" }, "refused")  -- replayed from both
      assert.same(expected(2, function(j) return j == 1 and first or "y" end), pm:state())
    end)

    it("waits sixteen times a state or event of a megabyte or more", function()
      -- encoding a large state costs a cache miss a key: its snapshots are
      -- rarer (factor 16, not 4); the log grows ahead to that size at once
      local big, pad = 1200 * 1000, string.rep("y", 300 * 1000)
      local pm = ring:new("r")
      pm:handle { event_type = "add", pad = string.rep("x", big) }
      -- the version of the flow's snapshot (nil while it has none): decodes
      -- only the snapshot, not the history
      local function snapshot_version()
        local _, base = core.origin(pm)
        return base and base.n
      end
      local i, bytes = 1, big
      repeat
        i = i + 1
        pm:handle { event_type = "add", pad = pad .. i }
        bytes = bytes + #pad
      until snapshot_version()
      assert.equal(i - 1, snapshot_version())  -- taken before the event that crossed
      assert.is_true(bytes >= 16 * big)                -- not at 4 times the large event
      assert.is_true(bytes < 2 * 16 * big + 2 * #pad)  -- nor much after 16 times it
      -- the state (four pads: over a megabyte) is large too: 16 times it again
      local first, since = snapshot_version(), #pad
      repeat
        i = i + 1
        pm:handle { event_type = "add", pad = pad .. i }
        since = since + #pad
      until snapshot_version() ~= first
      assert.is_true(since >= 16 * 4 * #pad)
      assert.is_true(since < 2 * 16 * 4 * #pad)
      assert.same(expected(i, function(j)
        return j == 1 and string.rep("x", big) or pad .. j
      end), pm:state())
      flow.refuses(pm, { event_type = "fail" }, "refused")  -- rebuilt from the snapshot and history
      assert.equal(i, pm:state().n)
    end)

    it("rebuilds a failed handle from the snapshot and the history since", function()
      local pm = ring:new("r")
      for i = 1, 500 do
        pm:handle { event_type = "add", pad = pad_of(i) }
        if i % 97 == 0 then flow.refuses(pm, { event_type = "fail" }, "refused") end
      end
      assert.same(expected(500, pad_of), pm:state())
      assert.equal(500, pm:version())
    end)

    it("takes the snapshot with the commit: a failed handle at the threshold changes nothing", function()
      local pm, i = at_threshold()
      local before = flow.snapshot(pm)
      flow.refuses(pm, { event_type = "fail" }, "refused")
      assert.same(before, flow.snapshot(pm))
      pm:handle { event_type = "add", pad = pad_of(i + 1) }
      assert.equal(1, #pm:history())
      assert.same(expected(i + 1, pad_of), pm:state())
    end)

    it("core.undo after a snapshot goes back to the state before the event", function()
      local pm, i = at_threshold()
      pm:handle { event_type = "add", event_id = "last", pad = pad_of(i + 1) }
      assert.equal(1, #pm:history())
      core.undo(pm)
      assert.equal(i, pm:version())
      assert.same(expected(i, pad_of), pm:state())
      assert.same({}, pm:history())
      pm:handle { event_type = "add", event_id = "last", pad = pad_of(i + 1) }  -- forgotten: applies
      assert.same(expected(i + 1, pad_of), pm:state())
    end)

    it("keeps the whole history when the state is not data", function()
      local odd = procman.workflow {
        name = "odd", init = function() return { n = 0 } end, view = function(state) return state.n end,
        on = { add = function(state, event) state.n = state.n + 1; state.f = print; state.pad = event.pad end },
      }
      local pm = odd:new("o")
      for i = 1, 200 do pm:handle { event_type = "add", pad = pad_of(i) } end
      assert.equal(200, #pm:history())
      assert.equal(200, pm:state())
    end)

    it("takes snapshots again once the state is data again, later each time it was not", function()
      local odd = procman.workflow {
        name = "odd", init = function() return { n = 0 } end, view = function(state) return state.n end,
        on = { add = function(state, event)
          state.n = state.n + 1
          state.f = event.bad and print or nil
          state.pad = event.pad
        end },
      }
      local pm = odd:new("o")
      for i = 1, 300 do pm:handle { event_type = "add", bad = true, pad = pad_of(i) } end
      assert.equal(300, #pm:history())  -- every try failed: the history stays whole
      local most = 0
      for i = 301, 2000 do
        pm:handle { event_type = "add", pad = pad_of(i) }
        most = math.max(most, history_bytes(pm))
      end
      assert.is_true(#pm:history() < 2000 // 2)  -- cut again
      assert.is_true(most < 4 * 4096 * 4)        -- the wait grew with the history, no more
      assert.equal(2000, pm:state())
    end)

    it("rebuilds a large state of every kind of key from its snapshot", function()
      local wide = procman.workflow {
        name = "wide", init = function() return { map = {}, list = {} } end,
        on = {
          fill = function(state, event)
            for i = 1, event.n do
              state.map["k" .. i] = { i, i + 0.5 }
              state.map[i * 3] = "int"
              state.map[i + 0.25] = i % 2 == 0
              state.list[#state.list + 1] = "x" .. i
            end
            state.map[true], state.map[false] = "yes", "no"
          end,
          fail = function(state) state.map = nil; error("refused", 0) end,
        },
      }
      local pm = wide:new("w")
      pm:handle { event_type = "fill", n = 300 }
      local before = pm:state()
      assert.is_true(core.trim(pm))
      flow.refuses(pm, { event_type = "fail" }, "refused")  -- rebuilt: snapshot decoded, nothing since
      assert.same(before, pm:state())
      local _, base = core.origin(pm)
      assert.same(before, base)
    end)

    it("core.trim empties the history (for compaction)", function()
      local pm = ring:new("r")
      for i = 1, 10 do pm:handle { event_type = "add", event_id = i, pad = pad_of(i) } end
      assert.is_true(core.trim(pm))
      assert.same({}, pm:history())
      assert.equal(10, pm:version())
      assert.same(expected(10, pad_of), pm:state())
      assert.same({}, pm:handle { event_type = "add", event_id = 3 })  -- ids are still remembered
      flow.refuses(pm, { event_type = "fail" }, "refused")
      assert.same(expected(10, pad_of), pm:state())
      assert.has_error(function() core.undo(pm) end, "ring/r: no committed event to take back")
    end)
  end)

  describe("init", function()
    it("is called with the flow id", function()
      local wf = procman.workflow { name = "i", on = { x = function() end },
                                    init = function(id) return { me = id } end }
      assert.same({ me = "a" }, wf:new("a"):state())
    end)

    it("must return a table", function()
      local wf = procman.workflow { name = "i", on = { x = function() end }, init = function() return 1 end }
      assert.has_error(function() wf:new("a") end, "i/a: init must return a table, got number")
    end)

    it("may raise, and then no flow is made", function()
      local wf = procman.workflow { name = "i", on = { x = function() end },
                                    init = function() error("no init", 0) end }
      assert.has_error(function() wf:new("a") end, "no init")
    end)
  end)

  it("refuses to be used from inside its own handler", function()
    local pm
    local wf = procman.workflow { name = "r", on = {
      again = function() pm:handle { event_type = "again" } end,
      peek = function() pm:state() end,
    } }
    pm = wf:new("a")
    flow.refuses(pm, { event_type = "again" }, "a handler may not use its own flow")
    flow.refuses(pm, { event_type = "peek" }, "a handler may not use its own flow")
    local closer = procman.workflow { name = "c", on = {
      close = function() pm:close() end,
      scoped = function() local _ <close> = pm end,
    } }
    pm = closer:new("a")
    flow.refuses(pm, { event_type = "close" }, "c/a: handler for 'close' failed: c/a: a handler may not close its own flow")
    flow.refuses(pm, { event_type = "scoped" }, "a handler may not close its own flow")
    assert.equal(0, pm:version())
    assert.matches("%(running%)", (function()
      local seen
      local w2 = procman.workflow { name = "t", on = { look = function() seen = tostring(pm) end } }
      pm = w2:new("b")
      pm:handle { event_type = "look" }
      return seen
    end)())
  end)

  it("done() asks the workflow's done(state), false without one", function()
    local batch = require "procman.workflows.batch"
    local b = batch:new("b1")
    assert.is_false(b:done())
    b:handle { event_type = "batch_created", files = { "a" } }
    assert.is_false(b:done())
    b:handle { event_type = "file_processed", file = { id = "a", status = "error" } }
    assert.is_true(b:done())
    assert.is_false(counter():new("c1"):done())
  end)

  describe("core.undo (for the router)", function()
    local core = require "procman.core"

    it("takes back the last committed event and forgets its id", function()
      local pm = counter():new("c1")
      pm:handle { event_type = "add", by = 2, event_id = "e1" }
      local before = flow.snapshot(pm)
      pm:handle { event_type = "add", by = 5, event_id = "e2" }
      core.undo(pm)
      assert.same(before, flow.snapshot(pm))
      assert.same({ { command_type = "added", n = 7 } }, pm:handle { event_type = "add", by = 5, event_id = "e2", emit = true })
      assert.equal(2, pm:version())
    end)

    it("takes back one event only, and nothing before a commit", function()
      local pm = counter():new("c1")
      assert.has_error(function() core.undo(pm) end, "counter/c1: no committed event to take back")
      pm:handle { event_type = "add" }
      pcall(pm.handle, pm, { event_type = "half_then_fail" })
      core.undo(pm)  -- the failed call committed nothing: this takes back "add"
      assert.equal(0, pm:version())
      assert.has_error(function() core.undo(pm) end, "counter/c1: no committed event to take back")
      assert.has_error(function() core.undo({}) end)
    end)
  end)

  it("core.handle_fresh gives the handler the event itself (for recovery), pm:handle a copy", function()
    local core = require "procman.core"
    local got
    local wf = procman.workflow { name = "f", on = { x = function(state, event)
      got = event
      state.n = (state.n or 0) + 1
    end } }
    local pm = wf:new("f1")
    local event = { event_type = "x", n = 1 }
    pm:handle(event)
    assert.are_not.equal(event, got)
    core.handle_fresh(pm, event)
    assert.equal(event, got)
    assert.same({ event, event }, pm:history())
    assert.equal(2, pm:version())
    assert.has_error(function() core.handle_fresh(pm, { event_type = "x", f = print }) end)
    assert.equal(2, pm:version())
  end)

  describe("core.snapshot and core.restore (for compaction)", function()
    local core = require "procman.core"
    local workflow = require "procman.workflow"

    it("restore a flow that goes on exactly as the original", function()
      local wf = counter()
      local pm = wf:new("c1")
      pm:handle { event_type = "add", by = 2, event_id = "e1" }
      pm:handle { event_type = "add", by = 3 }
      pcall(pm.handle, pm, { event_type = "half_then_fail", event_id = "e9" })
      local state, version, seen = core.snapshot(pm)
      assert.same({ id = "c1", n = 5, log = { 2, 3 } }, state)
      assert.equal(2, version)
      assert.same({ "e1" }, seen)  -- e9 failed: not remembered
      assert.same({ "e1" }, core.event_ids(pm))
      local copy = core.restore(workflow.spec(wf), "c1", state, version, seen)
      assert.equal(2, copy:version())
      assert.same({}, copy:history())  -- the history starts at the snapshot
      assert.same(pm:state(), copy:state())
      assert.same({}, copy:handle { event_type = "add", event_id = "e1", by = 100 })
      flow.refuses(copy, { event_type = "half_then_fail" }, "boom")  -- replays from the snapshot
      for _, p in ipairs({ pm, copy }) do p:handle { event_type = "add", by = 1, emit = true } end
      assert.same(pm:state(), copy:state())
      assert.equal(pm:version(), copy:version())
    end)

    it("restore checks its arguments", function()
      local spec = workflow.spec(counter())
      assert.has_error(function() core.restore(spec, "c1", { f = print }, 1, {}) end,
                       "core.restore: cannot encode a function (only nil, booleans, numbers, strings and tables are data) at state.f")
      assert.has_error(function() core.restore(spec, "c1", {}, -1, {}) end)
      assert.has_error(function() core.restore(spec, "c1", {}, 1, { {} }) end,
                       "core.restore: seen_ids[1] must be a string or an integer")
    end)
  end)

  describe("close", function()
    it("is __close and __gc, safe twice, and makes the flow unusable", function()
      local mt = getmetatable(counter():new("c"))
      assert.equal(mt.__gc, mt.__close)
      local pm
      do
        local scoped <close> = counter():new("c1")
        scoped:handle { event_type = "add" }
        pm = scoped
      end
      assert.equal("procman.pm: counter/c1 (closed)", tostring(pm))
      assert.has_error(function() pm:handle { event_type = "add" } end, "counter/c1: this procman.pm is closed")
      assert.has_error(function() pm:state() end, "counter/c1: this procman.pm is closed")
      assert.equal(1, pm:version())
      assert.equal("c1", pm:id())
      pm:close()
      mt.__gc(pm)
    end)

    it("lets the garbage collector take flows", function()
      local weak = setmetatable({}, { __mode = "v" })
      weak[1] = counter():new("c1")
      weak[1]:handle { event_type = "add" }
      collectgarbage()
      collectgarbage()
      assert.is_nil(weak[1])
    end)
  end)

  describe("what a flow keeps", function()
    local batch = require "procman.workflows.batch"
    local FILES = { "a", "b", "c" }

    local weigh = require "weigh"  -- bench/weigh.lua: as bench/router_case.lua live weighs

    it("shares its workflow's metatable: no user value holds the workflow", function()
      local a, b = counter(), counter()
      local p1, p2, q = a:new("x"), a:new("y"), b:new("x")
      assert.equal(getmetatable(p1), getmetatable(p2))
      assert.are_not.equal(getmetatable(p1), getmetatable(q))
      for _, k in ipairs { "__name", "__index", "__gc", "__close", "__tostring" } do
        assert.equal(getmetatable(p1)[k], getmetatable(q)[k])
      end
      -- three user values: the id, the state, the log
      assert.equal(2, select("#", debug.getuservalue(p1, 3)))
      assert.equal(1, select("#", debug.getuservalue(p1, 4)))  -- nil alone: no such value
      assert.equal("procman.pm: counter/x (small, v0)", tostring(p1))
      -- the workflow's metatable goes with the workflow
      local weak = setmetatable({}, { __mode = "v" })
      do
        local wf = counter()
        weak[1], weak[2] = require("procman.workflow").spec(wf), getmetatable(wf:new("z"))
      end
      collectgarbage()
      collectgarbage()
      assert.is_nil(weak[1])
      assert.is_nil(weak[2])
    end)

    -- A short log writes the workflow's words (event_type, event_id, the
    -- correlate field, its event types) in two bytes where they are keys or
    -- string values of an event; everything reads the events back whole.
    it("keeps a short log in shorthand, and gives every event back whole", function()
      local core = require "procman.core"
      local wf = counter({ correlate = "counter_id", starts = { "add" } })
      local pm = wf:new("add")  -- a flow id that is a word too
      local events = {
        { event_type = "add", counter_id = "add", event_id = "add", by = 2 },  -- an id that is a word
        { event_type = "add", counter_id = "add", event_id = 7, note = "event_type", keep_event = "bad_return" },
        { event_type = "add", counter_id = "add", nested = { event_type = "add", event_id = "add", counter_id = { "add" } } },
        { event_type = "add", counter_id = "add", [1] = "add", [2.5] = "event_id", event_id = "counter_id" },
      }
      for _, e in ipairs(events) do pm:handle(e) end
      assert.same(events, pm:history())
      for _, e in ipairs(events) do  -- each id is a redelivery, the word ones too
        if e.event_id then assert.same({}, pm:handle(e)) end
      end
      assert.equal(1, #pm:handle { event_type = "add", event_id = "event_id", emit = true })  -- new
      assert.equal(5, pm:version())
      core.undo(pm)
      assert.equal(1, #pm:handle { event_type = "add", event_id = "event_id", emit = true })
      flow.refuses(pm, { event_type = "half_then_fail" }, "boom")  -- rebuilt from the shorthand
      assert.equal(2 + 1 + 1 + 1 + 1, pm:state().n)
      local ids = {}
      for _, id in ipairs(core.event_ids(pm)) do ids[id] = true end
      assert.same({ add = true, [7] = true, counter_id = true, event_id = true }, ids)
      -- and through a router, whose journal holds the codec's bytes of each event
      local r = procman.router { workflows = { wf } }
      for _, e in ipairs(events) do r:handle(e) end
      assert.same(events, r:flow("counter", "add"):history())
    end)

    it("finds the ids of a short log's events after it becomes a Buffer of the codec's bytes", function()
      local core = require "procman.core"
      local pm = counter({ correlate = "counter_id" }):new("c")
      local pad = string.rep("p", 150)  -- the third event finds 2 events, over 256 bytes, to expand
      local ids = { "add", 2, "event_type" }
      for _, id in ipairs(ids) do pm:handle { event_type = "add", counter_id = "c", event_id = id, pad = pad } end
      for _, id in ipairs(ids) do  -- redeliveries, found where the move noted them
        assert.same({}, pm:handle { event_type = "add", counter_id = "c", event_id = id, emit = true })
      end
      core.undo(pm)
      assert.equal(1, #pm:handle { event_type = "add", event_id = "event_type", emit = true })
      assert.same({}, pm:handle { event_type = "add", event_id = "add", emit = true })
      assert.equal(3, pm:version())
      assert.equal(3, #pm:history())
      assert.equal(pad, pm:history()[1].pad)
    end)

    it("weighs little more than its state after batch_created", function()
      local n = 2000
      local plain = weigh(n, function()
        local states = {}
        for i = 1, n do
          local state = { id = i, files = {}, status = "idle", pending = 0, failed = 0 }
          for _, f in ipairs(FILES) do state.files[f] = "pending" end
          state.pending, state.status = #FILES, "created"
          states[i] = state
        end
        return states
      end)
      local flows = weigh(n, function()
        local pms = {}
        for i = 1, n do
          pms[i] = batch:new(i)
          pms[i]:handle { event_type = "batch_created", batch_id = i, event_id = 4 * i, files = FILES }
        end
        return pms
      end)
      -- the userdata (a 40-byte header, 3 user values, 48 bytes: 136) and its
      -- log (a 32-byte header, the event in shorthand: 28 bytes, not 63)
      assert.is_true(flows - plain <= 200, string.format("%.0f bytes a flow over its state", flows - plain))
    end)
  end)

  it("checks its self argument", function()
    local pm = counter():new("c1")
    assert.has_error(function() pm.handle({}, { event_type = "add" }) end)
    assert.matches("procman.pm expected", select(2, pcall(pm.version, "x")))
  end)
end)
