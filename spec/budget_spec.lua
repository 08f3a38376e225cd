-- The sandbox holds: every call into a sandboxed workflow's code runs under
-- its instruction and memory budgets, and nothing in reach escapes them.
--
-- Each attack runs in a child process (spec/support/child.lua) so that one
-- that hangs is reported instead of blocking busted; the child's guard
-- timeout only detects a hang, it is not a speed limit. In the child, a
-- router (on_error = "park") gets a good event, then the attack, then
-- another good event: the attack must fail like any handler error (the
-- flow parked with the reason, its state as before), and the router must
-- go on.
local procman = require "procman"
local child = require "spec.support.child"
local flow = require "spec.support.flow"

local BUDGET = "ran past its instruction budget"
local MEMORY = "ran past its memory budget"

-- The child's script: a sandboxed workflow whose 'go' handler runs
-- 'body' (and whose other functions 'extra' may replace), behind a router.
local function script(body, extra)
  return string.format([=[
    local procman = require "procman"
    local wf = assert(procman.loadstring(%q, "=attack"))
    local r = procman.router { workflows = { wf }, on_error = "park" }
    r:handle { event_type = "ok", id = 1 }
    local ok, err = pcall(r.handle, r, { event_type = "go", id = 1 })
    local parked = r:parked()[1]
    print("raised:", tostring(not ok), tostring(err))
    print("parked:", parked and parked.error or "no")
    r:handle { event_type = "ok", id = 2 }
    print("state:", r:flow("w", 1):state().n, r:flow("w", 2):state().n)
    print("the router went on")
  ]=], string.format([[
    return procman.workflow {
      name = "w", correlate = "id", starts = { "ok", "go" }, budget = 1000000, %s
      on = { ok = function(s) s.n = (s.n or 0) + 1 end,
             go = function(state, event) state.n = 99; %s end } }
  ]], extra or "", body))
end

-- Run the attack; it must have parked the flow with 'reason'.
local function holds(body, reason, extra)
  local out = child.run(script(body, extra))
  assert.matches("the router went on", out, 1, true)
  assert.matches("parked:%s+w/1: [^\n]*" .. reason, out)
  assert.matches("state:%s+1%s+1", out)  -- the flow as it was; flow 2 handled
end

