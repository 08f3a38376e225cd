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
  local function can_run()
    if has_lineedit and has_script then return true end
    pending("needs procman.lineedit (libedit) and script(1) (util-linux)")
  end

  it("a Ctrl-C that comes while the editor is busy drops that line only, not the next one", function()
    if not can_run() then return end
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

  it("leaves SIGINT unblocked after each read: a line, a completion that raises, an interrupt, the end", function()
    if not can_run() then return end
    -- the reader blocks SIGINT while libedit works: whatever ends a read,
    -- the mask must be as it was (SigBlk: bit 1 is SIGINT)
    local out = on_terminal([[
      local lineedit = require "procman.lineedit"
      local pid = io.open("/proc/self/stat"):read("n")
      local tabs = 0
      local editor = assert(lineedit.new { complete = function()
        tabs = tabs + 1
        if tabs == 1 then error("completion fails") end
        io.popen("kill -INT " .. pid):close()
        return {}
      end })
      local function blocked()
        local status = io.open("/proc/self/status"):read("a")
        local mask = tonumber(status:match("SigBlk:%s*(%x+)"), 16)
        return mask & 2 ~= 0
      end
      local got = {}
      for i = 1, 4 do
        local line = editor:read("> ")
        got[i] = tostring(line) .. (blocked() and "/BLOCKED" or "/ok")
      end
      io.write("\ngot=", table.concat(got, ","), "\n")
    ]], "one\\r tw\\to\\r three\\t\\r")
    -- (the last read ends with the input: what it returns is not the point)
    assert.matches("\ngot=one/ok, two/ok,false/ok,[^,\n]*/ok\n", out)
  end)

  it("a completion that returns what is not a list of strings, or raises, beeps and reading goes on", function()
    if not can_run() then return end
    local out = on_terminal([[
      local lineedit = require "procman.lineedit"
      local answers = { { "abc", {} }, { 1, 2 }, "abc", false }
      local tabs = 0
      local editor = assert(lineedit.new { complete = function()
        tabs = tabs + 1
        if tabs > #answers then error("completion fails") end
        return answers[tabs]
      end })
      local line = editor:read("> ")
      io.write("\nline=", tostring(line), " tabs=", tabs, "\n")
    ]], "ab\\t\\t\\t\\t\\tc\\r")
    assert.matches("\nline=abc tabs=5\n", out, 1, true)
  end)
end)
