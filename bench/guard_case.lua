--- One measurement of the per-event overheads, in a process of its own:
-- a guarded call into workflow code and the event's copy+encode, each
-- side by side with what plain Lua does for it.
-- Usage: lua5.4 bench/guard_case.lua CASE N
--   pcall         plain pcall of a tiny handler (the baseline of a guarded call)
--   guard         the same handler made by core.guard (workflow defaults:
--                 100M instructions, 512 MiB), called N times
--   nested        a guarded call inside a guarded call, N times
--   done          pm:done() of a flow whose workflow has a done function (guarded
--                 with the defaults: the router asks it after every event)
--   copy-plain    plain Lua deep copy of a router event (the baseline of a copy)
--   copy          procman.copy of the same event
--   encode        procman.encode of the same event
--   encode-copy   the bytes and the copy in one pass (what pm:handle does)
-- Prints ns_per_op=... (CPU time, os.clock).
local core = require "procman.core"
local procman = require "procman"

local case, n = arg[1], tonumber(arg[2])

local function handler(state, event)  -- about as much as a small handler does
  state.count = state.count + 1
  state.last = event.event_id
end

local BUDGET, MEMORY = 100000000, 512 * 1024 * 1024
local guarded = core.guard(handler, BUDGET, MEMORY, 0)
local outer = core.guard(function(state, event) return guarded(state, event) end, BUDGET, MEMORY, 0)

-- A file_processed event of bench/router_case.lua, made once.
local EVENT = { event_type = "file_processed", batch_id = 17, event_id = 42,
                file = { id = "b", status = "success" } }

local function deep_copy(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in next, v do t[k] = deep_copy(x) end
  return t
end

local cases = {}

function cases.pcall()
  local state = { count = 0 }
  for _ = 1, n do assert(pcall(handler, state, EVENT)) end
end

function cases.guard()
  local state = { count = 0 }
  for _ = 1, n do guarded(state, EVENT) end
end

function cases.nested()
  local state = { count = 0 }
  for _ = 1, n do outer(state, EVENT) end
end

function cases.done()
  local wf = procman.workflow { name = "w", on = { go = function() end },
                                done = function(state) return state.n == 0 end }
  local pm = wf:new(1)
  for _ = 1, n do pm:done() end
end

cases["copy-plain"] = function()
  for _ = 1, n do deep_copy(EVENT) end
end

function cases.copy()
  local copy = procman.copy
  for _ = 1, n do copy(EVENT) end
end

function cases.encode()
  local encode = procman.encode
  for _ = 1, n do encode(EVENT) end
end

cases["encode-copy"] = function()
  local encode_copy = core.encode_copy
  for _ = 1, n do encode_copy(EVENT) end
end

local run = cases[case] or error("no case " .. tostring(case))
collectgarbage()
local t0 = os.clock()
run()
print(string.format("ns_per_op=%.1f", (os.clock() - t0) * 1e9 / n))
