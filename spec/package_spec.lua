-- The package: the rockspec lists every module, versions agree, and the
-- command-line tool behaves like a Unix tool.
local procman = require "procman"

local function read(path)
  local f = assert(io.open(path))
  local text = f:read("a")
  f:close()
  return text
end

local function rockspec(pattern)
  local name = assert(io.popen("ls " .. (pattern or "procman-[0-9]*.rockspec"))):read("l")
  local env = {}
  assert(load(read(name), "=" .. name, "t", env))()
  return env, name
end

describe("the rockspec", function()
  -- Every Lua file under 'root' is listed in the rockspec, by its module name.
  local function lists_every_module(spec, root, name)
    local listed = {}
    for module, source in pairs(spec.build.modules) do
      if type(source) == "string" then listed[source] = module end
    end
    local p = assert(io.popen("find " .. root .. " -name '*.lua' | sort"))
    for path in p:lines() do
      local module = path:sub(#root + 2):gsub("/init%.lua$", ""):gsub("%.lua$", ""):gsub("/", ".")
      assert.equal(module, listed[path], path .. " is not listed in " .. name)
    end
    p:close()
  end

  it("lists every Lua module under lua/, cli/lua/ and workflows/lua/, by its module name", function()
    for _, root in ipairs { "lua", "cli/lua", "workflows/lua" } do
      lists_every_module(rockspec(), root, "the rockspec")
    end
  end)

  it("of procman-pg lists every module under pg/lua/, and builds procman.pg.core", function()
    local spec = rockspec("procman-pg-*.rockspec")
    lists_every_module(spec, "pg/lua", "procman-pg's rockspec")
    assert.same({ "pg/csrc/pg.c" }, spec.build.modules["procman.pg.core"].sources)
    assert.equal(procman.version .. "-1", spec.version)
  end)

  it("builds procman.core, procman.terminal and procman-lineedit's procman.lineedit from every C source but faults.c", function()
    local sources = {}
    local function add(spec, module)
      for _, s in ipairs(spec.build.modules[module].sources) do sources[s] = true end
    end
    add(rockspec(), "procman.core")
    add(rockspec(), "procman.terminal")
    sources["csrc/faults.c"] = true  -- test builds only (Makefile: FAULTS_SRC)
    local lineedit = rockspec("procman-lineedit-*.rockspec")
    add(lineedit, "procman.lineedit")
    assert.equal(procman.version .. "-1", lineedit.version)
    local p = assert(io.popen("ls csrc/*.c"))
    for path in p:lines() do assert.is_true(sources[path], path .. " is not in a rockspec") end
    p:close()
  end)

  it("declares what the rocks need: argparse, lua-cjson; libedit only for procman-lineedit", function()
    local spec = rockspec()
    local deps = table.concat(spec.dependencies, "\n")
    assert.matches("\nargparse ", deps)
    assert.matches("\nlua%-cjson ", deps)
    assert.is_nil(spec.external_dependencies)  -- procman builds with Lua alone
    for _, module in pairs(spec.build.modules) do
      assert.is_nil(type(module) == "table" and module.libraries or nil)
    end
    local lineedit = rockspec("procman-lineedit-*.rockspec")
    assert.equal("histedit.h", lineedit.external_dependencies.EDIT.header)
    assert.same({ "edit" }, lineedit.build.modules["procman.lineedit"].libraries)
  end)

  it("has the version of the C core, and installs the command", function()
    local spec, name = rockspec()
    assert.equal(procman.version .. "-1", spec.version)
    assert.equal("procman-" .. spec.version .. ".rockspec", name)
    assert.equal("bin/procman", spec.build.install.bin.procman)
    assert.equal("3.0", spec.rockspec_format)
  end)
end)

describe("bin/procman", function()
  local function procman_cmd(args)
    local p = assert(io.popen("LUA_PATH='lua/?.lua;lua/?/init.lua;cli/lua/?.lua;workflows/lua/?.lua;;' LUA_CPATH='build/?.so;;' "
                              .. "lua5.4 bin/procman " .. args .. " 2>&1; echo \"exit=$?\""))
    local out = p:read("a")
    p:close()
    return out:match("^(.-)exit=(%d+)%s*$")
  end

  it("prints its version and its help", function()
    local out, code = procman_cmd("--version")
    assert.equal("0", code)
    assert.equal(procman._VERSION .. "\n", out)
    out, code = procman_cmd("--help")
    assert.equal("0", code)
    assert.matches("^Usage: procman", out)
    assert.matches("repl", out)
  end)

  it("exits 2 with usage on stderr for what it does not know", function()
    local out, code = procman_cmd("frobnicate")
    assert.equal("2", code)
    assert.matches("^Usage: procman", out)
    assert.matches("procman: unknown command 'frobnicate'", out)
    out, code = procman_cmd("--frobnicate")
    assert.equal("2", code)
    assert.matches("procman: unknown option '%-%-frobnicate'", out)
  end)

  it("runs the seed's session piped into its REPL, as a transcript", function()
    local session = table.concat({
      'pm = batch:new("batch1")',
      'pm:handle{ event_type = "batch_created", files = { "f1", "f2", "f3" } }',
      'for _, f in ipairs({ "f1", "f2", "f3" }) do',
      '  pm:handle{ event_type = "file_processed", file = { id = f, status = "success" } }',
      'end',
      "pm:state()",
      "nosuch()",
    }, "\n")
    local input = os.tmpname()
    local f = assert(io.open(input, "w"))
    f:write(session, "\n")
    f:close()
    local out, code = procman_cmd("repl < " .. input)
    os.remove(input)
    assert.equal("0", code)
    assert.equal(table.concat({
      '> pm = batch:new("batch1")',
      "procman.pm: batch/batch1 (idle, v0)",
      '> pm:handle{ event_type = "batch_created", files = { "f1", "f2", "f3" } }',
      "{",
      '  { command_type = "process_file", file = "f1" },',
      '  { command_type = "process_file", file = "f2" },',
      '  { command_type = "process_file", file = "f3" }',
      "}",
      '> for _, f in ipairs({ "f1", "f2", "f3" }) do',
      '>>   pm:handle{ event_type = "file_processed", file = { id = f, status = "success" } }',
      ">> end",
      "> pm:state()",
      "{",
      '  files = { f1 = "success", f2 = "success", f3 = "success" },',
      '  id = "batch1",',
      '  status = "success"',
      "}",
      "> nosuch()",
      "error: stdin:1: attempt to call a nil value (global 'nosuch')",
      "> ",
      "" }, "\n"), out)
  end)
end)
