-- What is optional is missing: each missing piece is one line on stderr
-- saying what to install, never a traceback, and what does not need it
-- works. Absence is simulated with search paths that lack the piece (the
-- system's packages stay installed).
local procman = require "procman"
local batch = require "procman.workflows.batch"
local read = require("spec.support.files").bytes

local function tmpdir()
  local p = assert(io.popen("mktemp -d /tmp/procman-optional.XXXXXX"))
  local dir = p:read("l")
  p:close()
  return dir
end

local function sh(cmd)
  local p = assert(io.popen(cmd .. "; echo \"exit=$?\""))
  local out = p:read("a")
  p:close()
  return out:match("^(.-)exit=(%d+)%s*$")
end

-- A directory holding only the named files, as symlinks: a search path
-- that has exactly these modules.
local function only(names)
  local dir = tmpdir()
  for link, target in pairs(names) do
    assert(os.execute(string.format("mkdir -p %q && ln -s %q %q", (dir .. "/" .. link):match("^(.*)/"),
                                    target, dir .. "/" .. link)))
  end
  return dir
end

describe("missing optional pieces", function()
  local cwd = os.getenv("PWD")
  local core = only { ["procman/core.so"] = cwd .. "/build/procman/core.so",
                      ["procman/terminal.so"] = cwd .. "/build/procman/terminal.so" }
  local argparse = only { ["argparse.lua"] = package.searchpath("argparse", package.path) }
  local lib_path = cwd .. "/lua/?.lua;" .. cwd .. "/lua/?/init.lua;" .. cwd .. "/cli/lua/?.lua;"
    .. cwd .. "/workflows/lua/?.lua"
  local lua_path = lib_path .. ";" .. argparse .. "/?.lua"
  local journal = os.tmpname()

  setup(function()
    os.remove(journal)
    local r = assert(procman.router { workflows = { batch }, journal = journal })
    r:handle { event_type = "batch_created", batch_id = "b1", files = { "a" } }
    r:close()
  end)
  teardown(function()
    os.remove(journal)
    os.execute(string.format("rm -rf %q %q", core, argparse))
  end)

  -- bin/procman with Lua's paths limited to 'path' and 'cpath'; stderr and
  -- stdout apart.
  local function procman_cmd(args, path, cpath, input)
    local err = os.tmpname()
    local out, code = sh(string.format("%sLUA_PATH_5_4=%q LUA_CPATH_5_4=%q lua5.4 bin/procman %s 2>%s",
                                       input and ("printf '" .. input .. "' | ") or "",
                                       path, cpath, args, err))
    local stderr = read(err)
    os.remove(err)
    return out, code, stderr
  end

  local function one_line(stderr, says)
    assert.matches("^[^\n]+\n$", stderr)
    assert.matches(says, stderr, 1, true)
    assert.not_matches("traceback", stderr, 1, true)
  end

  it("argparse: the command says how to install it", function()
    local _, code, stderr = procman_cmd("--version", lib_path, core .. "/?.so")
    assert.equal("1", code)
    one_line(stderr, "luarocks install argparse (Debian: apt-get install lua-argparse)")
  end)

  it("lua-cjson: run says how to install it, and creates nothing; inspect needs no JSON library", function()
    local fresh = os.tmpname()
    os.remove(fresh)
    local _, code, stderr = procman_cmd("run batch --journal " .. fresh, lua_path, core .. "/?.so",
                                        '{"event_type":"batch_created","batch_id":"b2","files":["x"]}\\n')
    assert.equal("1", code)
    one_line(stderr, "procman run: reading JSON needs lua-cjson: luarocks install lua-cjson")
    assert.is_nil(io.open(fresh))
    local out
    out, code, stderr = procman_cmd("inspect " .. journal, lua_path, core .. "/?.so")
    assert.equal("0", code)
    assert.equal("", stderr)
    assert.matches("batch        live 1 (created 1)", out, 1, true)
    out, code = procman_cmd("inspect --json " .. journal, lua_path, core .. "/?.so")
    assert.equal("0", code)
    assert.matches('"pending":1', out, 1, true)
  end)

  it("procman's own modules: one line naming the paths to set", function()
    local _, code, stderr = procman_cmd("--version", "/nonexistent/?.lua", "/nonexistent/?.so")
    assert.equal("1", code)
    one_line(stderr, "module 'procman.cli' not found: is the rock's tree on LUA_PATH_5_4 and LUA_CPATH_5_4?")
  end)

  it("procman.lineedit: the REPL on a terminal says so once and reads plain lines", function()
    if not os.execute("command -v script >/dev/null 2>&1") then
      pending("needs script(1) (util-linux) for a terminal")
      return
    end
    local out, code = sh(string.format("printf '1+1\\n' | LUA_PATH_5_4=%q LUA_CPATH_5_4=%q "
                                       .. "script -qec 'lua5.4 bin/procman repl' /dev/null", lua_path,
                                       core .. "/?.so"))
    assert.equal("0", code)
    out = out:gsub("\r", "")
    assert.matches("procman: no line editing (procman.lineedit is not installed): for history and Tab "
                   .. "completion, luarocks --lua-version=5.4 make procman-lineedit-*.rockspec", out, 1, true)
    -- The terminal echoes the typed-ahead 1+1 when it arrives: before the
    -- prompt (then "> 2") or, on a busy machine, after it ("> 1+1", "2").
    assert.is_truthy(out:find("\n> 2\n", 1, true) or out:find("> 1+1\n2\n", 1, true), out)
  end)
end)
