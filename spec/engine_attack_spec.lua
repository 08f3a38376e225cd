-- procman.engine (csrc/engine.c) under attack: odd events, odd ids,
-- hostile handlers, re-entry. For each, a router on the engine, one on the
-- Lua path only (engine = false) and one with metrics (hooks: the Lua
-- path) give the same results, the same state and the same journal bytes;
-- what is refused changes nothing.
local procman = require "procman"

local files = require "spec.support.files"
local routers = require "spec.support.routers"

local current  -- the router whose handler runs (re-entry)

local function reenter(event)
  return current:handle(event)
end

-- A table nested d deep.
local function nest(d)
  local t = {}
  for _ = 2, d do t = { t } end
  return t
end

local one = procman.workflow {
  name = "one", correlate = "id", starts = { "go", "shared", "reenter", "reenter_timer" }, budget = 200000,
  on = {
    go = function(state, event)
      state.n = (state.n or 0) + 1
      return { { command_type = "went", n = state.n, tag = event.tag } }
    end,
    shared = function(state, event)
      state.shared = (state.shared or 0) + 1
      local out = { { command_type = "one_shared" } }
      for i = 2, event.n or 1 do out[i] = { command_type = "one_shared", i = i, pad = ("p"):rep(event.pad or 0) } end
      return out
    end,
    err_obj = function() error({ code = 7 }) end,
    err_tostring = function() error(setmetatable({}, { __tostring = function() return "custom" end })) end,
    yield = function() coroutine.yield(1) end,
    loop = function() while true do end end,
    cycle = function()
      local c = { command_type = "c" }
      c.self = c
      return { c }
    end,
    fn = function() return { { command_type = "f", f = print } } end,
    meta = function()
      return { setmetatable({ command_type = "m" }, { __index = function() return 1 end }) }
    end,
    meta_list = function() return setmetatable({}, { __len = function() return 1 end,
                                                    __index = function() return { command_type = "x" } end }) end,
    len_only = function() return setmetatable({}, { __len = function() return 1 end }) end,
    mutate = function(state, event)
      event.extra = "added"
      state.kept = event
      return { { command_type = "kept", event = event } }
    end,
    reenter = function(state, event)
      state.r = (state.r or 0) + 1
      reenter { event_type = "go", id = event.inner }
    end,
    reenter_timer = function(state, event)
      state.r = (state.r or 0) + 1
      reenter { event_type = "go", id = event.inner }
      return { procman.after(5, { event_type = "go" }) }
    end,
    finish = function(state) state.done = true end,
    many = function(_, event)
      local out = {}
      for i = 1, event.n do out[i] = { command_type = "m", i = i, deep = event.deep and nest(event.deep) } end
      return out
    end,
  },
  done = function(state) return state.done == true end,
}

local two = procman.workflow {
  name = "two", correlate = "id", starts = { "shared" },
  on = {
    shared = function(state, event)
      if event.fail2 then error("two refuses") end
      state.shared = (state.shared or 0) + 1
      return { { command_type = "two_shared" } }
    end,
  },
}

-- A workflow whose init refuses some ids: it raises, loops past its
-- budget, returns no table (the engine makes new flows in its own step).
local three = procman.workflow {
  name = "three", correlate = "id", starts = { "begin" }, budget = 200000,
  init = function(id)
    if id == "raises" then error("init refuses " .. id) end
    if id == "loops" then while true do end end
    if id == "odd" then return 5 end
    return { n = 0 }
  end,
  on = { begin = function(state) state.n = state.n + 1 end },
}

-- The three routers, each on a journal of its own.
local function trio(paths, opts)
  local out = {}
  for i, how in ipairs { "engine", "lua", "metrics" } do
    local o = { workflows = { one, two, three }, journal = paths[i], sync = "none", clock = function() return 100 end,
                metrics = how == "metrics" or nil }
    for k, v in pairs(opts or {}) do o[k] = v end
    local r = assert(procman.router(o))
    if how == "lua" then r.engine = false end
    out[i] = r
  end
  return out
end

-- What r:handle(event) gave: the envelopes, or the error as text.
local function outcome(r, event)
  current = r
  local res = table.pack(pcall(r.handle, r, event))
  current = nil
  if not res[1] then return { error = (tostring(res[2]):gsub("0x%x+", "ADDR")) } end
  return { res[2], res[3] }
end

