--- Helpers of the procman.pg specs (spec/pg_*_spec.lua): the conninfo of
-- the throwaway cluster (make test-pg sets PROCMAN_PG), child processes,
-- waiting, a clean store.
local M = {}

M.conninfo = os.getenv("PROCMAN_PG")

M.TABLES = "procman_schema, procman_events, procman_flows, procman_outbox, procman_timers, procman_checkpoints, "
           .. "procman_dead_letters, procman_config, procman_routes, procman_parked, procman_transitions"

function M.sh(cmd)
  return os.execute(cmd)
end

--- Start a child (spec/support/pg_child.lua ROLE ...) in the background;
-- returns its pid.
function M.spawn(role, ...)
  local args = {}
  for i, a in ipairs { ... } do args[i] = string.format("%q", tostring(a)) end
  local p = assert(io.popen(string.format("lua5.4 spec/support/pg_child.lua %s %q %s >/dev/null "
                                          .. "2>>/tmp/procman-pg-children.log & echo $!",
                                          role, M.conninfo, table.concat(args, " "))))
  local pid = tonumber(p:read("l"))
  p:close()
  return pid
end

function M.alive(pid)
  return M.sh("kill -0 " .. pid .. " 2>/dev/null")
end

--- Wait until fn() is true; 'seconds' only guards against a hang.
function M.wait_until(what, fn, seconds)
  for _ = 1, (seconds or 120) * 10 do
    if fn() then return end
    M.sh("sleep 0.1")
  end
  error("timed out waiting until " .. what)
end

--- Drop every procman table and create them again.
function M.reset(conn, pg)
  assert(conn:script("DROP TABLE IF EXISTS " .. M.TABLES))
  assert(pg.migrate(conn) == require("procman.pg.schema").VERSION)
  require("procman.pg.routes").forget(conn)  -- a new store: the routes it cached are gone
end

--- The first row of a query (asserting it worked).
function M.one(conn, sql, ...)
  return assert(conn:exec(sql, ...))[1]
end

--- The cluster's data directory (host= of the conninfo: tools/pg-cluster.sh).
function M.cluster_dir()
  return M.conninfo:match("host=(%S+)")
end

--- In a describe block: without a cluster, one pending test and true
-- (busted's functions are the spec file's, passed in).
function M.without_cluster(it, pending)
  if M.conninfo then return false end
  it("needs a PostgreSQL cluster (make test-pg)", function() pending("PROCMAN_PG is not set") end)
  return true
end

--- In a describe block: later(fn) registers a cleanup run after each test
-- (busted keeps one finally per test), worker(opts) a worker on the
-- cluster closed after the test.
function M.cleanups(pg, after_each)
  local list = {}
  after_each(function()
    for i = #list, 1, -1 do list[i]() end
    list = {}
  end)
  local function later(fn) list[#list + 1] = fn end
  local function worker(opts)
    opts.conninfo = M.conninfo
    local w = pg.worker(opts)
    later(function() w:close() end)
    return w
  end
  return later, worker
end

return M
