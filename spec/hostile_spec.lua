-- Hostile input at the Lua boundary: pm:handle, procman.workflow,
-- procman.router and the router's methods. Whatever is thrown at them,
-- they either do their job or raise a string that says what is wrong, and
-- a refused call changes nothing. They never crash.
local procman = require "procman"
local batch = require "procman.workflows.batch"
local flow = require "spec.support.flow"
local routers = require "spec.support.routers"
local files = require "spec.support.files"

local function throwing_meta()
  local boom = function() error("metamethod called", 0) end
  return { __index = boom, __newindex = boom, __pairs = boom, __len = boom, __eq = boom }
end

local junk_value

local function junk_table(depth)
  local t = {}
  local r = math.random(8)
  if r == 1 then                       -- a cycle
    t.self = t
  elseif r == 2 then                   -- deeper than the codec takes
    for _ = 1, procman.max_depth + 1 do t = { t } end
  elseif r == 3 then
    setmetatable(t, throwing_meta())
  end
  for _ = 1, math.random(0, 4) do
    local k = junk_value(depth + 1)
    if k ~= nil and k == k then rawset(t, k, junk_value(depth + 1)) end
  end
  return t
end

function junk_value(depth)
  local r = math.random(depth > 2 and 9 or 11)
  if r == 1 then return nil end
  if r == 2 then return math.random() < 0.5 end
  if r == 3 then return math.random(math.mininteger, math.maxinteger) end
  if r == 4 then return ({ 0 / 0, 1 / 0, -0.0, 1.5 })[math.random(4)] end
  if r == 5 then return string.rep("\0\xff", math.random(0, 3) * 5000) end
  if r == 6 then return ({ "batch_created", "file_processed", "add", "", "b1" })[math.random(5)] end
  if r == 7 then return tostring end
  if r == 8 then return coroutine.create(print) end
  if r == 9 then return io.stdout end
  return junk_table(depth)
end

-- A junk event: sometimes with a real event_type, so handlers see junk too.
local function junk_event()
  local e = junk_value(0)
  if type(e) == "table" and getmetatable(e) == nil and math.random() < 0.7 then
    rawset(e, "event_type", ({ "batch_created", "file_processed", "add" })[math.random(3)])
  end
  return e
end

local function hammer(pm, rounds)
  for _ = 1, rounds do
    local before = flow.snapshot(pm)
    local ok, err = pcall(pm.handle, pm, junk_event())
    if not ok then
      assert.is_string(err)
      assert.matches("^batch/b1: ", err)
      assert.same(before, flow.snapshot(pm))
    end
  end
end

