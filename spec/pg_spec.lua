-- procman.pg over a throwaway PostgreSQL cluster (make test-pg starts one
-- and sets PROCMAN_PG to its conninfo; without it these specs are pending).
-- The other pg specs: pg_isolation_spec (poison inputs, failed commits,
-- parking), pg_concurrency_spec (ordering, producers, restarts).
local h = require "spec.support.pg_helpers"
local conninfo = h.conninfo

describe("procman.pg", function()
  if h.without_cluster(it, pending) then return end

  local pg = require "procman.pg"
  local procman = require "procman"
  local core = require "procman.core"
  local batch = require "procman.workflows.batch"
  local order = require "procman.workflows.order"
  local conn

  local function one(sql, ...) return h.one(conn, sql, ...) end

  setup(function() conn = assert(pg.connect(conninfo)) end)
  teardown(function() conn:close() end)
  before_each(function() h.reset(conn, pg) end)

  it("migrates idempotently, and refuses a store of another schema version instead of misreading it", function()
    assert.equal(4, pg.migrate(conninfo))
    assert.equal(4, one("SELECT version FROM procman_schema").version)
    assert(conn:script("UPDATE procman_schema SET version = 3"))
    assert.error_matches(function() pg.migrate(conn) end,
                         "the store has schema version 3, this procman reads version 4 only")
    assert.error_matches(function() pg.worker { conninfo = conninfo, workflows = { batch } } end,
                         "the store has schema version 3")
    assert(conn:script("DROP TABLE " .. h.TABLES))
    assert.error_matches(function() pg.worker { conninfo = conninfo, workflows = { batch } } end,
                         "no procman tables: run pg.migrate first")
  end)

  it("appends idempotently on event_id, refuses an id reused by another event, and events without one", function()
    local e = { event_type = "batch_created", batch_id = "b1", event_id = "e1", files = { "a" } }
    local position = pg.append(conn, e)
    assert.is_true(position > 0)
    assert.is_false(pg.append(conn, e))  -- the same event again: a redelivery
    local other = { event_type = "batch_created", batch_id = "b2", event_id = "e1", files = {} }
    local p, err = pg.append(conn, other)
    assert.is_nil(p)
    assert.matches('event_id "e1" is stored already with a different event', err)
    assert.equal(1, one("SELECT count(*) AS n FROM procman_events").n)
    -- typed ids: 12 and "12" are different events, both appended
    assert.truthy(pg.append(conn, { event_type = "x", event_id = 12 }))
    assert.truthy(pg.append(conn, { event_type = "x", event_id = "12" }))
    assert.error_matches(function() pg.append(conn, { event_type = "x" }) end,
                         "procman.pg.append: event.event_id must be a non%-empty string or an integer")
    assert.error_matches(function() pg.append(conn, { event_type = "x", event_id = 1, f = print }) end,
                         "event is not data")
  end)

  it("appends a batch in one statement (and a NOTIFY), all or nothing when an id is reused", function()
    local db = require "procman.pg.db"
    require("procman.pg.routes").of(conn)  -- loaded once per connection
    local before = db.statements
    local list = {}
    for i = 1, 50 do list[i] = { event_type = "batch_created", batch_id = "b" .. i, event_id = i, files = {} } end
    local positions = assert(pg.append_all(conn, list))
    assert.equal(2, db.statements - before)  -- the append, and the NOTIFY after its commit
    assert.equal(50, #positions)
    for i = 2, 50 do assert.is_true(positions[i] > positions[i - 1]) end
    -- again, with one new event: the 50 are redeliveries
    list[51] = { event_type = "batch_created", batch_id = "b51", event_id = 51, files = {} }
    local again = assert(pg.append_all(conn, list))
    assert.is_false(again[1])
    assert.is_true(again[51] > positions[50])
    -- an id reused with another event: nothing of the batch is appended
    local p, err = pg.append_all(conn, { { event_type = "x", event_id = "new" },
                                         { event_type = "x", event_id = 3, other = true } })
    assert.is_nil(p)
    assert.matches("events%[2%]: event_id 3 is stored already with a different event", err)
    assert.equal(51, one("SELECT count(*) AS n FROM procman_events").n)
    p, err = pg.append_all(conn, { { event_type = "x", event_id = "d" }, { event_type = "y", event_id = "d" } })
    assert.is_nil(p)
    assert.matches('events%[2%]: event_id "d" is in this batch already', err)
    assert.same({ 0 + one("SELECT max(position) AS p FROM procman_events").p + 1, false },
                (function()
                  local r = pg.append_all(conn, { { event_type = "x", event_id = "s" },
                                                  { event_type = "x", event_id = "s" } })
                  return { r[1] - 0, r[2] }
                end)())
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

  it("reports a dead connection from conn:wait instead of returning at once", function()
    local victim = assert(pg.connect(conninfo))
    local pid = assert(victim:exec("SELECT pg_backend_pid() AS pid"))[1].pid
    assert.is_true(victim:alive())
    assert(conn:exec("SELECT pg_terminate_backend($1)", pid))
    local woke, err = victim:wait(60)   -- 60 s only guards against a hang: it reports at once
    assert.is_nil(woke)
    assert.matches("the connection is lost", err)
    assert.is_false(victim:alive())
    woke, err = victim:wait(60)
    assert.is_nil(woke)
    assert.matches("the connection is lost", err)
    victim:close()
  end)

  it("reconnects a worker whose connection was cut, reporting the failure, and gives up only when told to", function()
    local reports = {}
    local w = pg.worker { conninfo = conninfo, workflows = { batch }, partitions = 2,
                          reconnect = { initial = 0.01, max = 0.05 } }
    finally(function() w:close() end)
    assert.equal(2, w:claim())
    assert(conn:exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                     .. "AND query NOT LIKE '%pg_stat_activity%' AND backend_type = 'client backend'"))
    pg.append(conn, { event_type = "batch_created", batch_id = "r1", event_id = "r1", files = {} })
    local rounds = 0
    assert.is_true(w:run { idle = 0.01, on_error = function(err) reports[#reports + 1] = err end,
                           stop = function() rounds = rounds + 1 return rounds > 3 and w.stats.events > 0 end })
    assert.equal(1, w.stats.reconnects)
    assert.is_true(#reports >= 1)
    assert.matches("connection", reports[1])
    assert.equal("success", pg.flow(conn, "batch", "r1").status)
    -- a dispatcher told to give up after 2 attempts
    local warned = {}
    local d = pg.dispatcher { conninfo = "host=/nonexistent dbname=x", send = function() end,
                              reconnect = { initial = 0.01, attempts = 2 },
                              warn = function(text) warned[#warned + 1] = text end }
    local n, err = d:step()
    assert.is_nil(n)
    assert.matches("procman.pg.dispatcher: gave up reconnecting after 2 attempts", err)
    assert.equal(2, #warned)
  end)

  it("sends parameters as parameters: SQL in data stays data", function()
    local evil = "x'); DROP TABLE procman_events; --"
    assert.truthy(pg.append(conn, { event_type = "batch_created", batch_id = evil, event_id = evil, files = {} }))
    assert.equal(procman.encode(evil), one("SELECT event_key FROM procman_events").event_key)
  end)

  it("runs flows in one worker: state, version, outbox, timers, dead letters, read through the API", function()
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
    local flow = pg.flow(conn, "batch", "b1")
    assert.same({ "pending", 2, false, false }, { flow.status, flow.version, flow.done, flow.parked })
    assert.equal("pending", flow.state.files.b)
    assert.is_nil(pg.flow(conn, "batch", "nope"))
    assert.equal(2, #pg.outbox(conn))
    local timers = pg.timers(conn)
    assert.equal(1, #timers)  -- b's timeout; a's was cancelled
    assert.same({ "batch", "b1", "timeout:b", 105 }, { timers[1].workflow, timers[1].flow, timers[1].key,
                                                       timers[1].due })
    local dead = pg.dead_letters(conn)
    assert.equal(1, #dead)
    assert.equal("procman.router: no flow batch/nope for file_processed", dead[1].error)  -- the router's words
    assert.equal("3", dead[1].event.event_id)
    assert.equal(0, w:tick(104))
    assert.equal(1, w:tick(105))
    flow = pg.flow(conn, "batch", "b1")
    assert.same({ "error", 3, true }, { flow.status, flow.version, flow.done })
    assert.same({}, pg.timers(conn))
    assert.same({ { workflow = "batch", flow = "b1", status = "error", version = 3, done = true } },
                pg.flows(conn, "batch"))
    assert.same({}, pg.flows(conn, "batch", "pending"))
    local sent = {}
    assert.equal(2, pg.dispatch(conn, function(_, envelope) sent[#sent + 1] = envelope.id end))
    assert.same({ "batch/b1/1/1", "batch/b1/1/2" }, sent)
    assert.equal(0, pg.dispatch(conn, function() end))
    assert.same({}, pg.outbox(conn, true))
    assert.equal(2, #pg.outbox(conn))
  end)

  it("lets procman inspect and procman diagram read a store by its conninfo", function()
    local w = pg.worker { conninfo = conninfo, workflows = { batch }, partitions = 2 }
    finally(function() w:close() end)
    pg.append(conn, { event_type = "batch_created", batch_id = "b1", event_id = 1, files = { "a" } })
    pg.append(conn, { event_type = "file_processed", batch_id = "b1", event_id = 2,
                      file = { id = "a", status = "success" } })
    pg.append(conn, { event_type = "batch_created", batch_id = "b2", event_id = 3, files = { "a" } })
    assert.equal(3, w:step())
    local function run(args)
      local p = assert(io.popen("lua5.4 bin/procman " .. args .. " 2>&1"))
      local out = p:read("a")
      p:close()
      return out
    end
    local summary = run(string.format("inspect %q", conninfo))
    assert.matches("batch +live 1 %(created 1%); completed 1 %(success 1%)", summary)
    assert.matches("postgres %(.*%): 3 events, last position %d+\n", summary)
    assert.not_matches("bytes", summary)  -- a journal file's notion
    assert.matches("pending commands: 2", summary)
    local list = run(string.format("inspect %q --workflow batch --json", conninfo))
    assert.matches('"flow":"b2"', list)
    local diagram = run(string.format("diagram %q", conninfo))
    assert.matches("%[%*%] %-%-> s%d : batch_created %(2%)", diagram)
    assert.matches("file_processed %(1%)", diagram)
    assert.matches("cannot connect", run("inspect 'host=/nonexistent dbname=x'"))
  end)

  it("stores due times exactly: a timer due at 1700000030.000049 does not fire at 1700000030", function()
    local exact = procman.workflow {
      name = "exact", correlate = "id", starts = { "go" },
      on = { go = function() return { procman.at(1700000030.000049, { event_type = "ring" }) } end,
             ring = function(state) state.rang = true end,
             typed = function() return { procman.at(1796238108, { event_type = "ring" }, "int"),
                                         procman.at(1796238109.0, { event_type = "ring" }, "float") } end },
    }
    local w = pg.worker { conninfo = conninfo, workflows = { exact }, partitions = 1 }
    finally(function() w:close() end)
    pg.append(conn, { event_type = "go", id = "t", event_id = "go" })
    pg.append(conn, { event_type = "go", id = "u", event_id = "go-u" })
    pg.append(conn, { event_type = "typed", id = "u", event_id = "typed" })
    assert.equal(3, w:step())
    -- a due time keeps its number type, in the store and in the worker's cache (read back to fire)
    local timers = pg.timers(conn)
    assert.same({ 1796238108, "integer", 1796238109.0, "float" },
                { timers[3].due, math.type(timers[3].due), timers[4].due, math.type(timers[4].due) })
    w:close()
    -- a new worker loads u's timers, and writes them back with one more
    w = pg.worker { conninfo = conninfo, workflows = { exact }, partitions = 1 }
    pg.append(conn, { event_type = "go", id = "u", event_id = "go-u again" })
    assert.equal(1, w:step())
    timers = pg.timers(conn)
    assert.same({ 1796238108, "integer", "float" }, { timers[4].due, math.type(timers[4].due),
                                                       math.type(timers[5].due) })
    assert.equal(1700000030.000049, pg.timers(conn)[1].due)
    assert.equal(0, w:tick(1700000030))
    assert.equal(0, w:tick(1700000030.000048))
    assert.equal(3, w:tick(1700000030.000049))  -- t's, and u's two
    assert.is_true(pg.flow(conn, "exact", "t").state.rang)
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
    finally(function() w:close() end)
    for i, e in ipairs { { event_type = "go", id = "a" }, { event_type = "bad_init", id = "bad" },
                         { event_type = "bad_directive", id = "a" }, { event_type = "not_data", id = "a" },
                         deep, { event_type = "go", id = "a" } } do
      e.event_id = "e" .. i
      pg.append(conn, e)
    end
    assert.equal(6, w:step())
    local dead = pg.dead_letters(conn)
    assert.equal(4, #dead)
    assert.matches("init fails for bad", dead[1].error)
    assert.matches("returned a bad timer directive: commands%[1%]: procman.after: seconds must be", dead[2].error)
    assert.matches("cannot encode a function", dead[3].error)
    -- the router refuses it: its record (the event inside) would nest more than 100 deep
    assert.matches("event 'keep' is not data: .*nested more than 100 deep", dead[4].error)
    local flow = pg.flow(conn, "clumsy", "a")
    assert.same({ 2, { n = 2 } }, { flow.version, flow.state })
    assert.is_nil(pg.flow(conn, "clumsy", "bad"))
    assert.equal(2, #pg.outbox(conn))
  end)

  it("takes the router's policies and hooks where they apply, and refuses what a worker cannot do", function()
    local function refused(opts, pattern)
      opts.conninfo, opts.workflows = conninfo, { batch }
      assert.error_matches(function() pg.worker(opts) end, pattern)
    end
    refused({ on_unknown = "raise" }, 'on_unknown = "raise" is the router\'s: a worker has no caller to raise to')
    refused({ on_late = "raise" }, 'on_late = "raise" is the router\'s')
    refused({ on_unroutable = "ignore" }, 'on_unroutable must be "dead_letter", got ignore')
    refused({ on_unknown = "drop" }, 'on_unknown must be "ignore" or "dead_letter", got drop')
    refused({ hooks = { journal_fsync = print } }, "hook journal_fsync does not apply to a worker")
    refused({ hooks = { flow_strated = print } }, "unknown hook flow_strated")
    -- a hook that raises is reported and changes nothing: the batch is committed
    local warned = {}
    local w = pg.worker { conninfo = conninfo, workflows = { batch }, partitions = 1,
                          hooks = { flow_started = function() error("hook down", 0) end },
                          warn = function(text) warned[#warned + 1] = text end }
    finally(function() w:close() end)
    pg.append(conn, { event_type = "batch_created", batch_id = "b1", event_id = 1, files = { "a" } })
    assert.equal(1, w:step())
    assert.same({ "hook flow_started failed: hook down" }, warned)
    assert.equal(1, pg.flow(conn, "batch", "b1").version)
    assert.equal(0, w:step())
  end)

  it("refuses to start without the code of a version that live flows run", function()
    local function signup(version)
      return procman.workflow { name = "signup", version = version, correlate = "user", starts = { "registered" },
                                on = { registered = function() end, confirmed = function() end } }
    end
    local w = pg.worker { conninfo = conninfo, workflows = { signup(1) }, partitions = 1 }
    pg.append(conn, { event_type = "registered", user = "u1", event_id = 1 })
    assert.equal(1, w:step())
    w:close()
    assert.error_matches(function() pg.worker { conninfo = conninfo, workflows = { signup(2) }, partitions = 1 } end,
                         'the store has 1 live flow of workflow "signup" on version 1, which this worker was not '
                         .. "given %(it has version 2%)")
    w = pg.worker { conninfo = conninfo, workflows = { signup(1), signup(2) }, partitions = 1 }
    finally(function() w:close() end)
    pg.append(conn, { event_type = "confirmed", user = "u1", event_id = 2 })
    pg.append(conn, { event_type = "registered", user = "u2", event_id = 3 })
    assert.equal(2, w:step())
    assert.same({ 1, 2 }, { pg.flow(conn, "signup", "u1").workflow_version,
                            pg.flow(conn, "signup", "u2").workflow_version })
  end)

  it("3 workers, 2 producers, one worker killed: every flow complete, every command once, "
     .. "states equal a reference run", function()
    local flows, seed, partitions = 1000, 7, 8
    local workers = {}
    for i = 1, 3 do workers[i] = h.spawn("worker", partitions) end
    finally(function() for i = 1, 3 do h.sh("kill -9 " .. workers[i] .. " 2>/dev/null") end end)
    local producers = { h.spawn("producer", 1, flows // 2, seed), h.spawn("producer", flows // 2 + 1, flows, seed) }
    h.wait_until("the workers are busy", function()
      return (one("SELECT coalesce(max(position), 0) AS p FROM procman_checkpoints").p or 0) > 500
    end)
    h.sh("kill -9 " .. workers[1])  -- mid-run
    h.wait_until("the producers are done", function()
      return not h.alive(producers[1]) and not h.alive(producers[2])
    end)
    local last = one("SELECT max(position) AS p FROM procman_events").p
    h.wait_until("every partition is past the last event", function()
      local row = one("SELECT count(*) AS n, min(position) AS low FROM procman_checkpoints")
      return row.n == partitions and row.low >= last
    end)
    for i = 2, 3 do h.sh("kill -9 " .. workers[i]) end
    require("spec.support.pg_reference").check(conn, flows)

    -- two dispatchers share the outbox: each command sent once
    local out1, out2 = os.tmpname(), os.tmpname()
    local d = { h.spawn("dispatcher", out1), h.spawn("dispatcher", out2) }
    h.wait_until("the dispatchers are done", function() return not h.alive(d[1]) and not h.alive(d[2]) end)
    local sent, count = {}, 0
    for _, file in ipairs { out1, out2 } do
      for line in io.lines(file) do
        assert.is_nil(sent[line], line .. " sent twice")
        sent[line], count = true, count + 1
      end
      os.remove(file)
    end
    assert.equal(#pg.outbox(conn), count)
    assert.same({}, pg.outbox(conn, true))
    local _ = core
  end)
end)
