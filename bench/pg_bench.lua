--- procman.pg benchmark: events per second with 1, 2 and 3 workers, append
-- throughput, and the latency from append to command in the outbox; the
-- embedded journal on the same events side by side, in the same run.
--   lua5.4 bench/pg_bench.lua [FLOWS]      (make bench-pg)
-- Starts (and removes) its own throwaway PostgreSQL cluster.
package.path = "lua/?.lua;lua/?/init.lua;pg/lua/?.lua;pg/lua/?/init.lua;./?.lua;" .. package.path
package.cpath = "build/?.so;" .. package.cpath

local procman = require "procman"
local pg = require "procman.pg"
local batch = require "procman.workflows.batch"
local order = require "procman.workflows.order"
local events_of = require "spec.support.pg_workload"

local FLOWS = tonumber(arg[1]) or 6000
local SEED = 11

local function wall()
  local p = io.popen("date +%s.%N")
  local t = tonumber(p:read("l"))
  p:close()
  return t
end

local function workload()
  local list = {}
  for i = 1, FLOWS do
    for _, e in ipairs(events_of(i, SEED)) do list[#list + 1] = e end
  end
  return list
end

local events = workload()

-- The embedded journal on the same events.
local function embedded(sync)
  local path = os.tmpname() .. ".pmj"
  local r = assert(procman.router { workflows = { batch, order }, journal = path, sync = sync })
  local t0 = wall()
  for _, e in ipairs(events) do assert(r:handle(e)) end
  local s = wall() - t0
  r:close()
  os.remove(path)
  return #events / s
end

local dir = io.popen("mktemp -d /tmp/procman-pgbench.XXXXXX"):read("l")
local conninfo = io.popen("sh tools/pg-cluster.sh start " .. dir):read("l")
local conn = assert(pg.connect(conninfo))

local function reset()
  assert(conn:script("DROP TABLE IF EXISTS procman_schema, procman_events, procman_flows, procman_outbox, "
                     .. "procman_timers, procman_checkpoints, procman_dead_letters, procman_config"))
  pg.migrate(conn)
end

local function one(sql, ...) return assert(conn:exec(sql, ...))[1] end

local function spawn(role, ...)
  local p = io.popen(string.format("lua5.4 spec/support/pg_child.lua %s %q %s >/dev/null 2>&1 & echo $!",
                                   role, conninfo, table.concat({ ... }, " ")))
  local pid = p:read("l")
  p:close()
  return pid
end

local function wait_caught_up(partitions)
  local last = one("SELECT max(position) AS p FROM procman_events").p
  while true do
    local row = one("SELECT count(*) AS n, min(position) AS low FROM procman_checkpoints")
    if row.n == partitions and row.low >= last then return end
    os.execute("sleep 0.05")
  end
end

-- Append the whole workload (one producer): appends per second.
local function append_all()
  local t0 = wall()
  for _, e in ipairs(events) do pg.append(conn, e) end
  return #events / (wall() - t0)
end

-- k workers on the appended events: events per second, wall time from the
-- workers' start to the last checkpoint.
local function workers(k, partitions)
  reset()
  local rate_append = append_all()
  local t0 = wall()
  local pids = {}
  for i = 1, k do pids[i] = spawn("worker", partitions) end
  wait_caught_up(partitions)
  local s = wall() - t0
  os.execute("kill -9 " .. table.concat(pids, " ") .. " 2>/dev/null")
  return #events / s, rate_append
end

-- Latency: one worker running; append one event at a time and wait for its
-- first command in the outbox.
local function latency(samples)
  reset()
  local pid = spawn("worker", 8)
  os.execute("sleep 1")
  local times = {}
  for i = 1, samples do
    local t0 = wall()
    local id = "lat" .. i
    pg.append(conn, { event_type = "batch_created", batch_id = id, event_id = id, files = { "f" } })
    while not one("SELECT 1 AS x FROM procman_outbox WHERE command_id = $1", "batch/" .. id .. "/1/1") do end
    times[i] = (wall() - t0) * 1000
  end
  os.execute("kill -9 " .. pid)
  table.sort(times)
  return times[(samples + 1) // 2], times[math.ceil(samples * 0.99)]
end

local cores = io.popen("nproc"):read("l")
print(string.format("procman.pg on this machine (%s cores, PostgreSQL on the same machine, fsync on): "
                    .. "%d flows, %d events", cores, FLOWS, #events))
print()
print("| run                                   |   events/s |")
print("|---------------------------------------|------------|")
local function row(label, rate) print(string.format("| %-37s | %10.0f |", label, rate)) end
row("embedded journal, sync always", embedded("always"))
row("embedded journal, sync none", embedded("none"))
local appended
for k = 1, 3 do
  local rate, append_rate = workers(k, 8)
  appended = appended or append_rate
  row(string.format("PostgreSQL, %d worker%s (8 partitions)", k, k == 1 and "" or "s"), rate)
end
row("PostgreSQL, appends (one producer)", appended)
print()
local median, p99 = latency(200)
print(string.format("Latency from append to its command in the outbox (1 worker, woken by NOTIFY, "
                    .. "idle at most 20 ms, 200 events): median %.1f ms, p99 %.1f ms", median, p99))
conn:close()
os.execute("sh tools/pg-cluster.sh stop " .. dir)
