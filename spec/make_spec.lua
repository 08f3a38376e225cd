-- make test's output: what runs is what is said, and logs stay plain text.
local function run(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  p:close()
  return out
end

describe("make test's output", function()
  it("test-lua leaves PostgreSQL's spec to test-pg, which labels its results", function()
    local busted = run("make -n -s test-lua"):match("\n(busted [^\n]*)")
    assert.is_string(busted)
    local listed = run(busted .. " --list")
    assert.matches("spec/testing_spec.lua", listed, 1, true)
    assert.not_matches("spec/pg_", listed, 1, true)  -- not shown as pending, then run anyway
    assert.matches('echo "== procman.pg', run("make -n -s test-pg"), 1, true)
  end)

  it("uses this checkout's modules even when the shell has LUA_PATH_5_4 (README's install)", function()
    local out = run("LUA_PATH_5_4='/nonexistent/?.lua' LUA_CPATH_5_4='/nonexistent/?.so' make -s demo")
    assert.matches('pm:state()', out, 1, true)
    assert.not_matches("not found", out, 1, true)
  end)

  it("lint writes no colour codes when its output is not a terminal", function()
    local base = os.tmpname()
    local path = base .. ".lua"
    local f = assert(io.open(path, "w"))
    f:write("local unused = 1\n")
    f:close()
    local out = run("make -s lint LINT_PATHS=" .. path)
    os.remove(path)
    os.remove(base)
    assert.matches("unused variable", out, 1, true)
    assert.not_matches("\27[", out, 1, true)
  end)
end)
