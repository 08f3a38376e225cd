--- One router measurement, in a process of its own.
-- Usage: lua5.4 bench/router_case.lua CASE N [JOURNAL]
--   plain              plain Lua: a table of batch states by id (baseline)
--   memory             procman.router without a journal
--   none|batch|always  procman.router journaled with that sync level
--   recover            write N events (sync none), then time reopening
--   live               N live flows kept: bytes per flow (plain: CASE live-plain)
--   no-budget          as memory, with the batch workflow's instruction budget off
--   sandboxed          as memory, the batch workflow loaded in the sandbox (procman.load)
--   timeouts           as memory, each batch with file_timeout (a timer per file,
--                      cancelled by its result)
--   tick               N/4 flows whose 3 files all time out: time r:tick firing them
--   idle-tick          N/4 flows waiting on 3 timers each: time r:tick with none due
--   batch100           journaled, sync batch, r:flush() every 100 events
--   recover-live       as recover, also timing the journaled live run (sync none)
--   growth-pm          one long-lived procman.pm, N id-less events on a constant-size
--                      state: heap growth per event (growth-memory, growth-journal:
--                      the same flow in a router, without and with a journal)
-- The workload: flows of 3 files, 4 events each (batch_created, then three
-- file_processed), events carry event ids. Prints key=value pairs.
local procman = require "procman"
local batch = require "procman.workflows.batch"
local baseline = require "baseline"
local weigh_items = require "weigh"

local case, n, journal = arg[1], tonumber(arg[2]), arg[3]
local clock = os.clock
local FILES = { "a", "b", "c" }

-- The i-th event of the workload (i from 1): flow (i-1)//4, step (i-1)%4.
-- With 'timeout', batches ask for a timeout per file.
local function event(i, timeout)
  local flow, step = (i - 1) // 4, (i - 1) % 4
  if step == 0 then
    return { event_type = "batch_created", batch_id = flow, event_id = i, files = FILES,
             file_timeout = timeout }
  end
  return { event_type = "file_processed", batch_id = flow, event_id = i,
           file = { id = FILES[step], status = "success" } }
end

local function wall()  -- fsync waits are not CPU time: measure real time too
  local p = io.popen("date +%s.%N")
  local t = tonumber(p:read("l"))
  p:close()
  return t
end

local function plain_run(count)
  local impl, flows = baseline.counters, {}
  for i = 1, count do
    local e = event(i)
    local state = flows[e.batch_id]
    if state == nil then
      state = impl.new(e.batch_id)
      flows[e.batch_id] = state
    end
    impl.handle(state, e)
    if state.pending == 0 then flows[e.batch_id] = nil end
  end
  return flows
end

local function router_run(r, count, timeout)
  for i = 1, count do assert(r:handle(event(i, timeout))) end
  r:dispatch(function() end)
end

local cases = {}

function cases.plain()
  local t0 = clock()
  plain_run(n)
  return string.format("events_per_s=%.0f", n / (clock() - t0))
end

function cases.memory()
  local r = procman.router { workflows = { batch } }
  local t0 = clock()
  router_run(r, n)
  return string.format("events_per_s=%.0f", n / (clock() - t0))
end

cases["no-budget"] = function()
  local unlimited = procman.workflow { name = "batch", on = batch.on, init = batch.init,
                                       correlate = batch.correlate, starts = batch.starts,
                                       done = batch.done, view = batch.view, budget = false }
  local r = procman.router { workflows = { unlimited } }
  local t0 = clock()
  router_run(r, n)
  return string.format("events_per_s=%.0f", n / (clock() - t0))
end

-- As memory, with the batch workflow loaded from its file in the sandbox
-- (procman.load, as the CLI loads workflows): results copied, errors described.
function cases.sandboxed()
  local path = package.searchpath("procman.workflows.batch", package.path)
  local r = procman.router { workflows = { assert(procman.load(path)) } }
  local t0 = clock()
  router_run(r, n)
  return string.format("events_per_s=%.0f", n / (clock() - t0))
end

function cases.timeouts()
  local r = procman.router { workflows = { batch }, clock = function() return 0 end }
  local t0 = clock()
  router_run(r, n, 60)
  assert(r:stats().timers == 0)
  return string.format("events_per_s=%.0f", n / (clock() - t0))
end

