-- procman.pg over a throwaway PostgreSQL cluster (make test-pg starts one
-- and sets PROCMAN_PG to its conninfo; without it these specs are pending).
local conninfo = os.getenv("PROCMAN_PG")

local function sh(cmd)
  return os.execute(cmd)
end

-- Start a child (spec/support/pg_child.lua ROLE ...) in the background;
-- returns its pid.
local function spawn(role, ...)
  local args = {}
  for i, a in ipairs { ... } do args[i] = string.format("%q", tostring(a)) end
  local p = assert(io.popen(string.format("lua5.4 spec/support/pg_child.lua %s %q %s >/dev/null 2>>%s & echo $!",
                                          role, conninfo, table.concat(args, " "), "/tmp/procman-pg-children.log")))
  local pid = tonumber(p:read("l"))
  p:close()
  return pid
end

local function alive(pid)
  return sh("kill -0 " .. pid .. " 2>/dev/null")
end

local function wait_until(what, fn, seconds)
  for _ = 1, (seconds or 120) * 10 do
    if fn() then return end
    sh("sleep 0.1")
  end
  error("timed out waiting until " .. what)
end

describe("procman.pg", function()
  if not conninfo then
    it("needs a PostgreSQL cluster (make test-pg)", function() pending("PROCMAN_PG is not set") end)
    return
  end

  local pg = require "procman.pg"
  local procman = require "procman"
  local core = require "procman.core"
  local batch = require "procman.workflows.batch"
  local order = require "procman.workflows.order"
  local conn

  local function reset()
    assert(conn:script("DROP TABLE IF EXISTS procman_schema, procman_events, procman_flows, procman_outbox, "
                       .. "procman_timers, procman_checkpoints, procman_dead_letters, procman_config"))
    assert.equal(1, pg.migrate(conn))
  end

  local function one(sql, ...)
    return assert(conn:exec(sql, ...))[1]
  end

  setup(function() conn = assert(pg.connect(conninfo)) end)
  teardown(function() conn:close() end)
  before_each(reset)

  it("migrates idempotently, with status and version as columns operators can query", function()
    assert.equal(1, pg.migrate(conninfo))
    assert.equal(1, one("SELECT version FROM procman_schema").version)
    local cols = assert(conn:exec("SELECT column_name FROM information_schema.columns "
                                  .. "WHERE table_name = 'procman_flows' ORDER BY ordinal_position"))
    local names = {}
    for i, c in ipairs(cols) do names[i] = c.column_name end
    assert.same({ "workflow", "flow_id", "flow_key", "partition", "status", "version", "done", "state",
                  "seen", "updated_at" }, names)
  end)

  it("appends idempotently on event_id, and refuses events without one", function()
    local e = { event_type = "batch_created", batch_id = "b1", event_id = "e1", files = { "a" } }
    local position = pg.append(conn, e)
    assert.is_true(position > 0)
    assert.is_false(pg.append(conn, e))
    assert.equal(1, one("SELECT count(*) AS n FROM procman_events").n)
    assert.error_matches(function() pg.append(conn, { event_type = "x" }) end,
                         "procman.pg.append: event.event_id must be a non%-empty string or an integer")
    assert.error_matches(function() pg.append(conn, { event_type = "x", event_id = 1, f = print }) end,
                         "event is not data")
  end)

  it("appends several events in one transaction, visible together at the commit", function()
    local positions = pg.transaction(conn, function(c)
      local list = {}
      for i = 1, 3 do
        list[i] = pg.append(c, { event_type = "batch_created", batch_id = "t" .. i, event_id = "t" .. i, files = {} })
      end
      return list
    end)
    assert.same({ positions[1], positions[1] + 1, positions[1] + 2 }, positions)
    assert.equal(3, one("SELECT count(*) AS n FROM procman_events").n)
    assert.error_matches(function()
      pg.transaction(conn, function(c)
        pg.append(c, { event_type = "batch_created", batch_id = "t9", event_id = "t9", files = {} })
        error("the producer changed its mind")
      end)
    end, "the producer changed its mind")
    assert.equal(3, one("SELECT count(*) AS n FROM procman_events").n)  -- rolled back
  end)

  it("wakes an idle worker with the notification of an append's commit, not of a rollback", function()
    local w = pg.worker { conninfo = conninfo, workflows = { batch }, partitions = 2 }
    finally(function() w:close() end)
    assert.is_false(w.conn:wait(0))                 -- nothing yet
    assert.error_matches(function()
      pg.transaction(conn, function(c)
        pg.append(c, { event_type = "batch_created", batch_id = "r", event_id = "r", files = {} })
        error("rolled back")
      end)
    end, "rolled back")
    assert.is_false(w.conn:wait(0.2))               -- a rollback notifies no one
    pg.append(conn, { event_type = "batch_created", batch_id = "n", event_id = "n", files = { "a" } })
    assert.is_true(w.conn:wait(60))                 -- at once; 60 s only guards against a hang
    assert.is_false(w.conn:wait(0))                 -- taken
    assert.is_false(pg.append(conn, { event_type = "batch_created", batch_id = "n", event_id = "n",
                                      files = { "a" } }))
    assert.is_false(w.conn:wait(0.2))               -- a duplicate appends nothing, notifies no one
    assert.equal(1, w:step())
    assert.error_matches(function() w.conn:wait(-1) end, "seconds must be >= 0")
  end)

  it("sends parameters as parameters: SQL in data stays data", function()
    local evil = "x'); DROP TABLE procman_events; --"
    assert.truthy(pg.append(conn, { event_type = "batch_created", batch_id = evil, event_id = evil, files = {} }))
    assert.equal(evil, one("SELECT event_id FROM procman_events").event_id)
  end)

  it("runs flows in one worker: state, version, outbox, timers, dead letters, in one transaction each step", function()
    local now = 100
    local w = pg.worker { conninfo = conninfo, workflows = { batch, order }, partitions = 4,
                          clock = function() return now end }
    finally(function() w:close() end)
    pg.append(conn, { event_type = "batch_created", batch_id = "b1", event_id = "1", files = { "a", "b" },
                      file_timeout = 5 })
    pg.append(conn, { event_type = "file_processed", batch_id = "b1", event_id = "2",
                      file = { id = "a", status = "success" } })
    pg.append(conn, { event_type = "file_processed", batch_id = "nope", event_id = "3",
                      file = { id = "a", status = "success" } })
    assert.equal(3, w:step())
    local flow = one("SELECT status, version, done FROM procman_flows WHERE workflow = 'batch' AND flow_id = 'b1'")
    assert.same({ status = "pending", version = 2, done = false }, flow)
    assert.equal(2, one("SELECT count(*) AS n FROM procman_outbox").n)
    assert.equal(1, one("SELECT count(*) AS n FROM procman_timers").n)  -- b's timeout; a's was cancelled
    assert.equal("no flow batch/nope for file_processed", one("SELECT error FROM procman_dead_letters").error)
    assert.equal(0, w:tick(104))
    assert.equal(1, w:tick(105))
    assert.same({ status = "error", version = 3, done = true },
                one("SELECT status, version, done FROM procman_flows WHERE flow_id = 'b1'"))
    assert.equal(0, one("SELECT count(*) AS n FROM procman_timers").n)
    local sent = {}
    assert.equal(2, pg.dispatch(conn, function(_, envelope) sent[#sent + 1] = envelope.id end))
    assert.same({ "batch/b1/1/1", "batch/b1/1/2" }, sent)
    assert.equal(0, pg.dispatch(conn, function() end))
    w:close()
  end)

  it("turns whatever a workflow does wrong into dead letters, and goes on", function()
    local clumsy = procman.workflow {
      name = "clumsy", correlate = "id", starts = { "go", "bad_init" },
      init = function(id) if id == "bad" then error("init fails for " .. id, 0) end return { n = 0 } end,
      on = {
        go = function(state) state.n = state.n + 1 return { { command_type = "went", n = state.n } } end,
        bad_init = function() end,
        bad_directive = function(state) state.n = state.n + 1
          return { { command_type = "procman.after", seconds = "soon", event = { event_type = "go" } } } end,
        not_data = function(state) state.n = state.n + 1 return { { command_type = "x", f = print } } end,
        keep = function(state, event) state.n = state.n + 1; state.kept = event end,  -- one level deeper
      },
    }
    local deep = { event_type = "keep", id = "a" }  -- as deep as an event may be: 100 tables
    local inner = deep
    for _ = 2, 100 do inner.n = {}; inner = inner.n end
    local w = pg.worker { conninfo = conninfo, workflows = { clumsy }, partitions = 2 }
    finally(function() w:close() end)  -- its locks would hold partitions from the next tests
    for i, e in ipairs { { event_type = "go", id = "a" }, { event_type = "bad_init", id = "bad" },
                         { event_type = "bad_directive", id = "a" }, { event_type = "not_data", id = "a" },
                         deep, { event_type = "go", id = "a" } } do
      e.event_id = "e" .. i
      pg.append(conn, e)
    end
    assert.equal(6, w:step())
    local dead = assert(conn:exec("SELECT error FROM procman_dead_letters ORDER BY position"))
    assert.equal(4, #dead)
    assert.matches("init fails for bad", dead[1].error)
    assert.matches("procman.after: seconds must be", dead[2].error)
    assert.matches("cannot encode a function", dead[3].error)
    assert.matches("clumsy/a: state is not data: cannot encode tables nested more than 100 deep "
                   .. "at state.kept.n.n", dead[4].error)
    assert.same({ version = 2, state = { n = 2 } },
                (function()
                  local f = one("SELECT version, state FROM procman_flows WHERE flow_id = 'a'")
                  return { version = f.version, state = procman.decode(f.state) }
                end)())
    assert.equal(2, one("SELECT count(*) AS n FROM procman_outbox").n)
    w:close()
  end)

  it("never lets a reader skip an event whose transaction commits late", function()
    -- T1 appends and stays open; a second producer appends meanwhile
    assert(conn:script("BEGIN"))
    local first = pg.append(conn, { event_type = "batch_created", batch_id = "t1", event_id = "t1", files = {} })
    local pid = spawn("append", "t2")
    sh("sleep 0.5")
    assert.is_true(alive(pid), "the second append should wait for the first to commit")
    local other = assert(pg.connect(conninfo))
    assert.equal(0, assert(other:exec("SELECT count(*) AS n FROM procman_events"))[1].n)
    assert(conn:script("COMMIT"))
    wait_until("the second append is done", function() return not alive(pid) end, 20)
    local rows = assert(other:exec("SELECT event_id, position FROM procman_events ORDER BY position"))
    assert.same({ "t1", "t2" }, { rows[1].event_id, rows[2].event_id })
    assert.equal(first, rows[1].position)
    other:close()
  end)

  it("3 workers, 2 producers, one worker killed: every flow complete, every command once, "
     .. "states equal a reference run", function()
    local flows, seed, partitions = 1000, 7, 8
    local workers = {}
    for i = 1, 3 do workers[i] = spawn("worker", partitions) end
    local producers = { spawn("producer", 1, flows // 2, seed), spawn("producer", flows // 2 + 1, flows, seed) }
    wait_until("the workers are busy", function()
      return (one("SELECT coalesce(max(position), 0) AS p FROM procman_checkpoints").p or 0) > 500
    end)
    sh("kill -9 " .. workers[1])  -- mid-run
    wait_until("the producers are done", function() return not alive(producers[1]) and not alive(producers[2]) end)
    local last = one("SELECT max(position) AS p FROM procman_events").p
    wait_until("every partition is past the last event", function()
      local row = one("SELECT count(*) AS n, min(position) AS low FROM procman_checkpoints")
      return row.n == partitions and row.low >= last
    end)
    for i = 2, 3 do sh("kill -9 " .. workers[i]) end

    -- the reference: the same events, in the store's order, in memory
    local ref, expected_ids = { batch = {}, order = {} }, {}
    local rows = assert(conn:exec("SELECT payload FROM procman_events ORDER BY position"))
    for _, row in ipairs(rows) do
      local e = procman.decode(row.payload)
      local wf, id = e.batch_id and batch or order, e.batch_id or e.order_id
      local pm = ref[wf.name][id] or wf:new(id)
      ref[wf.name][id] = pm
      for i = 1, #pm:handle(e) do expected_ids[string.format("%s/%s/%d/%d", wf.name, id, pm:version(), i)] = true end
    end
    assert.equal(flows, one("SELECT count(*) AS n FROM procman_flows").n)
    assert.equal(0, one("SELECT count(*) AS n FROM procman_flows WHERE NOT done").n)
    assert.equal(0, one("SELECT count(*) AS n FROM procman_dead_letters").n)
    local stored = assert(conn:exec("SELECT workflow, flow_key, status, version, state FROM procman_flows"))
    for _, f in ipairs(stored) do
      local pm = ref[f.workflow][procman.decode(f.flow_key)]
      assert.equal(pm:version(), f.version)
      assert.equal(pm:status(), f.status)
      assert.same((core.snapshot(pm)), procman.decode(f.state))
    end
    local outbox = assert(conn:exec("SELECT command_id FROM procman_outbox"))
    local n = 0
    for _ in pairs(expected_ids) do n = n + 1 end
    assert.equal(n, #outbox)
    for _, o in ipairs(outbox) do assert.is_true(expected_ids[o.command_id], o.command_id) end

    -- two dispatchers share the outbox: each command sent once
    local out1, out2 = os.tmpname(), os.tmpname()
    local d = { spawn("dispatcher", out1), spawn("dispatcher", out2) }
    wait_until("the dispatchers are done", function() return not alive(d[1]) and not alive(d[2]) end)
    local sent, count = {}, 0
    for _, file in ipairs { out1, out2 } do
      for line in io.lines(file) do
        assert.is_nil(sent[line], line .. " sent twice")
        sent[line], count = true, count + 1
      end
      os.remove(file)
    end
    assert.equal(n, count)
    assert.equal(0, one("SELECT count(*) AS n FROM procman_outbox WHERE NOT dispatched").n)
  end)
end)
