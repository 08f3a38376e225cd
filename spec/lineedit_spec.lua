-- procman.lineedit on a real terminal (script(1) gives the REPL's reader a
-- pseudo-terminal): what Ctrl-C does to the line being typed and to the
-- keys typed after it.

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  return (out:gsub("\r", ""))
end

-- Run 'script_text' (Lua) on a terminal whose keys, typed ahead, are
-- 'keys' (printf's escapes: \t, \r). At their end the terminal sends ^D.
local function on_terminal(script_text, keys)
  local file = os.tmpname()
  local f = assert(io.open(file, "w"))
  f:write(script_text)
  f:close()
  local out = sh(string.format("printf '%s' | TERM=xterm LUA_PATH_5_4=%q LUA_CPATH_5_4=%q "
                               .. "script -qec 'lua5.4 %s' /dev/null", keys, package.path, package.cpath,
                               file))
  os.remove(file)
  return out
end

describe("procman.lineedit", function()
  local has_lineedit = pcall(require, "procman.lineedit")
  local has_script = os.execute("command -v script >/dev/null 2>&1")

  it("a Ctrl-C that comes while the editor is busy drops that line only, not the next one", function()
    if not (has_lineedit and has_script) then
      pending("needs procman.lineedit (libedit) and script(1) (util-linux)")
      return
    end
    -- Tab runs the completion, which sends this process SIGINT: the Ctrl-C
    -- arrives while libedit is completing, not while it waits for a key,
    -- and the next line has already been typed.
    local out = on_terminal([[
      local lineedit = require "procman.lineedit"
      local pid = io.open("/proc/self/stat"):read("n")
      local editor = assert(lineedit.new { complete = function()
        io.popen("kill -INT " .. pid):close()
        return {}
      end })
      local first = editor:read("> ")
      local second = editor:read("> ")
      io.write("\nfirst=", tostring(first), " second=", tostring(second), "\n")
    ]], "half a line\\t40 + 2\\r")
    assert.matches("\nfirst=false second=40 + 2\n", out, 1, true)
  end)

end)
