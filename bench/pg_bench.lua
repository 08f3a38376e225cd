--- procman.pg benchmark (make bench-pg), side by side in one run:
--   appends/s with 1, 2 and 4 concurrent producers (one event per
--     transaction), and with batch appends (pg.append_all, 100 a call);
--   worker events/s with 1, 2 and 3 workers, and statements (round trips)
--     per event;
--   time for the partitions of a SIGKILLed worker to be handled again, and
--     for a worker to handle events again after a database restart;
--   the embedded journal (sync "always" and "none") on the same events.
--   lua5.4 bench/pg_bench.lua [FLOWS]
-- Starts (and removes) its own throwaway PostgreSQL cluster (fsync on).
package.path = "lua/?.lua;lua/?/init.lua;cli/lua/?.lua;workflows/lua/?.lua;"
  .. "pg/lua/?.lua;pg/lua/?/init.lua;./?.lua;" .. package.path
package.cpath = "build/?.so;" .. package.cpath

local procman = require "procman"
local pg = require "procman.pg"
local db = require "procman.pg.db"
local routes = require "procman.pg.routes"
local batch = require "procman.workflows.batch"
local order = require "procman.workflows.order"
local events_of = require "spec.support.pg_workload"
local helpers = require "spec.support.pg_helpers"

local FLOWS = tonumber(arg[1]) or 2000
local APPENDS = 1000  -- per producer and round
local ROUNDS = 3      -- producers 1, 2, 4, 1, 2, 4, ...: the median of each
local PARTITIONS = 8
local SEED = 11

local function wall()
  local p = io.popen("date +%s.%N")
  local t = tonumber(p:read("l"))
  p:close()
  return t
end

