-- Workflow files run in a sandbox: work is a side effect.
local procman = require "procman"
local files = require "spec.support.files"
local flow = require "spec.support.flow"

-- Load a workflow whose one handler, 'go', runs 'body'.
local function handler_doing(body, extra)
  return assert(procman.loadstring(string.format([[
    return procman.workflow { name = "w", %s on = { ok = function(s) s.n = (s.n or 0) + 1 end,
                                                     go = function(state, event) %s end } }
  ]], extra or "", body), "=test"))
end

-- pm:handle{go} fails with 'message', leaving the flow as it was.
local function handler_refused(body, message)
  local pm = handler_doing(body, "budget = 1000000,"):new(1)
  pm:handle { event_type = "ok" }
  flow.refuses(pm, { event_type = "go" }, message)
end

local SIDE_EFFECT = "work is a side effect: do it in a gateway"

describe("procman.load and the sandbox", function()
  local path
  files.journal_each_test(function(p) path = p end)

  it("loads a workflow file and returns its workflow", function()
    files.write(path, [[
      local function greet(state, event) state.name = event.name
        return { { command_type = "say", text = string.format("hi %s", event.name) } } end
      return procman.workflow { name = "greeter", on = { greet = greet } }
    ]])
    local wf = assert(procman.load(path))
    assert.is_true(procman.is_workflow(wf))
    assert.same({ { command_type = "say", text = "hi ann" } },
                wf:new(1):handle { event_type = "greet", name = "ann" })
  end)

  it("loads the shipped workflows, which then behave as with require", function()
    for _, name in ipairs { "batch", "order" } do
      local file = assert(package.searchpath("procman.workflows." .. name, package.path))
      local wf = assert(procman.load(file))
      assert.equal(name, wf.name)
    end
    local batch = assert(procman.load(package.searchpath("procman.workflows.batch", package.path)))
    local pm = batch:new("b1")
    assert.same({ { command_type = "process_file", file = "f1" } },
                pm:handle { event_type = "batch_created", files = { "f1" } })
    pm:handle { event_type = "file_processed", file = { id = "f1", status = "success" } }
    assert.same({ id = "b1", files = { f1 = "success" }, status = "success" }, pm:state())
  end)

  it("returns nil and a message for files that cannot be loaded", function()
    local wf, err = procman.load(path)
    assert.is_nil(wf)
    assert.matches("cannot open", err)
    files.write(path, "return procman.workflow {")
    wf, err = procman.load(path)
    assert.is_nil(wf)
    assert.matches(path:gsub("%p", "%%%0") .. ":1:", err)
    files.write(path, "return 42")
    assert.same({ nil, path .. ": a workflow file must return a workflow (procman.workflow { ... }), got number" },
                { procman.load(path) })
    files.write(path, "local f = io.open('/etc/passwd')")
    wf, err = procman.load(path)
    assert.is_nil(wf)
    assert.matches(":1: io is not available in a workflow: " .. SIDE_EFFECT:gsub("%p", "%%%0"), err)
    assert.same({ nil, "x: a workflow file must return a workflow (procman.workflow { ... }), got nil" },
                { procman.loadstring("", "=x") })
    assert.error_matches(function() procman.load(nil) end, "procman.load: path must be a string, got nil")
    assert.error_matches(function() procman.loadstring(1) end, "procman.loadstring: source must be a string")
  end)

  it("refuses precompiled chunks", function()
    local wf, err = procman.loadstring(string.dump(function() return 1 end))
    assert.is_nil(wf)
    assert.matches("attempt to load a binary chunk", err)
  end)

  it("stops a file that never returns", function()
    local wf, err = procman.loadstring("while true do end")
    assert.is_nil(wf)
    assert.matches("ran past its instruction budget", err)
  end)

  it("names the file whose top level ran out of its budget or its memory", function()
    files.write(path, "local t = {}\nfor i = 1, math.maxinteger do t[i] = i end\n")
    local wf, err = procman.load(path, { memory = 1024 * 1024 })
    assert.is_nil(wf)
    -- which of the two the guard says depends on when the collector ran
    local memory = { "not enough memory, running the file's top level (its memory budget: 1048576 bytes, "
                     .. "the host's limits.memory)",
                     "ran past its memory budget of 1048576 bytes (see the workflow's memory option), "
                     .. "running the file's top level" }
    assert.is_true(err == path .. ": " .. memory[1] or err == path .. ": " .. memory[2], err)
    files.write(path, "while true do end\n")
    wf, err = procman.load(path, { budget = 100000 })
    assert.is_nil(wf)
    assert.equal(path .. ": ran past its instruction budget (a runaway loop? see the workflow's budget "
                 .. "option), running the file's top level", err)
    err = select(2, procman.loadstring("error('at a line')", "=named.lua"))  -- has its place: as it is
    assert.equal("named.lua:1: at a line", err)
  end)

  it("places a bad string.format at the workflow's line, as Lua's own does", function()
    local wf, err = procman.loadstring("local s = 'x'\nlocal t = string.format('%y', s)\n", "=fmt.lua")
    assert.is_nil(wf)
    assert.equal("fmt.lua:2: invalid conversion '%y' to 'format'", err)
    local pm = handler_doing("local t = ('%d'):format('x') return {}"):new(1)
    flow.refuses(pm, { event_type = "go" },
                 "w/1: handler for 'go' failed: test:2: bad argument #2 to 'string.format' "
                 .. "(number expected, got string)")
  end)

  it("gives each file its own environment", function()
    assert(procman.loadstring("shared = 1; string.mine = 1; return procman.workflow { name = 'a', on = { x = function() end } }"))
    local seen = assert(procman.loadstring([[
      local found = { shared = rawget(_ENV, "shared"), mine = string.mine }
      return procman.workflow { name = "b", on = { x = function() return { { command_type = "found", found = found } } end } }
    ]]))
    assert.same({ { command_type = "found", found = {} } }, seen:new(1):handle { event_type = "x" })
    assert.is_nil(rawget(_G, "shared"))
    assert.is_nil(rawget(string, "mine"))
  end)

  it("holds only what defining a workflow needs in its procman", function()
    local wf = handler_doing([[local names = {}
      for k in pairs(procman) do names[#names + 1] = k end
      table.sort(names)
      return { { command_type = "names", names = names } }]])
    assert.same({ { command_type = "names", names = { "after", "at", "cancel", "deprecate_patch", "patched", "workflow" } } },
                wf:new(1):handle { event_type = "go" })
  end)

  describe("refuses, with the reason, and changes nothing", function()
    local cases = {
      { "io.write('x')", "io is not available in a workflow: " .. SIDE_EFFECT },
      { "_G.io.write('x')", "io is not available" },
      { "_ENV.io.write('x')", "io is not available" },
      { "os.time()", "os is not available in a workflow: " .. SIDE_EFFECT },
      { "os.execute('touch /tmp/pwned')", "os is not available" },
      { "print('x')", "print is not available" },
      { "require('io')", "require is not available in a workflow: a workflow file loads no code" },
      { "load('return 1')", "load is not available" },
      { "loadfile('/etc/passwd')", "loadfile is not available" },
      { "dofile('/etc/passwd')", "dofile is not available" },
      { "package.loaded.io.write('x')", "package is not available" },
      { "debug.sethook()", "debug is not available" },
      { "collectgarbage()", "collectgarbage is not available" },
      { "coroutine.wrap(function() end)()", "coroutine is not available in a workflow: a handler runs to completion" },
      { "string.dump(function() end)", "string.dump is not available in a workflow: string.dump turns code" },
      { "getmetatable('').__index.dump(function() end)", "string.dump is not available" },
      { "local d = ('').dump; d(function() end)", "string.dump is not available" },
      { "return { { command_type = 'x', v = math.random() } }",
        "math.random is not available in a workflow: time and chance come from events" },
      { "math.randomseed(1)", "math.randomseed is not available" },
      { "setmetatable(_G, nil)", "setmetatable: not on a value whose metatable the workflow file did not set" },
      { "setmetatable(string, nil)", "setmetatable: not on a value whose metatable" },
      { "getmetatable('').__index = {}", "the string metatable is read-only in a workflow" },
      { "local io = rawget(_G, 'io'); io.write('x')", "attempt to index a nil value" },
      { "while true do end", "ran past its instruction budget" },
      { "while true do pcall(function() while true do end end) end", "ran past its instruction budget" },
      { "for i = 1, 1e9 do pcall(error, i) end", "ran past its instruction budget" },
    }
    for _, case in ipairs(cases) do
      it(case[1], function() handler_refused(case[1], case[2]) end)
    end
  end)

  it("withholds every global it does not offer, each with its reason in the refusal table", function()
    local sandbox = require "procman.sandbox"
    local p = assert(io.popen([[lua5.4 -e "for k in pairs(_G) do print(k) end"]]))
    local standard = {}
    for name in p:lines() do  -- 'arg' is the interpreter's, not the library's
      if name ~= "arg" then standard[#standard + 1] = name end
    end
    p:close()
    assert.is_true(#standard > 20)
    local env = sandbox.environment()
    local offered, withheld = {}, {}
    for _, name in ipairs(standard) do
      if rawget(env, name) ~= nil then
        offered[#offered + 1] = name
      else
        local ok, err = pcall(function() return env[name] end)
        assert.is_false(ok, name .. " is neither offered nor refused")
        assert.equal(name .. " is not available in a workflow: " .. sandbox.FORBIDDEN[name],
                     err:gsub("^.-:%d+: ", ""))
        withheld[#withheld + 1] = name
      end
    end
    table.sort(offered)
    table.sort(withheld)
    assert.same({ "_G", "_VERSION", "assert", "error", "getmetatable", "ipairs", "math", "next", "pairs",
                  "pcall", "rawequal", "rawget", "rawlen", "rawset", "select", "setmetatable", "string",
                  "table", "tonumber", "tostring", "type", "utf8", "xpcall" }, offered)
    assert.same({ "collectgarbage", "coroutine", "debug", "dofile", "io", "load", "loadfile", "os",
                  "package", "print", "require", "warn" }, withheld)
    for name in pairs(sandbox.FORBIDDEN) do  -- and the table refuses nothing it offers
      assert.is_nil(rawget(env, name), name)
    end
  end)

  it("has no way to get load from an event: functions are not data", function()
    local pm = handler_doing("return { event.f() }"):new(1)
    flow.refuses(pm, { event_type = "go", f = load }, "event 'go' is not data")
  end)

  it("keeps the pure part of the library", function()
    local wf = handler_doing([[
      return { { command_type = "ok", v = { math.floor(2.5), ("ab"):upper(), table.concat({ 1, 2 }, ","),
                 utf8.char(72), select("#", 1, 2), tostring(getmetatable(_G)),
                 getmetatable("").__index.rep("x", 2), pcall(error, "e") } } }]])
    assert.same({ { command_type = "ok", v = { 2, "AB", "1,2", "H", 2, "false", "xx", false, "e" } } },
                wf:new(1):handle { event_type = "go" })
  end)

  it("leaves string methods working outside the sandbox", function()
    rawset(string, "procman_test_extra", function(s) return s .. "!" end)
    assert.equal("hi!", ("hi"):procman_test_extra())
    rawset(string, "procman_test_extra", nil)
    assert.equal("HI", ("hi"):upper())
    assert.equal("function", type(string.dump))
  end)
end)

describe("the instruction budget", function()
  local function looping(budget)
    return procman.workflow { name = "loop", budget = budget,
                              on = { go = function(s, e) for i = 1, e.n do s.i = i end end } }
  end

  it("stops a runaway handler, atomically, with a clear error", function()
    local pm = looping(10000):new(1)
    pm:handle { event_type = "go", n = 10 }
    flow.refuses(pm, { event_type = "go", n = 1e6 },
                 "loop/1: handler for 'go' failed: ran past its instruction budget (a runaway loop? "
                 .. "see the workflow's budget option)")
    assert.equal(10, pm:state().i)
    pm:handle { event_type = "go", n = 20 }
    assert.equal(20, pm:state().i)
    assert.is_nil(debug.gethook())
  end)

  it("is on by default, and off with budget = false", function()
    assert.equal(100000000, looping(nil).budget)
    local pm = looping(false):new(1)
    pm:handle { event_type = "go", n = 200000 }
    assert.equal(200000, pm:state().i)
  end)

  it("keeps calling an existing hook (a debugger, coverage), and holds all the same", function()
    local counts, lines = 0, 0
    local function hook(event) if event == "count" then counts = counts + 1 else lines = lines + 1 end end
    debug.sethook(hook, "l", 1000)
    local pm = looping(1000):new(1)
    local ok, err = pcall(pm.handle, pm, { event_type = "go", n = 10000 })
    local ok_small = pcall(pm.handle, pm, { event_type = "go", n = 10 })
    local after = { debug.gethook() }
    debug.sethook()
    assert.is_false(ok)
    assert.matches("ran past its instruction budget", err)
    assert.is_true(ok_small)
    assert.is_true(counts > 0)
    assert.is_true(lines > 0)
    assert.equal(hook, after[1])  -- put back as it was
    assert.equal("l", after[2])
    assert.equal(1000, after[3])
  end)

  it("budget = false sets no hook (no slow path); memory = false sets no guard at all", function()
    local hooks = {}
    local function spy(name, extra)
      local def = { name = name, on = { go = function() hooks[name] = debug.gethook() ~= nil end } }
      for k, v in pairs(extra) do def[k] = v end
      return procman.workflow(def)
    end
    spy("unlimited", { budget = false }):new(1):handle { event_type = "go" }
    spy("counted", {}):new(1):handle { event_type = "go" }
    assert.is_false(hooks.unlimited)
    assert.is_true(hooks.counted)
    local bomb = procman.workflow { name = "bomb", budget = false, memory = 1024 * 1024,
                                    on = { go = function() return { { command_type = "x",
                                                                       s = ("x"):rep(1e7) } } end } }
    flow.refuses(bomb:new(1), { event_type = "go" }, "ran past its memory budget of 1048576 bytes")
  end)

  it("is checked where the workflow is defined", function()
    for _, bad in ipairs { 0, -1, 1.5, "lots", true } do
      assert.error_matches(function() looping(bad) end,
                           "budget must be a positive integer %(instructions per call%) or false")
    end
    -- 1e9 looks whole: the message says what it is
    assert.error_matches(function() looping(1e9) end, "or false, got 1000000000%.0 %(float%)")
  end)
end)
