--- make bench: procman's batch process manager against plain-Lua baselines
-- (bench/baseline.lua), in the same run, each measurement in a process of
-- its own (bench/case.lua), best of RUNS. Prints tables with ratios and
-- says which targets are met.
local RUNS = tonumber(os.getenv("BENCH_RUNS")) or 3
local SEED_MAX = tonumber(os.getenv("BENCH_SEED_MAX")) or 10000  -- O(n^2): 100k would take hours
local SIZES = { 1000, 10000, 100000, 1000000 }
local FLOWS = tonumber(os.getenv("BENCH_FLOWS")) or 100000

local function measure(impl, case, n)
  local best
  for _ = 1, RUNS do
    -- the seed's O(n^2) batch runs once: noise is nothing next to its cost
    local cmd = string.format("%s%s bench/case.lua %s %s %d", impl == "seed" and "BENCH_REPS=1 " or "",
                              arg[-1] or "lua5.4", impl, case, n)
    local p = assert(io.popen(cmd))
    local line = p:read("a")
    assert(p:close(), "benchmark failed: " .. cmd)
    local r = {}
    for k, v in line:gmatch("(%w[%w_]*)=([%d%.]+)") do r[k] = tonumber(v) end
    if best == nil then
      best = r
    else  -- keep the best of each figure
      for k, v in pairs(r) do
        if k == "events_per_s" then best[k] = math.max(best[k], v) else best[k] = math.min(best[k], v) end
      end
    end
  end
  return best
end

local function fmt(v, pattern) return v and string.format(pattern, v) or "-" end
local function ratio(a, b) return (a and b) and string.format("%.2fx", a / b) or "-" end