local events = {}
for i = 1, FLOWS do
  for _, e in ipairs(events_of(i, SEED)) do events[#events + 1] = e end
end

local dir = io.popen("mktemp -d /tmp/procman-pgbench.XXXXXX"):read("l")
local conninfo = io.popen("sh tools/pg-cluster.sh start " .. dir):read("l")
helpers.conninfo = conninfo
local conn = assert(pg.connect(conninfo))

local function reset()
  helpers.reset(conn, pg)
  routes.forget(conn)
end

local function one(sql, ...) return assert(conn:exec(sql, ...))[1] end

-- The workflows' routes registered, as workers deployed before the
-- producers leave them: appends store each event's partition.
local function deployed()
  routes.register(conn, (require("procman.workflow").routable { batch, order }), PARTITIONS)
  routes.forget(conn)
end

local function spawn(role, ...)
  local p = io.popen(string.format("lua5.4 spec/support/pg_child.lua %s %q %s >/dev/null "
                                   .. "2>>/tmp/procman-pgbench-children.log & echo $!",
                                   role, conninfo, table.concat({ ... }, " ")))
  local pid = p:read("l")
  p:close()
  return pid
end

local function alive(pid) return os.execute("kill -0 " .. pid .. " 2>/dev/null") end
local function kill(pids) os.execute("kill -9 " .. table.concat(pids, " ") .. " 2>/dev/null") end
local function nap() os.execute("sleep 0.02") end

-- k producers appending APPENDS events each, concurrently: appends/s.
local function producers(k)
  reset()
  local t0, pids = wall(), {}
  for i = 1, k do pids[i] = spawn("numbered", "p" .. i, APPENDS) end
  for _, pid in ipairs(pids) do
    while alive(pid) do nap() end
  end
  local s = wall() - t0
  assert(one("SELECT count(*) AS n FROM procman_events").n == k * APPENDS)
  return k * APPENDS / s
end

local function batch_appends()
  reset()
  local t0 = wall()
  for first = 1, #events, 100 do
    assert(pg.append_all(conn, table.move(events, first, math.min(first + 99, #events), 1, {})))
  end
  return #events / (wall() - t0)
end

local function flows_done()
  return one("SELECT count(*) AS n FROM procman_flows WHERE done").n
end

-- Index entries read on procman_events so far (every backend's, once
-- flushed: a backend flushes its counts at exit, and at most once a second).
local function index_reads()
  assert(conn:exec("SELECT pg_stat_force_next_flush()"))
  os.execute("sleep 2")
  assert(conn:exec("SELECT pg_stat_clear_snapshot()"))
  return one("SELECT coalesce(sum(idx_tup_read), 0)::bigint AS n FROM pg_stat_user_indexes "
             .. "WHERE relname = 'procman_events'").n
end

-- k workers on the appended workload: events/s from their start to the
-- last flow done, and the index entries of the event store they read per
-- event (how much of the stream each worker reads that is not its own).
local function workers(k)
  reset()
  deployed()
  for first = 1, #events, 500 do
    assert(pg.append_all(conn, table.move(events, first, math.min(first + 499, #events), 1, {})))
  end
  local before = index_reads()
  local t0, pids = wall(), {}
  for i = 1, k do pids[i] = spawn("worker", PARTITIONS) end
  while flows_done() < FLOWS do nap() end
  local s = wall() - t0
  kill(pids)
  return #events / s, (index_reads() - before) / #events
end

-- Statements per event of one worker in this process over the workload.
local function statements_per_event()
  reset()
  deployed()
  for first = 1, #events, 500 do
    assert(pg.append_all(conn, table.move(events, first, math.min(first + 499, #events), 1, {})))
  end
  local w = pg.worker { conninfo = conninfo, workflows = { batch, order }, partitions = PARTITIONS }
  local before = db.statements
  while w:step() > 0 do end
  local n = db.statements - before
  w:close()
  return n / #events
end

-- Events into every partition; seconds until each has its command.
local function probe(tag)
  local ids = {}
  for p = 0, PARTITIONS - 1 do
    local i = 0
    repeat i = i + 1 until routes.partition("batch", tag .. i, PARTITIONS) == p
    ids[#ids + 1] = tag .. i
  end
  local list = {}
  for k, id in ipairs(ids) do
    list[k] = { event_type = "batch_created", batch_id = id, event_id = id, files = { "f" } }
  end
  local t0 = wall()
  while true do  -- (through a restart: retry until the database takes them)
    local ok, r = pcall(pg.append_all, conn, list)
    if ok and r then break end
    if not conn:alive() then conn:close(); conn = pg.connect(conninfo) or conn end
    nap()
  end
  local function all_handled()
    for _, id in ipairs(ids) do
      if pg.flow(conn, "batch", id) == nil then return false end
    end
    return true
  end
  while not all_handled() do nap() end
  return wall() - t0
end

-- Two workers; SIGKILL one; seconds until events of every partition are handled again.
local function takeover()
  reset()
  local a, b = spawn("worker", PARTITIONS), spawn("worker", PARTITIONS)
  probe("warm")
  os.execute("sleep 2")  -- shares settle (claims are looked at once a second)
  probe("settled")
  local owners = one("SELECT count(DISTINCT pid) AS n FROM pg_locks WHERE locktype = 'advisory' "
                     .. "AND classid = 5164018 AND granted").n
  kill { a }
  local t0 = wall()
  probe("after-kill")
  local s = wall() - t0
  kill { b }
  return s, owners
end

-- One worker; the database crashes and starts again; seconds from the
-- restart's start until events of every partition are handled again.
local function restart()
  reset()
  local w = spawn("worker", PARTITIONS)
  probe("before")
  conn:close()
  local t0 = wall()
  assert(os.execute("sh tools/pg-cluster.sh restart " .. dir))
  local up = wall() - t0
  conn = assert(pg.connect(conninfo))
  routes.forget(conn)
  probe("after-restart")
  local s = wall() - t0
  kill { w }
  return s, up
end

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

local cores = io.popen("nproc"):read("l")
print(string.format("procman.pg (%s cores shared, PostgreSQL on the same machine, fsync on): %d flows, "
                    .. "%d events; producers append %d events each", cores, FLOWS, #events, APPENDS))
print()
print("| run                                              |     rate | ratio |")
print("|--------------------------------------------------|----------|-------|")
local function row(label, rate, base)
  print(string.format("| %-48s | %6.0f/s | %5.2f |", label, rate, rate / base))
end
local always = embedded("always")
row("embedded journal, sync always (the base)", always, always)
row("embedded journal, sync none", embedded("none"), always)
local rates = { [1] = {}, [2] = {}, [4] = {} }
for _ = 1, ROUNDS do
  for _, k in ipairs { 1, 2, 4 } do table.insert(rates[k], producers(k)) end
end
local function median(list)
  local sorted = table.move(list, 1, #list, 1, {})
  table.sort(sorted)
  return sorted[(#sorted + 1) // 2]
end
local one_producer, four = median(rates[1]), median(rates[4])
row("appends, 1 producer (one event per transaction)", one_producer, always)
row("appends, 2 concurrent producers", median(rates[2]), always)
row("appends, 4 concurrent producers", four, always)
row("batch appends (append_all, 100 a call), 1 producer", batch_appends(), always)
local reads = {}
for k = 1, 3 do
  local rate
  rate, reads[k] = workers(k)
  row(string.format("worker events/s, %d worker%s (%d partitions)", k, k == 1 and "" or "s", PARTITIONS),
      rate, always)
end
print()
print(string.format("index entries of procman_events read by the workers, per event: %.1f (1 worker), "
                    .. "%.1f (2), %.1f (3)", reads[1], reads[2], reads[3]))
print(string.format("4 producers / 1 producer: %.2fx (medians of %d rounds; each round's ratio: %s)",
                    four / one_producer, ROUNDS, (function()
                      local r = {}
                      for i = 1, ROUNDS do r[i] = string.format("%.2fx", rates[4][i] / rates[1][i]) end
                      return table.concat(r, ", ")
                    end)()))
print(string.format("statements (round trips) per event, one worker, batches of 200: %.3f",
                    statements_per_event()))
local taken, owners = takeover()
print(string.format("takeover after SIGKILL of one of %d workers: events of every partition handled again "
                    .. "after %.2f s", owners, taken))
local resumed, up = restart()
print(string.format("database restart (pg_ctl stop -m immediate; start: %.2f s): events of every partition "
                    .. "handled again %.2f s after the crash", up, resumed))
conn:close()
os.execute("sh tools/pg-cluster.sh stop " .. dir)