describe("the sandbox holds against", function()
  it("an xpcall message handler that loops", function()
    holds("xpcall(function() while true do end end, function() while true do end end)", BUDGET)
  end)

  it("an xpcall message handler that loops after the budget ran out", function()
    holds("while true do xpcall(function() while true do end end, function() while true do end end) end",
          BUDGET)
  end)

  it("a __gc finalizer that loops (refused: Lua runs finalizers with hooks off)", function()
    holds("setmetatable({}, { __gc = function() while true do end end }) "
          .. "for i = 1, 1e6 do local _ = { i } end", "__gc %(a finalizer%) is not available")
  end)

  it("a __close that loops", function()
    holds("local x <close> = setmetatable({}, { __close = function() while true do end end }) error('x')",
          BUDGET)
  end)

  it("('') :rep(math.maxinteger), which is '' at once, then a loop of reps", function()
    holds("local s = (''):rep(math.maxinteger) assert(s == '') "
          .. "for i = 1, 1e9 do local _ = ('x'):rep(1e6) end", BUDGET)
  end)

  it("pathological backtracking in a pattern, as a method and through string", function()
    holds("local _ = ('a'):rep(30000):find(('a*'):rep(30) .. 'b')", BUDGET)
    holds("local _ = string.match(('a'):rep(30000), ('a*'):rep(30) .. 'b')", BUDGET)
    holds("local _ = string.gsub(('a'):rep(30000), ('a-'):rep(30) .. 'b', '')", BUDGET)
    holds("for _ in ('a'):rep(30000):gmatch(('a*'):rep(30) .. 'b') do end", BUDGET)
  end)

  it("string.unpack with a long format, over and over", function()
    holds("local fmt = ('='):rep(100000) for i = 1, 1e9 do string.unpack(fmt, '') end", BUDGET)
  end)

  it("plain find over and over in a long string", function()
    holds("local s = ('a'):rep(1e6) for i = 1, 1e9 do s:find(('a'):rep(100) .. 'b', 1, true) end", BUDGET)
  end)

  it("budget = false in a sandboxed definition", function()
    local out = child.run(script("while true do end", "budget = false,"):gsub("budget = 1000000, ", ""))
    assert.matches("budget = false is more than this sandbox allows", out, 1, true)
  end)

  it("a budget above the host's maximum", function()
    local wf, err = procman.loadstring([[return procman.workflow { name = "w", budget = 1000000,
      on = { go = function() end } }]], "=w", { budget = 1000 })
    assert.is_nil(wf)
    assert.matches("budget = 1000000 is more than this sandbox allows %(at most 1000 instructions", err)
    wf = assert(procman.loadstring([[return procman.workflow { name = "w",
      on = { go = function() while true do end end } }]], "=w", { budget = 1000 }))
    assert.equal(1000, wf.budget)
    flow.refuses(wf:new(1), { event_type = "go" }, BUDGET)
  end)

  for _, fn in ipairs { "init", "done", "status", "view" } do
    it("a " .. fn .. " that loops", function()
      local body = "function() while true do end end"
      local out = child.run(string.format([[
        local procman = require "procman"
        local wf = assert(procman.loadstring(%q, "=attack"))
        local pm
        print("new:", pcall(function() pm = wf:new(1) end))
        if pm then
          print("handle:", pcall(pm.handle, pm, { event_type = "go" }))
          print("state:", pcall(pm.state, pm))
          print("status:", pcall(pm.status, pm))
          print("done:", pcall(pm.done, pm))
        end
        print("the process went on")
      ]], string.format("return procman.workflow { name = 'w', budget = 100000, %s = %s, "
                        .. "on = { go = function() end } }", fn, body)))
      assert.matches("the process went on", out, 1, true)
      assert.matches(fn .. ": " .. BUDGET, out, 1, true)
    end)
  end

  it("a correlate function that loops (the event is refused: no flow to park)", function()
    local out = child.run(script("", "correlate = function(e) if e.event_type == 'go' then "
                                     .. "while true do end end return e.id end,"))
    assert.matches("raised:%s+true%s+w.s correlate: " .. BUDGET, out)
    assert.matches("the router went on", out, 1, true)
  end)

  it("an error object whose __tostring loops: it runs under the budget of the call that raised it",
     function()
    holds("error(setmetatable({}, { __tostring = function() while true do end end }))", BUDGET)
  end)

  it("an error object whose __tostring loops, raised by a workflow that is not sandboxed", function()
    local out = child.run([[
      local procman = require "procman"
      local wf = procman.workflow { name = "w", correlate = "id", starts = { "go" }, on = { go = function()
        error(setmetatable({}, { __tostring = function() while true do end end })) end } }
      local r = procman.router { workflows = { wf }, on_error = "park" }
      r:handle { event_type = "go", id = 1 }
      print("parked:", r:parked()[1].error)
    ]])
    assert.matches("parked:%s+w/1: handler for 'go' failed: %(an error object, a table, whose __tostring "
                   .. "failed: __tostring: " .. BUDGET, out)
  end)

  it("an error object that is text once its __tostring ran (sandboxed errors come back as text)",
     function()
    local wf = assert(procman.loadstring([[return procman.workflow { name = "w",
      on = { go = function() error(setmetatable({}, { __tostring = function() return "boom" end })) end } }]]))
    flow.refuses(wf:new(1), { event_type = "go" }, "w/1: handler for 'go' failed: boom")
  end)

  it("the memory bomb", function()
    holds("local s = ('x'):rep(2^30)", MEMORY, "memory = 64 * 1024 * 1024, budget = 100000000,")
    holds("local t = {} for i = 1, 1e9 do t[i] = { i } end", MEMORY,
          "memory = 16 * 1024 * 1024, budget = 100000000,")
  end)

  it("the memory bomb with the defaults", function()
    local out = child.run(script("local s = ('x'):rep(2^30) local t = s .. s"):gsub("budget = 1000000, ", ""))
    assert.matches("parked:%s+w/1: [^\n]*" .. MEMORY, out)
    assert.matches("the router went on", out, 1, true)
  end)

  it("a memory error caught with pcall, then a loop", function()
    holds("pcall(string.rep, 'x', 2^30) while true do end", BUDGET, "memory = 1024 * 1024,")
  end)
end)

