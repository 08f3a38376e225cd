--- One benchmark measurement, in a process of its own so that its peak
-- memory is its own. Usage: lua5.4 bench/case.lua IMPL CASE N
--   IMPL: seed | counters | procman | procman-nobudget (the instruction budget off)
--   CASE: batch | flows
-- Prints one line: key=value pairs.
local impl_name, case, n = arg[1], arg[2], tonumber(arg[3])

local impl
if impl_name == "procman" or impl_name == "procman-nobudget" then
  local batch = require "procman.workflows.batch"
  if impl_name == "procman-nobudget" then
    batch = require("procman").workflow { name = "batch", on = batch.on, init = batch.init,
                                          correlate = batch.correlate, starts = batch.starts,
                                          done = batch.done, view = batch.view, budget = false }
  end
  impl = {
    new = function(id) return batch:new(id) end,
    handle = function(pm, event) return pm:handle(event) end,
  }
else
  local baseline = require "baseline"
  impl = baseline[impl_name] or error("no implementation " .. tostring(impl_name))
  local handle = impl.handle
  impl = { new = impl.new, handle = function(state, event) return handle(state, event) end }
end

local function peak_rss_kb()
  local f = io.open("/proc/self/status")
  if not f then return 0 end
  local kb = f:read("a"):match("VmHWM:%s*(%d+)")
  f:close()
  return tonumber(kb) or 0
end

local clock = os.clock

-- One batch of n files: batch_created, then n file_processed events, each
-- with an event_id (so procman's dedup is on) and built inside the loop.
-- Small batches are repeated (fresh flows) until some 200k events have
-- run, and the fastest repetition counts: the least disturbed by the rest
-- of the machine.
local function one_batch(names)
  local t0 = clock()
  local flow = impl.new("batch1")
  assert(#impl.handle(flow, { event_type = "batch_created", event_id = 0, files = names }) == n)
  local handle = impl.handle
  for i = 1, n do
    handle(flow, { event_type = "file_processed", event_id = i,
                   file = { id = names[i], status = "success" } })
  end
  return clock() - t0
end

local function batch_case()
  local names = {}
  for i = 1, n do names[i] = "f" .. i end
  local best = math.huge
  local reps = tonumber(os.getenv("BENCH_REPS")) or math.max(1, 200000 // n)
  for _ = 1, reps do
    collectgarbage()
    best = math.min(best, one_batch(names))
  end
  return string.format("us_per_event=%.4f peak_kb=%d", best * 1e6 / (n + 1), peak_rss_kb())
end

-- n flows of 3 files, 4 events each, all kept alive to weigh them.
local function flows_case()
  local files = { "a", "b", "c" }
  local flows = {}
  collectgarbage()
  collectgarbage()
  local before = collectgarbage("count")
  local t0 = clock()
  for i = 1, n do
    local flow = impl.new(i)
    impl.handle(flow, { event_type = "batch_created", event_id = 1, files = files })
    for j = 1, 3 do
      impl.handle(flow, { event_type = "file_processed", event_id = j + 1,
                          file = { id = files[j], status = "success" } })
    end
    flows[i] = flow
  end
  local elapsed = clock() - t0
  collectgarbage()
  collectgarbage()
  local bytes = (collectgarbage("count") - before) * 1024 / n
  assert(#flows == n)  -- kept alive until weighed
  return string.format("events_per_s=%.0f bytes_per_flow=%.0f peak_kb=%d",
                       4 * n / elapsed, bytes, peak_rss_kb())
end

local cases = { batch = batch_case, flows = flows_case }
print((cases[case] or error("no case " .. tostring(case)))())
