-- The layout shows the architecture (docs/design.md, "Layout"): the
-- library (lua/) requires neither the command's tools (cli/lua/) nor the
-- shipped workflows (workflows/lua/).

-- The module names of the Lua files under 'root'.
local function modules_under(root)
  local names = {}
  local p = assert(io.popen("find " .. root .. " -name '*.lua' | sort"))
  for path in p:lines() do
    names[#names + 1] = path:sub(#root + 2):gsub("/init%.lua$", ""):gsub("%.lua$", ""):gsub("/", ".")
  end
  p:close()
  return names
end

-- The modules a fresh lua5.4 has loaded after running 'code'.
local function loaded_after(code)
  local p = assert(io.popen(string.format("LUA_PATH_5_4=%q LUA_CPATH_5_4=%q lua5.4 -e %q 2>&1",
    package.path, package.cpath,
    code .. "; for name in pairs(package.loaded) do print(name) end")))
  local loaded = {}
  for line in p:lines() do loaded[line] = true end
  assert(p:close())
  return loaded
end

describe("the layout", function()
  it("require 'procman' loads none of the command's tools and none of the shipped workflows", function()
    local loaded = loaded_after('require "procman"')
    assert.is_true(loaded["procman.router"])
    local tools, workflows = modules_under("cli/lua"), modules_under("workflows/lua")
    assert.is_true(#tools > 0 and #workflows > 0)
    for _, name in ipairs(tools) do assert.is_nil(loaded[name], name .. " is a tool") end
    for _, name in ipairs(workflows) do assert.is_nil(loaded[name], name .. " is a shipped workflow") end
  end)

  it("procman.core is the library's core: no terminal helpers, no fault injection", function()
    local function names(cpath)
      local p = assert(io.popen(string.format("LUA_CPATH_5_4=%q lua5.4 -e %q", cpath,
        'for name in pairs(require "procman.core") do print(name) end')))
      local found = {}
      for line in p:lines() do found[line] = true end
      assert(p:close())
      return found
    end
    local shipped = names("build/?.so")
    assert.is_true(shipped.encode and shipped.journal_open and true)
    for _, name in ipairs { "journal_faults", "is_terminal", "line_reader", "interruptible" } do
      assert.is_nil(shipped[name], name)
    end
    assert.is_true(names("build/faults/?.so").journal_faults)  -- the test build's
    local terminal = require "procman.terminal"
    assert.same({ "function", "function", "function" },
                { type(terminal.is_terminal), type(terminal.line_reader), type(terminal.interruptible) })
  end)

  it("the REPL loads the shipped workflows explicitly", function()
    local loaded = loaded_after('require("procman.repl").new()')
    assert.is_true(loaded["procman.workflows.batch"])
    assert.is_true(loaded["procman.workflows.order"])
  end)
end)