local verdicts = {}
local function target(ok, text)
  verdicts[#verdicts + 1] = string.format("  [%s] %s", ok and "met" or "MISSED", text)
end

print(string.format("procman bench: %s, best of %d runs, %s", _VERSION, RUNS, os.date("!%Y-%m-%d %H:%M UTC")))
print()

-- The engine's figures (issue 11), each the median of RUNS processes, as
-- ratios to the plain hand-written Lua router in the same run.
local ENGINE_FLOWS = tonumber(os.getenv("BENCH_ENGINE_FLOWS")) or 20000
local ENGINE_GROWTH = tonumber(os.getenv("BENCH_GROWTH_EVENTS")) or 100000

local function median_of(run_once, key)
  local runs = {}
  for i = 1, RUNS do runs[i] = run_once() end
  table.sort(runs, function(a, b) return a[key] < b[key] end)
  return runs[(#runs + 1) // 2]
end

local function case_line(script, ...)
  local cmd = string.format("%s bench/%s %s", arg[-1] or "lua5.4", script, table.concat({ ... }, " "))
  local p = assert(io.popen(cmd))
  local line = p:read("a")
  assert(p:close(), "benchmark failed: " .. cmd)
  local r = {}
  for k, v in line:gmatch("(%w[%w_]*)=(-?[%d%.]+)") do r[k] = tonumber(v) end
  return r
end

local function engine_figures()
  local journal = os.tmpname() .. ".pmj"
  local events = 4 * ENGINE_FLOWS
  local function router(case, n, key)
    return median_of(function() return case_line("router_case.lua", case, n or events, journal) end,
                     key or "events_per_s")
  end
  local function pm_case(impl, case, n, key)
    return median_of(function() return case_line("case.lua", impl, case, n) end, key)
  end
  local plain = router("plain")
  local memory, batch100 = router("memory"), router("batch100")
  local none = router("none", nil, "cpu_events_per_s")
  local recovery = router("recover-live")
  local plain_1m = pm_case("counters", "batch", 1000000, "us_per_event")
  local pm_1m = pm_case("procman", "batch", 1000000, "us_per_event")
  local growth = {}
  for _, c in ipairs { "growth-pm", "growth-memory", "growth-journal" } do
    growth[c] = router(c, ENGINE_GROWTH, "bytes_per_event").bytes_per_event
  end
  local live = router("live", 100000, "bytes_per_flow")
  local live_plain = router("live-plain", 100000, "bytes_per_flow")
  os.remove(journal)

  local ROW = "| %-44s | %12s | %9s | %-22s | %-6s |"
  local rows = {}
  local function row(what, value, unit, vs, goal, ok)
    rows[#rows + 1] = string.format(ROW, what, value .. unit, vs, goal, ok and "met" or "MISSED")
  end
  local function per_s(r) return string.format("%.0f", r.events_per_s) end
  local function x(a) return string.format("%.3fx", a) end
  print(string.format("Engine figures (issue 11): %d flows x 4 events, median of %d runs, "
                      .. "ratios to plain Lua", ENGINE_FLOWS, RUNS))
  print()
  print(string.format(ROW, "figure", "value", "ratio", "target", "status"))
  print("|" .. string.rep("-", 46) .. "|" .. string.rep("-", 14) .. "|" .. string.rep("-", 11) .. "|"
        .. string.rep("-", 24) .. "|" .. string.rep("-", 8) .. "|")
  rows[#rows + 1] = string.format(ROW, "plain Lua router (baseline)", per_s(plain) .. "/s", "1.000x", "", "")
  local p = plain.events_per_s
  row("router, in memory (vs plain)", per_s(memory), "/s", x(memory.events_per_s / p), ">= 0.3x plain",
      memory.events_per_s >= 0.3 * p)
  -- CPU time against plain's CPU time; the batch row compares wall times (fsync waits)
  row("router, journal, sync none, CPU (vs plain)", string.format("%.0f", none.cpu_events_per_s), "/s",
      x(none.cpu_events_per_s / p), ">= 0.25x plain", none.cpu_events_per_s >= 0.25 * p)
  row("sync batch, flush/100, wall (vs none, wall)", per_s(batch100), "/s",
      x(batch100.events_per_s / none.events_per_s), ">= 0.5x sync none",
      batch100.events_per_s >= 0.5 * none.events_per_s)
  row("recovery (vs its live journaled run)", per_s(recovery), "/s",
      x(recovery.events_per_s / recovery.live_events_per_s), ">= 2x live",
      recovery.events_per_s >= 2 * recovery.live_events_per_s)
  row("pm:handle at 1,000,000 files (us/event)", string.format("%.3f", pm_1m.us_per_event), " us",
      x(pm_1m.us_per_event / plain_1m.us_per_event), "<= 2x plain",
      pm_1m.us_per_event <= 2 * plain_1m.us_per_event)
  for _, c in ipairs { { "growth-pm", "standalone pm" }, { "growth-memory", "router in memory" },
                       { "growth-journal", "router with journal" } } do
    local b = growth[c[1]]
    row(string.format("heap growth per event, %s", c[2]), string.format("%.2f", b), " B", "-",
        "<= 4 B/event", b <= 4)
  end
  row("bytes per live flow (100,000 flows)", string.format("%.0f", live.bytes_per_flow), " B",
      x(live.bytes_per_flow / live_plain.bytes_per_flow), "<= 1.5x plain",
      live.bytes_per_flow <= 1.5 * live_plain.bytes_per_flow)
  print(table.concat(rows, "\n"))
  print(string.format("(plain: %.0f B per live flow, %.3f us per event at 1,000,000 files; "
                      .. "heap growth over %d events of one flow, id-less events, constant-size state)",
                      live_plain.bytes_per_flow, plain_1m.us_per_event, ENGINE_GROWTH))
  print()
end

engine_figures()
if os.getenv("BENCH_ONLY") == "engine" then return end
print("One batch of N files: batch_created + N file_processed (each with an event_id), us per event;")
print("peak RSS of the process. seed = the seed's O(n) rescan, plain = O(1) counters, both plain Lua.")
print()
print(string.format("| %9s | %10s | %10s | %10s | %13s | %12s | %12s | %13s |",
  "N", "seed us", "plain us", "procman us", "procman/plain", "plain MB", "procman MB", "procman/plain"))
print("|" .. string.rep("-", 11) .. "|" .. string.rep("-", 12) .. "|" .. string.rep("-", 12) .. "|"
  .. string.rep("-", 12) .. "|" .. string.rep("-", 15) .. "|" .. string.rep("-", 14) .. "|"
  .. string.rep("-", 14) .. "|" .. string.rep("-", 15) .. "|")
local per_event = {}
for _, n in ipairs(SIZES) do
  local seed = n <= SEED_MAX and measure("seed", "batch", n) or nil
  local plain = measure("counters", "batch", n)
  local pm = measure("procman", "batch", n)
  per_event[n] = { plain = plain.us_per_event, procman = pm.us_per_event }
  print(string.format("| %9d | %10s | %10.3f | %10.3f | %13s | %12.1f | %12.1f | %13s |",
    n, fmt(seed and seed.us_per_event, "%.3f"), plain.us_per_event, pm.us_per_event,
    ratio(pm.us_per_event, plain.us_per_event), plain.peak_kb / 1024, pm.peak_kb / 1024,
    ratio(pm.peak_kb, plain.peak_kb)))
end
print()
print(string.format("%d flows of 3 files, 4 events each, all kept alive:", FLOWS))
print()
local plain = measure("counters", "flows", FLOWS)
local pm = measure("procman", "flows", FLOWS)
print("| impl    | events/s | bytes/flow |")
print("|---------|----------|------------|")
print(string.format("| plain   | %8.0f | %10.0f |", plain.events_per_s, plain.bytes_per_flow))
print(string.format("| procman | %8.0f | %10.0f |", pm.events_per_s, pm.bytes_per_flow))
print(string.format("| ratio   | %8s | %10s |", ratio(plain.events_per_s, pm.events_per_s) .. " slower",
                    ratio(pm.bytes_per_flow, plain.bytes_per_flow)))
print()

-- Instructions, counted by callgrind: repeatable whatever else the machine
-- is doing, unlike the clock. One batch of N and one of 2N events, run
-- once each: the difference over N is the cost of one more event, with
-- start-up and teardown cancelled out.
local function instructions(impl, n)
  local out = os.tmpname()
  local cmd = string.format("BENCH_REPS=1 valgrind --tool=callgrind --callgrind-out-file=%s %s "
                            .. "bench/case.lua %s batch %d 2>&1", out, arg[-1] or "lua5.4", impl, n)
  local p = assert(io.popen(cmd))
  local text = p:read("a")
  p:close()
  os.remove(out)
  local count = text:match("I%s+refs:%s+([%d,]+)")
  return count and tonumber((count:gsub(",", "")))
end

if os.getenv("BENCH_INSTRUCTIONS") ~= "0" and os.execute("command -v valgrind >/dev/null 2>&1") then
  local n = 20000
  local counts = {}
  for _, impl in ipairs({ "counters", "procman", "procman-nobudget" }) do
    local one, two = instructions(impl, n), instructions(impl, 2 * n)
    counts[impl] = one and two and (two - one) / n
  end
  print(string.format("Instructions per file_processed event (callgrind, batch of %d vs %d files):",
                      n, 2 * n))
  print()
  print("| impl                    | instructions/event | vs plain |")
  print("|-------------------------|--------------------|----------|")
  for _, row in ipairs { { "plain", "counters" }, { "procman", "procman" },
                         { "procman, budget off", "procman-nobudget" } } do
    print(string.format("| %-23s | %18s | %8s |", row[1], fmt(counts[row[2]], "%.0f"),
                        ratio(counts[row[2]], counts.counters)))
  end
  print()
end

-- The router: throughput in memory and at each sync level, recovery,
-- compaction, bytes per live flow; plain Lua (a table of batch states)
-- side by side.
local ROUTER_EVENTS = tonumber(os.getenv("BENCH_ROUTER_EVENTS")) or 200000
local RECOVER_EVENTS = tonumber(os.getenv("BENCH_RECOVER_EVENTS")) or 1000000
local ALWAYS_EVENTS = tonumber(os.getenv("BENCH_ALWAYS_EVENTS")) or 2000
local journal_path = os.tmpname() .. ".pmj"

local function router_measure(case, n, runs)
  local best
  for _ = 1, runs or RUNS do
    local cmd = string.format("%s bench/router_case.lua %s %d %s", arg[-1] or "lua5.4",
                              case, n, journal_path)
    local p = assert(io.popen(cmd))
    local line = p:read("a")
    assert(p:close(), "benchmark failed: " .. cmd)
    local r = {}
    for k, v in line:gmatch("(%w[%w_]*)=([%d%.]+)") do r[k] = tonumber(v) end
    if best == nil or (r.events_per_s or 0) > (best.events_per_s or 0) then best = r end
  end
  return best
end

print(string.format("The router: flows of 3 files, 4 events each (%d events; sync always: %d; recovery: %d)",
                    ROUTER_EVENTS, ALWAYS_EVENTS, RECOVER_EVENTS))
print()
print("| run                         |   events/s | vs in-memory router |")
print("|-----------------------------|------------|---------------------|")
local plain_r = router_measure("plain", ROUTER_EVENTS)
local memory = router_measure("memory", ROUTER_EVENTS)
local rows = {
  { "plain Lua (baseline)", plain_r },
  { "router, in memory", memory },
  { "router, journal, sync none", router_measure("none", ROUTER_EVENTS) },
  { "router, journal, sync batch", router_measure("batch", ROUTER_EVENTS) },
  { "router, journal, sync always", router_measure("always", ALWAYS_EVENTS) },
}
rows[#rows + 1] = { "router, budget off", router_measure("no-budget", ROUTER_EVENTS) }
rows[#rows + 1] = { "router, file timeouts", router_measure("timeouts", ROUTER_EVENTS) }
rows[#rows + 1] = { "r:tick firing timeouts", router_measure("tick", ROUTER_EVENTS) }
local recovery = router_measure("recover", RECOVER_EVENTS, 1)
rows[#rows + 1] = { "recovery (replay) of journal", recovery }
for _, row in ipairs(rows) do
  print(string.format("| %-27s | %10.0f | %19s |", row[1], row[2].events_per_s,
                      ratio(row[2].events_per_s, memory.events_per_s)))
end
print()
print(string.format("Recovery of %d events: %.0f events/s; the in-memory router on the same events: "
                    .. "%.0f events/s (%s).", RECOVER_EVENTS, recovery.events_per_s,
                    recovery.memory_events_per_s, ratio(recovery.events_per_s, recovery.memory_events_per_s)))
print(string.format("Journal of %d events: %.1f MB; compaction %.2f s, to %.1f MB.",
                    RECOVER_EVENTS, recovery.journal_mb, recovery.compact_s, recovery.compacted_mb))
local idle = router_measure("idle-tick", ROUTER_EVENTS, 1)
print(string.format("r:tick with nothing due, %d timers waiting: %.2f us a tick (%s the time of one "
                    .. "event through the in-memory router)", idle.timers, idle.us_per_tick,
                    ratio(idle.us_per_tick, 1e6 / memory.events_per_s)))
local live = router_measure("live", 100000, 1)
local live_plain = router_measure("live-plain", 100000, 1)
print(string.format("Bytes per live flow (100,000 flows, outbox dispatched): router %.0f, plain %.0f: %s",
                    live.bytes_per_flow, live_plain.bytes_per_flow,
                    ratio(live.bytes_per_flow, live_plain.bytes_per_flow)))
print()
local none = rows[3][2]
target(none.events_per_s >= 0.5 * memory.events_per_s, string.format(
  "router with a journal, sync none, at least half the in-memory throughput: %.2fx",
  none.events_per_s / memory.events_per_s))
target(recovery.events_per_s >= 0.8 * recovery.memory_events_per_s, string.format(
  "recovery at least 0.8x the in-memory handle throughput (same %d events): %.2fx",
  RECOVER_EVENTS, recovery.events_per_s / recovery.memory_events_per_s))
target(live.bytes_per_flow <= 2 * live_plain.bytes_per_flow, string.format(
  "bytes per live flow within 2x of plain: %.2fx", live.bytes_per_flow / live_plain.bytes_per_flow))

local big, small = per_event[1000000], per_event[10000]
if big and small then
  target(big.procman <= 2 * big.plain, string.format(
    "us/event at N=1M within 2x of plain O(1): %.2fx", big.procman / big.plain))
  target(big.procman <= 1.5 * small.procman, string.format(
    "us/event at N=1M within 1.5x of N=10k (linear): %.2fx (plain: %.2fx)",
    big.procman / small.procman, big.plain / small.plain))
end
target(pm.bytes_per_flow <= 2 * plain.bytes_per_flow, string.format(
  "bytes per flow within 2x of plain: %.2fx", pm.bytes_per_flow / plain.bytes_per_flow))
print("Targets:")
print(table.concat(verdicts, "\n"))