describe("hostile input", function()
  it("at the batch workflow", function()
    math.randomseed(4242)
    local pm = batch:new("b1")
    pm:handle { event_type = "batch_created", files = { "a", "b" } }
    hammer(pm, 1500)
  end)

  it("at a workflow the tests do not know", function()
    math.randomseed(77)
    local wf = procman.workflow {
      name = "anon",
      on = {
        add = function(state, event)
          state.n = (state.n or 0) + 1
          state.last = event              -- keeps the (copied) event
          if state.n % 3 == 0 then error({ "not a string" }) end
          if state.n % 5 == 0 then return "not commands" end
          return { { command_type = "x", payload = event } }
        end,
      },
    }
    local pm = wf:new("a1")
    for _ = 1, 1500 do
      local before = flow.snapshot(pm)
      local ok, err = pcall(pm.handle, pm, junk_event())
      if not ok then
        assert.is_true(type(err) == "string" or (type(err) == "table" and err[1] == "not a string"))
        if type(err) == "string" then assert.matches("^anon/a1: ", err) end
        assert.same(before, flow.snapshot(pm))
      end
    end
    assert.is_true(pm:version() > 0)
  end)

  it("at procman.workflow", function()
    math.randomseed(99)
    for _ = 1, 2000 do
      local def = junk_value(0)
      if type(def) == "table" and getmetatable(def) == nil and math.random() < 0.5 then
        rawset(def, "name", "w")
        if math.random() < 0.5 then rawset(def, "on", { x = junk_value(2) }) end
      end
      local ok, wf = pcall(procman.workflow, def)
      if ok then
        assert.is_true(procman.is_workflow(wf))
      else
        assert.is_string(wf)
        assert.matches("procman.workflow", wf)
      end
    end
  end)

  it("at procman.router's options", function()
    math.randomseed(5)
    for _ = 1, 2000 do
      local opts = junk_value(0)
      if type(opts) == "table" and getmetatable(opts) == nil and math.random() < 0.5 then
        rawset(opts, "workflows", math.random() < 0.5 and { batch } or junk_value(1))
      end
      local ok, r = pcall(procman.router, opts)
      if ok and r then
        r:close()
      elseif not ok then
        assert.is_string(r)
        assert.matches("^procman%.", r)
      end
    end
  end)

  describe("error objects whose __tostring fails", function()
    local evil = setmetatable({}, { __tostring = function() error("gotcha", 0) end })
    local odd = setmetatable({}, { __tostring = function() return {} end })
    local function workflows(raised)
      local calm = procman.workflow { name = "calm", correlate = "id", starts = { "go" }, on = {
        go = function(state) state.n = 1 end,
        poke = function(state) state.n = state.n + 1; return { { command_type = "poked" } } end } }
      local wild = procman.workflow { name = "wild", correlate = "id", starts = { "go" }, on = {
        go = function() end,
        poke = function() error(raised) end } }
      return { calm, wild }
    end

    for name, raised in pairs { evil = evil, odd = odd } do
      it("are reported by a router that raises, " .. name, function()
        local r = procman.router { workflows = workflows(raised) }
        r:handle { event_type = "go", id = "f1" }
        local before = routers.snapshot(r)
        local ok, err = pcall(r.handle, r, { event_type = "poke", id = "f1" })
        assert.is_false(ok)
        assert.matches("^wild/f1: handler for 'poke' failed: %(an error object, a table, whose __tostring failed", err)
        assert.same(before, routers.snapshot(r))
      end)

      it("park their flow with the report, " .. name, function()
        local r = procman.router { workflows = workflows(raised), on_error = "park" }
        r:handle { event_type = "go", id = "f1" }
        local out = r:handle { event_type = "poke", id = "f1" }
        assert.equal(1, #out)
        assert.matches("__tostring failed", r:parked()[1].error)
      end)
    end

    it("are reported by procman.testing", function()
      local t = require "procman.testing"
      t.given(workflows(evil)[2], { { event_type = "go", id = "f1" } })
        :when { event_type = "poke", id = "f1" }
        :expect_error "an error object, a table, whose __tostring failed: gotcha"
    end)
  end)

  it("at the router's methods, which change nothing when they refuse", function()
    math.randomseed(2024)
    local path = files.temp_path()
    local r = assert(procman.router { workflows = { batch }, journal = path, on_unroutable = "raise",
                                      clock = function() return 0 end })
    r:handle { event_type = "batch_created", batch_id = "b1", files = { "a", "b" }, file_timeout = 9 }
    local methods = { "handle", "ack", "flow", "completed", "timers", "resume", "skip", "tick",
                      "dispatch", "pending", "stats", "parked", "dead_letters" }
    for _ = 1, 3000 do
      local name = methods[math.random(#methods)]
      local before, bytes = routers.snapshot(r), r:stats().journal_bytes
      local a, b = junk_value(1), junk_value(1)
      if name == "handle" then a = junk_event() end
      if name == "tick" and math.random() < 0.3 then a = nil end
      local ok, err = pcall(r[name], r, a, b)
      if not ok then
        assert.is_string(err)
        assert.matches("procman", err)
        assert.same(before, routers.snapshot(r))
        assert.equal(bytes, r:stats().journal_bytes)
      end
    end
    r:close()
    os.remove(path)
  end)
end)