describe("nothing shared is reachable from a sandboxed file", function()
  it("getmetatable(wf) is a name, and the host's workflows are unchanged", function()
    local batch = require "procman.workflows.batch"
    local wf = assert(procman.loadstring([[
      local me = procman.workflow { name = "evil", on = { go = function() end } }
      local meta = getmetatable(me)
      assert(meta == "procman.workflow", tostring(meta))
      local pm_meta = getmetatable(me:new(1))
      assert(pm_meta == "procman.pm", tostring(pm_meta))
      assert(getmetatable(string) == false and getmetatable(_G) == false)
      local ok, err = pcall(setmetatable, me, { __index = function() while true do end end })
      assert(not ok and err:find("setmetatable: not on a value whose metatable", 1, true), err)
      return me
    ]], "=evil"))
    assert.is_true(procman.is_workflow(wf))
    assert.equal("procman.workflow: batch", tostring(batch))
    assert.equal("procman.pm: batch/h (idle, v0)", tostring(batch:new("h")))
  end)

  it("no value a file can reach exposes a metatable it did not set", function()
    local wf = assert(procman.loadstring([[
      local me = procman.workflow { name = "walk", on = { go = function() end } }
      local roots = { _ENV, me, me:new(1), procman.after(1, { event_type = "t" }), "", 1, me.on }
      local seen, found = {}, {}
      local function walk(v, path)
        if seen[v] then return end
        if type(v) == "table" or type(v) == "userdata" or type(v) == "string" then seen[v] = true end
        local meta = getmetatable(v)
        if type(meta) == "table" then
          if type(v) ~= "string" or pcall(function() meta.x = 1 end) then
            found[#found + 1] = path
          end
        end
        if type(v) == "table" then
          for k, x in next, v do walk(x, path .. "." .. tostring(k)) end
        end
      end
      for i, root in ipairs(roots) do walk(root, "root" .. i) end
      assert(#found == 0, "exposed: " .. table.concat(found, ", "))
      return me
    ]], "=walk"))
    assert.is_true(procman.is_workflow(wf))
  end)

  it("a file cannot plant a method in a workflow it hands the host", function()
    local wf, err = procman.loadstring([[
      local me = procman.workflow { name = "evil", on = { go = function() end } }
      rawset(me, "new", function() while true do end end)
      return me
    ]], "=plant")
    assert.is_nil(wf)
    assert.matches("rawset: not on a value whose metatable the workflow file did not set", err)
    assert.is_true(pcall(function()  -- its own tables are its own
      assert(procman.loadstring("local t = {} rawset(t, 1, 2) return procman.workflow { name = 'w', on = { go = function() end } }"))
    end))
  end)

  it("the host gets a sandboxed workflow's functions guarded", function()
    local wf = assert(procman.loadstring([[return procman.workflow { name = "w", budget = 10000,
      init = function() while true do end end, on = { go = function() while true do end end } }]]))
    assert.error_matches(function() wf.on.go({}, {}) end, BUDGET)
    assert.error_matches(function() wf.init(1) end, "w's init: " .. BUDGET)
  end)

  it("names the workflow when done, status or correlate runs past the budget", function()
    local wf = assert(procman.loadstring([[return procman.workflow { name = "w", budget = 10000,
      correlate = "id", starts = { "go" }, on = { go = function() end },
      done = function() while true do end end }]]))
    local r = procman.router { workflows = { wf } }
    assert.error_matches(function() r:handle { event_type = "go", id = 1 } end, "^w's done: " .. BUDGET)
  end)

  it("a file sees the metatables it set itself", function()
    local wf = assert(procman.loadstring([[
      local meta = { __index = function() return 7 end }
      local t = setmetatable({}, meta)
      assert(getmetatable(t) == meta and t.x == 7)
      return procman.workflow { name = "w", on = { go = function() end } }
    ]]))
    assert.is_true(procman.is_workflow(wf))
  end)

  it("handlers' results reach the library as data, without metatables", function()
    local wf = assert(procman.loadstring([[return procman.workflow { name = "w",
      on = { go = function() return { setmetatable({ command_type = "c" },
                                                   { __index = function() while true do end end }) } end } }]]))
    local cmds = wf:new(1):handle { event_type = "go" }
    assert.is_nil(getmetatable(cmds[1]))
    assert.is_nil(cmds[1].anything)
  end)
end)

describe("the sandbox's bounded functions", function()
  local function run(body)
    local wf = assert(procman.loadstring(string.format([[return procman.workflow { name = "b",
      on = { go = function() %s end } }]], body), "=bounded"))
    return wf:new(1):handle { event_type = "go" }[1].v
  end

  it("give what Lua's own give", function()
    assert.same({ "xyxyx", "", "a,b,a", 3, "  7", "b-c", 1, 2, "a", 4, 3, 1, 2, { 1, 5, 2, 3 },
                  { 1, 3 }, { 3, 2, 1 }, "abc", 3, 5, { 104, 105 }, 42, 255, { 2, 3 }, "ok", { 9, 8 } },
      run([[local t = { 1, 2, 3 } table.insert(t, 2, 5) local u = { 1, 2, 3 } table.remove(u, 2)
            local v = { 1, 2, 3 } table.sort(v, function(a, b) return a > b end)
            local w = { 1, 2, 3 } table.move(w, 2, 3, 1)
            local x, y = string.find("hello", "l+")
            return { { command_type = "r", v = {
              ("xy"):rep(2, "") .. "x", ("ab"):rep(0), table.concat({ "a", "b", "a" }, ","),
              select("#", table.unpack({ 1, 2, 3 })), string.format("%3d", 7), (("a-b-c"):gsub("^a%-", "", 1)),
              x - 2, y - 2, ("abc"):match("^(.)"), select(2, ("hello"):gsub("l", "L")) + 2,
              utf8.len("h\u{e9}!"), utf8.offset("abc", 1), utf8.codepoint("\u{2}", 1),
              t, u, v, table.concat({ "a", "b", "c" }, "", 1, 3), #"abc", tonumber("5"), { ("hi"):byte(1, 2) },
              tonumber("2a", 16), tonumber("ff", 16), { table.unpack(w, 1, 2) },
              (function() for k in ("ok"):gmatch("%a+") do return k end end)(),
              { string.byte("\9\8", 1, -1) } } } }]]))
  end)

  it("refuse to return more than 256 values", function()
    assert.has_error(function() run("return { { command_type = 'x', v = select('#', table.unpack({}, 1, 1000)) } }") end)
    assert.has_error(function() run("return { { command_type = 'x', v = select('#', ('x'):rep(300):byte(1, -1)) } }") end)
    assert.equal(256, run("return { { command_type = 'x', v = select('#', ('x'):rep(300):byte(1, 256)) } }"))
  end)
end)

describe("procman.load's limits", function()
  it("are checked", function()
    for _, bad in ipairs { 0, -1, 1.5, "lots", true } do
      assert.error_matches(function() procman.loadstring("return 1", "=x", { budget = bad }) end,
                           "procman.loadstring: limits.budget must be a positive integer")
      assert.error_matches(function() procman.loadstring("return 1", "=x", { memory = bad }) end,
                           "procman.loadstring: limits.memory must be a positive integer")
    end
    assert.error_matches(function() procman.load("x.lua", 5) end, "procman.load: limits must be a table")
  end)

  it("bound the file's top level too", function()
    local wf, err = procman.loadstring("local s = ('x'):rep(2^24) return s .. s", "=top",
                                       { memory = 1024 * 1024 })
    assert.is_nil(wf)
    assert.matches(MEMORY, err)
  end)
end)

describe("the guard", function()
  local core = require "procman.core"

  it("counts C work: the matcher's steps are charged", function()
    local find = core.guard(function(s, p) return s:find(p) end, 1000000, 0, core.guard_flags.sandbox)
    assert.equal(1, find("abc", "a"))
    assert.error_matches(function() find(("a"):rep(30000), ("a*"):rep(30) .. "b") end, BUDGET)
  end)

  it("gives a nested call the smaller budget, and counts it in the outer one", function()
    local inner = core.guard(function() while true do end end, 1000000000)
    local outer = core.guard(function() return pcall(inner) end, 100000)
    assert.error_matches(function() outer() end, BUDGET)
    local calls = core.guard(function(f) for _ = 1, 1e9 do f() end end, 1000000)
    assert.error_matches(function() calls(core.guard(function() end, 1000)) end, BUDGET)
  end)

  it("leaves no hook and the allocator as they were", function()
    local g = core.guard(function() while true do end end, 1000)
    assert.has_error(g)
    assert.is_nil(debug.gethook())
    local t = {}
    for i = 1, 1e5 do t[i] = { i } end  -- allocation outside: no budget to run out of
    assert.equal(1e5, #t)
  end)

  describe("done and status (called per event, without a call of the guard's own)", function()
    -- a workflow that is not sandboxed: its done and status are guarded,
    -- and the router calls them straight under their limits
    local function router(spec)
      spec.name, spec.correlate, spec.starts = "w", "id", { "go" }
      spec.on = { go = function(state) state.n = (state.n or 0) + 1 end }
      return procman.router { workflows = { procman.workflow(spec) } }
    end

    it("run past their budgets with the workflow's name, and the flow is as before", function()
      local r = router { budget = 10000, done = function(s) while s.n > 1 do end end }
      r:handle { event_type = "go", id = 1 }
      assert.error_matches(function() r:handle { event_type = "go", id = 1 } end, "^w's done: " .. BUDGET)
      assert.equal(1, r:flow("w", 1):state().n)
      r = router { memory = 100000, status = function(s)
        local t = {}
        for i = 1, s.n * 1e6 do t[i] = i end
        return #t > 0 and "full" or nil
      end }
      assert.error_matches(function() r:handle { event_type = "go", id = 1 } end, "^w's status: " .. MEMORY)
    end)

    it("raise what they raise: an error object unchanged, a caught budget error still stops them",
       function()
      local object = setmetatable({}, { __tostring = function() return "object" end })
      local r = router { done = function() error(object) end }
      local ok, err = pcall(r.handle, r, { event_type = "go", id = 1 })
      assert.is_false(ok)
      assert.equal(object, err)
      r = router { budget = 10000, done = function()
        pcall(function() while true do end end)
        return true  -- never reached: the first instruction after the budget raises
      end }
      assert.error_matches(function() r:handle { event_type = "go", id = 1 } end, "^w's done: " .. BUDGET)
    end)

    it("run with no frame of the guard's own below them, a guarded call inside still counted",
       function()
      local frames, inner = {}, core.guard(function() while true do end end, 1e9)
      local r = router { budget = 100000, done = function()
        for level = 2, 4 do
          local info = debug.getinfo(level, "f")
          frames[#frames + 1] = info ~= nil and core.is_guard(info.func)
        end
        return false
      end, status = function(s)
        if s.n > 1 then inner() end  -- the smaller budget is the outer one's
        return "fine"
      end }
      assert.same({ false, false, false }, (function() r:handle { event_type = "go", id = 1 } return frames end)())
      assert.equal("fine", r:flow("w", 1):status())
      assert.error_matches(function() r:handle { event_type = "go", id = 1 } end, "^w's status: " .. BUDGET)
      assert.is_nil(debug.gethook())
    end)
  end)

  it("keeps the budget when Ctrl-C's error is caught (the REPL's interrupt)", function()
    local out = child.run([[
      local core = require "procman.core"
      local pid = io.open("/proc/self/stat"):read("n")
      local caught
      local loop = core.guard(function()
        local _, err = pcall(function()
          io.popen("kill -INT " .. pid):close()
          while true do end
        end)
        caught = err
        while true do end
      end, 100000000)
      print("result:", require("procman.terminal").interruptible(pcall, loop))
      print("caught:", caught)
    ]])
    assert.matches("result:%s+false%s+" .. BUDGET, out)
    assert.matches("caught:[^\n]*interrupted!", out)
  end)
end)