function cases.tick()
  local r = procman.router { workflows = { batch }, clock = function() return 0 end }
  for i = 1, n, 4 do r:handle(event(i, 60)) end
  local timers = r:stats().timers
  local t0 = clock()
  r:tick(60)
  local s = clock() - t0
  assert(r:stats().timers == 0 and r:stats().completed == n // 4)
  return string.format("events_per_s=%.0f", timers / s)
end

cases["idle-tick"] = function()
  local r = procman.router { workflows = { batch }, clock = function() return 0 end }
  for i = 1, n, 4 do r:handle(event(i, 60)) end
  local ticks = 1000
  local t0 = clock()
  for now = 1, ticks do assert(#r:tick(now * 0.01) == 0) end
  local s = clock() - t0
  return string.format("timers=%d us_per_tick=%.3f", r:stats().timers, s / ticks * 1e6)
end

-- Wall time (fsync waits are not CPU time) and CPU time (what the engine
-- costs, less disturbed by the machine's other load), both as events/s.
local function journaled_run(sync, flush_every)
  os.remove(journal)
  local r = assert(procman.router { workflows = { batch }, journal = journal, sync = sync })
  local t0, c0 = wall(), clock()
  for i = 1, n do
    assert(r:handle(event(i)))
    if flush_every and i % flush_every == 0 then assert(r:flush()) end
  end
  r:dispatch(function() end)
  assert(r:close())
  local s, cpu = wall() - t0, clock() - c0
  os.remove(journal)
  return string.format("events_per_s=%.0f cpu_events_per_s=%.0f", n / s, n / cpu)
end

local function journaled(sync) return journaled_run(sync) end
cases.none = function() return journaled("none") end
cases.batch = function() return journaled("batch") end
cases.always = function() return journaled("always") end

-- sync "batch" as it is meant to be used: a flush every 100 events.
function cases.batch100() return journaled_run("batch", 100) end

-- Recovery against the live journaled run that wrote the same journal,
-- both in CPU time (sync none waits for no disk; the machine's other load
-- then disturbs the ratio less).
cases["recover-live"] = function()
  os.remove(journal)
  local r = assert(procman.router { workflows = { batch }, journal = journal, sync = "none" })
  local t0 = clock()
  for i = 1, n do assert(r:handle(event(i))) end  -- leave the outbox pending
  assert(r:close())
  local live_s = clock() - t0
  r = nil  -- luacheck: ignore
  collectgarbage()
  local t1 = clock()
  local again = assert(procman.router { workflows = { batch }, journal = journal })
  local s = clock() - t1
  assert(again:stats().seq == n)
  again:close()
  os.remove(journal)
  return string.format("events_per_s=%.0f live_events_per_s=%.0f", n / s, n / live_s)
end

-- One long-lived flow whose state keeps a constant size: a counter. Its
-- events carry no event_id, so remembered ids do not grow either: what
-- grows is what the flow keeps per event handled.
local counter = procman.workflow {
  name = "counter", correlate = "counter_id", starts = { "tick" },
  init = function() return { n = 0 } end,
  on = { tick = function(state) state.n = (state.n + 1) % 1000 end },
}

local function heap_growth(handle)
  for _ = 1, 1000 do handle() end  -- warm up: first allocations, buffers grown once
  collectgarbage()
  collectgarbage()
  local before = collectgarbage("count")
  for _ = 1, n do handle() end
  collectgarbage()
  collectgarbage()
  return string.format("bytes_per_event=%.2f", (collectgarbage("count") - before) * 1024 / n)
end

cases["growth-pm"] = function()
  local pm = counter:new(1)
  return heap_growth(function() pm:handle { event_type = "tick", counter_id = 1 } end)
end

cases["growth-memory"] = function()
  local r = procman.router { workflows = { counter } }
  return heap_growth(function() r:handle { event_type = "tick", counter_id = 1 } end)
end

cases["growth-journal"] = function()
  os.remove(journal)
  local r = assert(procman.router { workflows = { counter }, journal = journal, sync = "none" })
  local result = heap_growth(function() assert(r:handle { event_type = "tick", counter_id = 1 }) end)
  r:close()
  os.remove(journal)
  return result
end

function cases.recover()
  -- the in-memory router on the same events, to compare like with like
  local m = procman.router { workflows = { batch } }
  local m0 = wall()
  for i = 1, n do m:handle(event(i)) end
  local memory_s = wall() - m0
  m = nil  -- luacheck: ignore
  collectgarbage()
  os.remove(journal)
  local r = assert(procman.router { workflows = { batch }, journal = journal, sync = "none" })
  for i = 1, n do assert(r:handle(event(i))) end  -- leave the outbox pending
  local bytes = r:stats().journal_bytes
  r:close()
  r = nil  -- luacheck: ignore
  collectgarbage()
  local t0 = wall()
  local again = assert(procman.router { workflows = { batch }, journal = journal })
  local s = wall() - t0
  assert(again:stats().seq == n)
  local c0 = wall()
  assert(again:compact())
  local compact_s = wall() - c0
  local compacted = again:stats().journal_bytes
  again:close()
  os.remove(journal)
  return string.format("events_per_s=%.0f memory_events_per_s=%.0f journal_mb=%.1f compact_s=%.3f "
                       .. "compacted_mb=%.1f", n / s, n / memory_s, bytes / 1e6, compact_s, compacted / 1e6)
end

-- n live flows (batch_created only), weighed with the GC's count.
local function weigh(make)
  return string.format("bytes_per_flow=%.0f", weigh_items(n, make))
end

function cases.live()
  return weigh(function()
    local r = procman.router { workflows = { batch } }
    for i = 1, n do r:handle(event(4 * i - 3)) end
    r:dispatch(function() end)  -- weigh the flows, not their pending commands
    return r
  end)
end

cases["live-plain"] = function()
  return weigh(function()
    local flows = {}
    for i = 1, n do
      local e = event(4 * i - 3)
      local state = baseline.counters.new(e.batch_id)
      baseline.counters.handle(state, e)
      flows[e.batch_id] = state
    end
    return flows
  end)
end

print((cases[case] or error("no case " .. tostring(case)))())