describe("procman.engine under attack", function()
  local temp = files.temps_each_test()

  -- Run 'events' (each a table or a function making one) through the
  -- three routers: the same outcomes, states and journal bytes.
  local function same_everywhere(events, opts)
    local p = { temp(), temp(), temp() }
    local rs = trio(p, opts)
    for i, make in ipairs(events) do
      local got = {}
      for k, r in ipairs(rs) do
        local event = type(make) == "function" and make() or make
        local before, bytes = routers.snapshot(r), r:stats().journal_bytes
        got[k] = outcome(r, event)
        if got[k].error then  -- refused: nothing changed
          assert.same(before, routers.snapshot(r), "event " .. i .. " changed router " .. k)
          assert.equal(bytes, r:stats().journal_bytes, "event " .. i .. " journaled on router " .. k)
        end
      end
      assert.same(got[2], got[1], "event " .. i .. " (engine vs Lua)")
      assert.same(got[2], got[3], "event " .. i .. " (metrics vs Lua)")
    end
    local snaps = {}
    for k, r in ipairs(rs) do snaps[k] = routers.snapshot(r) end
    assert.same(snaps[2], snaps[1])
    assert.same(snaps[2], snaps[3])
    for _, r in ipairs(rs) do r:close() end
    assert.equal(files.bytes(p[2]), files.bytes(p[1]))
    assert.equal(files.bytes(p[2]), files.bytes(p[3]))
    return snaps[1]
  end

  it("events with metatables", function()
    same_everywhere {
      setmetatable({ event_type = "go" }, { __index = { id = "via_index" } }),
      setmetatable({ event_type = "go", id = "m1" }, { __index = function() return "x" end }),
      setmetatable({ event_type = "go", id = "m2" }, { __pairs = function() return next, { a = 1 }, nil end }),
      setmetatable({ event_type = "go", id = "m3", 1, 2 }, { __len = function() return 99 end }),
      setmetatable({ event_type = "go", id = "m4" }, { __newindex = function() error("no") end }),
      setmetatable({ event_type = "go", id = "m5" }, { __name = "Odd" }),
    }
  end)

  it("flow ids and event ids of every odd type", function()
    local huge = string.rep("x", 10 * 1024)
    same_everywhere {
      { event_type = "go", id = 7.5 },
      { event_type = "go", id = 7.0 },
      { event_type = "go", id = 0 / 0 },
      { event_type = "go", id = {} },
      { event_type = "go", id = true },
      { event_type = "go", id = "" },
      { event_type = "go", id = 7 },
      { event_type = "go", id = "7" },
      { event_type = "go", id = 7, event_id = 1 },
      { event_type = "go", id = 7, event_id = 1.0 },
      { event_type = "go", id = 7, event_id = 0 / 0 },
      { event_type = "go", id = 7, event_id = {} },
      { event_type = "go", id = 7, event_id = "1" },
      { event_type = "go", id = 7, event_id = 1 },
      { event_type = "go", id = math.maxinteger, event_id = math.mininteger },
      { event_type = "go", id = math.mininteger },
      { event_type = "go", id = 2 ^ 63 },
      { event_type = "go", id = "a\0b", event_id = "\0" },
      { event_type = "go", id = huge, event_id = huge },
      { event_type = "go", id = huge, event_id = huge },
      { event_type = "go", id = "k", tag = huge },
    }
  end)

  it("handlers that raise error objects, yield, loop past their budget", function()
    for _, park in ipairs { false, true } do
      same_everywhere({
        { event_type = "go", id = "h" },
        park and { event_type = "err_tostring", id = "h" } or { event_type = "err_obj", id = "h" },
        { event_type = "err_tostring", id = "h" },
        { event_type = "yield", id = "h" },
        { event_type = "loop", id = "h" },
        { event_type = "go", id = "h" },
      }, { on_error = park and "park" or "raise" })
    end
  end)

  it("handlers inside a coroutine that yield", function()
    local p = { temp(), temp() }
    local rs = trio({ p[1], p[2], temp() })
    local got = {}
    for k = 1, 2 do
      rs[k]:handle { event_type = "go", id = "y" }
      local co = coroutine.wrap(function() return outcome(rs[k], { event_type = "yield", id = "y" }) end)
      got[k] = co()
    end
    assert.same(got[2], got[1])
    assert.same(routers.snapshot(rs[2]), routers.snapshot(rs[1]))
  end)

  it("commands with cycles, functions, metatables", function()
    for _, park in ipairs { false, true } do
      same_everywhere({
        { event_type = "go", id = "c" },
        { event_type = "cycle", id = "c" },
        { event_type = "fn", id = "c" },
        { event_type = "meta", id = "c" },
        { event_type = "meta_list", id = "c" },  -- the list's __index and __len mean nothing
        { event_type = "len_only", id = "c" },
        { event_type = "go", id = "c" },
      }, { on_error = park and "park" or "raise" })
    end
  end)

  it("many commands, and events and commands nested about as deep as the record holds", function()
    local events = { { event_type = "go", id = "n" }, { event_type = "many", id = "n", n = 70 } }
    for deep = 94, 99 do
      events[#events + 1] = { event_type = "many", id = "n", n = 2, deep = deep }
      events[#events + 1] = { event_type = "many", id = "n", n = 66, deep = deep }
    end
    for deep = 96, 100 do events[#events + 1] = { event_type = "go", id = "n", tag = nest(deep) } end
    for _, park in ipairs { false, true } do
      same_everywhere(events, { on_error = park and "park" or "raise" })
    end
  end)

  it("a handler that mutates the event and keeps it in its state", function()
    local shared = { event_type = "mutate", id = "mu", list = { 1, 2 } }
    local snap = same_everywhere { { event_type = "go", id = "mu" }, shared, shared }
    assert.is_nil(shared.extra)
    assert.is_not_nil(snap)
  end)

  it("two workflows, the second fails: the first is taken back", function()
    same_everywhere {
      { event_type = "shared", id = "s", event_id = "a" },
      { event_type = "shared", id = "s", event_id = "b", fail2 = true },
      { event_type = "shared", id = "s", event_id = "b" },
      { event_type = "shared", id = "new", fail2 = true },
    }
  end)

  it("the first workflow's many big commands grow the outbox's buffer, then the second fails", function()
    -- the envelopes are encoded straight into the outbox's buffer: growing
    -- it mid-step, then failing, must leave the pending commands (and the
    -- bytes the next step writes after them) intact
    for _, park in ipairs { false, true } do
      same_everywhere({
        { event_type = "shared", id = "g", event_id = "a", n = 3, pad = 10 },
        { event_type = "shared", id = "g", event_id = "b", n = 300, pad = 2000, fail2 = true },
        { event_type = "shared", id = "g2", event_id = "c", n = 300, pad = 2000, fail2 = true },
        { event_type = "shared", id = "g", event_id = "d", n = 40, pad = 100 },
        { event_type = "shared", id = "g", event_id = "e", n = 20, pad = 5000 },
      }, { on_error = park and "park" or "raise" })
    end
  end)

  it("an init that raises, loops past its budget or returns no table: refused, nothing changed", function()
    local snap = same_everywhere {
      { event_type = "begin", id = "ok", event_id = "1" },
      { event_type = "begin", id = "raises", event_id = "2" },
      { event_type = "begin", id = "loops", event_id = "3" },
      { event_type = "begin", id = "odd", event_id = "4" },
      { event_type = "begin", id = "ok", event_id = "5" },
    }
    local states = {}
    for name, flow in pairs(snap.flows) do
      if name:find("three/", 1, true) then states[#states + 1] = flow.state end
    end
    assert.same({ { n = 2 } }, states)  -- three/ok, twice; no other flow
  end)

  it("a completed flow in one workflow and a live one in another", function()
    same_everywhere({
      { event_type = "shared", id = "d", event_id = "1" },
      { event_type = "finish", id = "d", event_id = "2" },
      { event_type = "shared", id = "d", event_id = "3" },
      { event_type = "shared", id = "d", event_id = "1" },
      { event_type = "finish", id = "d", event_id = "2" },
    }, { on_late = "dead_letter" })
  end)

  -- Refused (handlers are pure): else pm.c's undo would replay the inner
  -- r:handle and the engine's fallback would run it again.
  it("a handler that calls its router", function()
    local snap = same_everywhere {
      { event_type = "reenter", id = "r", inner = "i" },
      { event_type = "reenter", id = "r", inner = "r" },  -- its own flow
      { event_type = "reenter_timer", id = "t", inner = "j" },
    }
    assert.same({}, snap.flows)  -- each refused, nothing changed
  end)

  it("a handler that calls any method that changes its router: refused, nothing changed", function()
    local methods = { tick = { 1 }, resume = { "w", "x" }, skip = { "w", "x" }, ack = { "w/x/1/1" },
                      retry_dead_letter = { 1 }, drop_dead_letter = { 1 },
                      dispatch = { function() end }, compact = {} }
    local r, errors = nil, {}
    local w = procman.workflow {
      name = "w", correlate = "id", starts = { "try" }, budget = false,
      on = { try = function(state, event)
        state.tried = (state.tried or 0) + 1
        local ok, err = pcall(r[event.method], r, table.unpack(methods[event.method]))
        errors[event.method] = not ok and err or "no error"
        return { { command_type = "tried", method = event.method } }
      end },
    }
    r = assert(procman.router { workflows = { w }, journal = temp() })
    for method in pairs(methods) do
      local before = r:stats()
      assert(r:handle { event_type = "try", id = method, method = method })
      assert.equal("procman.router: r:" .. method .. " called from a handler: handlers are pure "
                   .. "(return commands)", errors[method])
      assert.equal(before.seq + 1, r:stats().seq)  -- only the outer event
    end
    r:close()
  end)
end)
