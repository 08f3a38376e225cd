-- The procman rock, built the README's way into a tree of its own on a
-- machine without libedit's headers: it builds (line editing is the rock
-- procman-lineedit), and its REPL runs, reading plain lines. The headers
-- are hidden, not uninstalled: the compiler gets a sysroot whose
-- usr/include has every entry of /usr/include but libedit's.
local function sh(script)
  local p = assert(io.popen("(\n" .. script .. "\n) 2>&1\necho \"exit=$?\"", "r"))
  local out = p:read("a")
  p:close()
  return out:match("^(.-)exit=(%d+)%s*$")
end

local function readme_install_block()
  local text = require("spec.support.files").bytes("README.md")
  return assert(text:match("\n## Install with LuaRocks\n.-```sh\n(.-)```"))
end

describe("the procman rock without libedit's headers", function()
  local dir = sh("mktemp -d /tmp/procman-rock-spec.XXXXXX"):match("%S+")
  local sysroot, tree = dir .. "/sysroot", dir .. "/tree"
  teardown(function() os.execute("rm -rf " .. dir) end)

  setup(function()
    assert.equal("0", select(2, sh(string.format([[
      mkdir -p %s/usr/include
      for entry in /usr/include/*; do
        case "${entry##*/}" in histedit.h|editline) ;; *) ln -s "$entry" %s/usr/include/ ;; esac
      done
      ln -s /usr/lib %s/usr/lib; ln -s /lib %s/lib; ln -s /lib64 %s/lib64]],
      sysroot, sysroot, sysroot, sysroot, sysroot))))
  end)

  it("hides histedit.h from the compiler (so the build below is without it)", function()
    local out, code = sh(string.format("cc --sysroot=%s -fsyntax-only -I/usr/include/lua5.4 csrc/lineedit.c",
                                       sysroot))
    assert.equal("1", code)
    assert.matches("histedit.h: No such file or directory", out, 1, true)
  end)

  it("builds as the README says, and the REPL runs, plainly, on a terminal too", function()
    local config = dir .. "/luarocks-config.lua"
    local f = assert(io.open(config, "w"))
    f:write(string.format([[
      deps_mode = "none"  -- argparse and lua-cjson are Debian's here: no rock server
      variables = { CFLAGS = "-O2 -fPIC --sysroot=%s", LIBFLAG = "-shared --sysroot=%s" }
    ]], sysroot, sysroot))
    f:close()
    local install = ("\n" .. readme_install_block())
      :gsub("\ntree=[^\n]*", "\ntree=" .. tree)
      :gsub("\n[^\n]*# optional[^\n]*", "")  -- the optional rocks: this tree goes without
    local out, code = sh(table.concat({
      "unset LUA_PATH LUA_CPATH LUA_PATH_5_4 LUA_CPATH_5_4  # a user's shell, not make's",
      "export LUAROCKS_CONFIG=" .. config,
      "set -e",
      install,
      "cd " .. dir .. "  # not the checkout, where luarocks left its build (./?.so is on the default path)",
      "echo '== piped'",
      "printf '1+1\\n' | procman repl",
      "echo '== terminal'",
      "printf '2+2\\n' | script -qec 'procman repl' /dev/null | tr -d '\\r'",
      "echo '== where'",
      "lua5.4 -e 'print(package.searchpath(\"procman.core\", package.cpath))'",
      "echo '== busted'",
      "busted --version",
    }, "\n"))
    assert.equal("0", code, out)
    assert.matches("procman 0.1.0-1 is now installed in " .. tree, out, 1, true)
    for compile in out:gmatch("\ngcc [^\n]* %-c [^\n]*") do  -- no way around the sysroot to the headers
      assert.matches("--sysroot=" .. sysroot, compile, 1, true)
      assert.not_matches("-I/usr/include ", compile .. " ", 1, true)
    end
    assert.matches("\nprocman 0.1.0\n== piped\n> 1+1\n2\n> \n== terminal\n", out, 1, true)
    assert.matches("\nprocman: no line editing (procman.lineedit is not installed): for history and Tab "
                   .. "completion, luarocks --lua-version=5.4 make procman-lineedit-*.rockspec", out, 1, true)
    assert.matches("\n> 4\n", out, 1, true)
    assert.matches("== where\n" .. tree .. "/lib/lua/5.4/procman/core.so\n", out, 1, true)
    assert.matches("== busted\n%d+%.%d+%.%d+\n$", out)  -- Debian's busted (Lua 5.1) is not disturbed
  end)
end)
