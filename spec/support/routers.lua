--- Helpers for specs that compare routers.
local assert = require "luassert"

local routers = {}

--- Everything observable about a router, to compare two of them (a flow's
-- history is left out with 'no_history': after compaction it starts at the
-- snapshot).
function routers.snapshot(r, no_history)
  local flows = {}
  for pm in r:flows() do
    flows[tostring(pm)] = { state = pm:state(), version = pm:version(),
                            history = not no_history and pm:history() or nil }
  end
  local s = r:stats()
  return { flows = flows, pending = r:pending(), live = s.live, completed = s.completed,
           seq = s.seq, timers = r:timers(), parked = r:parked(), dead = r:dead_letters() }
end

--- Are two snapshots the same? (deep comparison, as assert.same)
function routers.same(a, b)
  return require("luassert.util").deepcompare(a, b, true)
end

--- r:handle(event) raises an error containing 'message', and changes
-- nothing: flows, outbox, timers, parked flows, journal.
function routers.refuses(r, event, message, level)
  local before = routers.snapshot(r)
  local bytes = r:stats().journal_bytes
  local ok, err = pcall(r.handle, r, event)
  if ok then error("the router accepted the event", level or 2) end
  if not tostring(err):find(message, 1, true) then
    error(string.format("%q does not contain %q", tostring(err), message), level or 2)
  end
  assert.same(before, routers.snapshot(r))
  assert.equal(bytes, r:stats().journal_bytes)
end

--- Run Lua 'source' in a child lua5.4 (with this checkout's paths) that
-- kills itself with SIGKILL at its end: a crash, no close, no flush.
function routers.crash_after(source, ...)
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write('package.path = "lua/?.lua;lua/?/init.lua;cli/lua/?.lua;workflows/lua/?.lua;" .. package.path\n',
          'package.cpath = "build/?.so;" .. package.cpath\n',
          source, '\n',
          'local pid = io.open("/proc/self/stat"):read("n")\n',
          'os.execute("kill -9 " .. pid)\n',
          'error("still alive after SIGKILL")\n')
  f:close()
  local args = {}
  for i, a in ipairs { ... } do args[i] = string.format("%q", a) end
  local ok, how, code = os.execute("exec lua5.4 " .. script .. " " .. table.concat(args, " "))
  os.remove(script)
  -- the shell reports the child's SIGKILL as status 128 + 9
  assert.is_true(not ok and (how == "signal" and code == 9 or how == "exit" and code == 137),
         string.format("the child did not die of SIGKILL: %s %s %s", ok, how, code))
end

return routers
