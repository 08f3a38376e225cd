-- procman.pg: no input stalls a partition (poison events, database errors
-- blamed on one event), failed commits lose nothing, checkpoints never
-- move back, the router's rules (parking, dead letters, ids), bounded cost.
local h = require "spec.support.pg_helpers"
local conninfo = h.conninfo

describe("procman.pg worker isolation", function()
  if h.without_cluster(it, pending) then return end

  local pg = require "procman.pg"
  local procman = require "procman"
  local db = require "procman.pg.db"
  local batch = require "procman.workflows.batch"
  local order = require "procman.workflows.order"
  local conn
  local later, worker = h.cleanups(pg, after_each)

  local function one(sql, ...) return h.one(conn, sql, ...) end

  setup(function() conn = assert(pg.connect(conninfo)) end)
  teardown(function() conn:close() end)
  before_each(function() h.reset(conn, pg) end)

  it("commits a batch of poison inputs whole: binary, NUL, 10 KB and typed ids, non-UTF-8 errors", function()
    local long = ("k"):rep(10 * 1024)
    assert(pg.append_all(conn, {
      { event_type = "batch_created", batch_id = "\xff\xfe", event_id = "\xff", files = { "f" } },
      { event_type = "file_processed", batch_id = "\xff\xfe", event_id = "e\0nul",
        file = { id = "\xff", status = "success" } },                  -- refused: error text holds \xff
      { event_type = "batch_created", batch_id = "a", event_id = 1, files = { "f" } },
      { event_type = "batch_created", batch_id = "a\0evil", event_id = 2, files = { "f", "g" } },
      { event_type = "file_processed", batch_id = "a\0evil", event_id = 3, file = { id = "f", status = "error" } },
      { event_type = "batch_created", batch_id = long, event_id = long, files = {} },
      { event_type = "batch_created", batch_id = 7, event_id = 7, files = {} },
      { event_type = "batch_created", batch_id = "7", event_id = "7", files = { "x" } },
    }))
    local w = worker { workflows = { batch }, partitions = 3 }
    assert.equal(8, w:step())
    assert.equal(0, w.stats.isolated)  -- nothing for the database to refuse
    assert.same({ "created", 1 }, { pg.flow(conn, "batch", "\xff\xfe").status, pg.flow(conn, "batch", "\xff\xfe").version })
    assert.same({ "created", 1 }, { pg.flow(conn, "batch", "a").status, pg.flow(conn, "batch", "a").version })
    local evil = pg.flow(conn, "batch", "a\0evil")
    assert.same({ "error", 2, "a\0evil" }, { evil.status, evil.version, evil.state.id })
    assert.equal("success", pg.flow(conn, "batch", long).status)
    assert.same({ "success", 7 }, { pg.flow(conn, "batch", 7).status, pg.flow(conn, "batch", 7).state.id })
    assert.same({ "created", "7" }, { pg.flow(conn, "batch", "7").status, pg.flow(conn, "batch", "7").state.id })
    local dead = pg.dead_letters(conn)
    assert.equal(1, #dead)
    assert.equal("batch/\xff\xfe: handler for 'file_processed' failed: file \"\xff\" is not in this batch",
                 dead[1].error)
    assert.equal("e\0nul", dead[1].event.event_id)
    assert.equal("\xff\xfe", dead[1].flow)
    assert.equal(6, #pg.flows(conn, "batch"))
  end)

  it("turns a database error blamed on one event into a dead letter, and commits the rest of the batch", function()
    assert(conn:script([[
      CREATE FUNCTION procman_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF NEW.flow_key = '\xa3626164'::bytea THEN RAISE EXCEPTION 'flow "bad" is refused by a rule'; END IF;
        RETURN NEW;
      END $$;
      CREATE TRIGGER procman_test_refuse BEFORE INSERT OR UPDATE ON procman_flows
        FOR EACH ROW EXECUTE FUNCTION procman_test_refuse();]]))
    later(function() conn:script("DROP FUNCTION IF EXISTS procman_test_refuse() CASCADE") end)
    assert.equal(procman.encode("bad"), "\xa3bad")
    for i, id in ipairs { "ok1", "bad", "ok2" } do
      pg.append(conn, { event_type = "batch_created", batch_id = id, event_id = i, files = { "f" } })
    end
    local w = worker { workflows = { batch }, partitions = 2 }
    assert.equal(3, w:step())
    assert.equal(1, w.stats.isolated)
    assert.equal("created", pg.flow(conn, "batch", "ok1").status)
    assert.equal("created", pg.flow(conn, "batch", "ok2").status)
    assert.is_nil(pg.flow(conn, "batch", "bad"))
    local dead = pg.dead_letters(conn)
    assert.equal(1, #dead)
    assert.matches('the store refused this event\'s changes: .*flow "bad" is refused by a rule', dead[1].error)
    assert.equal(2, dead[1].event.event_id)
    assert.equal(2, #pg.outbox(conn))  -- ok1's and ok2's process_file, none of bad's
    assert.equal(0, w:step())          -- nothing stalls: the partition moved on
  end)

  it("turns a timer whose firing the store refuses into a dead letter, and fires the others", function()
    assert(conn:script([[
      CREATE FUNCTION procman_test_refuse_ring() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF NEW.flow_key = '\xa3626164'::bytea AND NEW.version >= 2 THEN RAISE EXCEPTION 'no ringing'; END IF;
        RETURN NEW;
      END $$;
      CREATE TRIGGER procman_test_refuse_ring BEFORE UPDATE ON procman_flows
        FOR EACH ROW EXECUTE FUNCTION procman_test_refuse_ring();]]))
    later(function() conn:script("DROP FUNCTION IF EXISTS procman_test_refuse_ring() CASCADE") end)
    local bell = procman.workflow {
      name = "bell", correlate = "id", starts = { "go" },
      on = { go = function() return { procman.after(5, { event_type = "ring" }) } end,
             ring = function(state) state.rang = true end },
    }
    local w = worker { workflows = { bell }, partitions = 1, clock = function() return 100 end }
    pg.append(conn, { event_type = "go", id = "bad", event_id = 1 })
    pg.append(conn, { event_type = "go", id = "ok", event_id = 2 })
    assert.equal(2, w:step())
    assert.equal(2, w:tick(105))
    assert.is_true(pg.flow(conn, "bell", "ok").state.rang)
    assert.is_nil(pg.flow(conn, "bell", "bad").state.rang)
    local dead = pg.dead_letters(conn)
    assert.equal(1, #dead)
    assert.matches("the store refused this timer's changes: .*no ringing", dead[1].error)
    assert.same({ "bell", "bad", "ring" }, { dead[1].workflow, dead[1].flow, dead[1].event.event_type })
    assert.same({}, pg.timers(conn))
    assert.equal(0, w:tick(106))
  end)

  it("reads the same events again after its batch commit failed, and loses nothing", function()
    for i = 1, 4 do
      pg.append(conn, { event_type = "batch_created", batch_id = "b" .. i, event_id = i, files = { "f" } })
    end
    local w = worker { workflows = { batch }, partitions = 2 }
    -- every commit fails (the checkpoints refuse writes): not one event's fault
    assert(conn:script([[
      CREATE FUNCTION procman_test_down() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN RAISE EXCEPTION 'checkpoints are read-only today'; END $$;
      CREATE TRIGGER procman_test_down BEFORE UPDATE ON procman_checkpoints
        FOR EACH ROW EXECUTE FUNCTION procman_test_down();]]))
    later(function() conn:script("DROP FUNCTION IF EXISTS procman_test_down() CASCADE") end)
    local n, err = w:step()
    assert.is_nil(n)
    assert.matches("checkpoints are read%-only today", err)
    assert.equal(0, #pg.flows(conn, "batch"))
    assert.equal(0, #pg.dead_letters(conn))
    assert(conn:script("DROP FUNCTION procman_test_down() CASCADE"))
    assert.equal(4, w:step())          -- the same events, from the same checkpoints
    assert.equal(4, #pg.flows(conn, "batch"))
    assert.equal(4, #pg.outbox(conn))
    assert.equal(0, w:step())
  end)

  it("turns an event whose stored payload cannot be decoded into a dead letter, and goes on", function()
    for i = 1, 3 do
      assert(pg.append(conn, { event_type = "batch_created", batch_id = "b" .. i, event_id = "e\\'" .. i,
                               files = {} }))
    end
    -- damaged in the store: 0xc1 is no MessagePack value; then a truncated map
    assert(conn:exec("UPDATE procman_events SET payload = '\\xc1'::bytea WHERE position = "
                     .. "(SELECT min(position) FROM procman_events)"))
    assert(conn:exec("UPDATE procman_events SET payload = substring(payload FROM 1 FOR 5) WHERE position = "
                     .. "(SELECT max(position) FROM procman_events)"))
    local w = worker { workflows = { batch }, partitions = 3 }
    assert.equal(3, w:step())
    assert.equal(0, w:step())  -- not read again
    local dead = pg.dead_letters(conn)
    assert.equal(2, #dead)
    assert.matches("the stored payload of the event at position %d+ cannot be decoded", dead[1].error)
    assert.same({ "batch_created", "e\\'1", "\xc1" },
                { dead[1].event.event_type, dead[1].event.event_id, dead[1].event.payload })
    assert.same({ "batch_created", "e\\'3", 5 },
                { dead[2].event.event_type, dead[2].event.event_id, #dead[2].event.payload })
    assert.same({ "b2" }, { pg.flows(conn, "batch")[1].flow, pg.flows(conn, "batch")[2] })
  end)

  it("never moves a stored checkpoint backwards when it holds partitions at different checkpoints", function()
    local positions = {}
    for i = 1, 6 do
      positions[i] = pg.append(conn, { event_type = "batch_created", batch_id = "b" .. i, event_id = i, files = {} })
    end
    local ahead = one("SELECT xid::text::bigint AS xid, position FROM procman_events WHERE position = $1",
                      positions[6])
    -- partition 0 was taken to the end already (by a worker now gone); partition 1 is new
    assert(conn:exec("INSERT INTO procman_checkpoints (partition, xid, position) VALUES (0, $1, $2), (1, 0, 0)",
                     ahead.xid, ahead.position))
    local w = worker { workflows = { batch }, partitions = 2, batch = 2 }
    assert.equal(2, w:step())
    local cp0 = one("SELECT xid, position FROM procman_checkpoints WHERE partition = 0")
    assert.same({ ahead.xid, ahead.position }, { cp0.xid, cp0.position })
    assert.equal(positions[2], one("SELECT position FROM procman_checkpoints WHERE partition = 1").position)
    while w:step() > 0 do end
    -- the flows of partition 0 were not created again: it had handled them
    for i = 1, 6 do
      local p = require("procman.pg.worker").partition("batch", "b" .. i, 2)
      assert.equal(p == 1, pg.flow(conn, "batch", "b" .. i) ~= nil, "b" .. i)
    end
  end)

  it("keeps one dead letter for an event without its flow id, and refuses a table as a flow id", function()
    local both = procman.workflow { name = "both", correlate = "batch_id", on = { batch_created = function() end },
                                    starts = { "batch_created" } }
    local w = worker { workflows = { batch, both }, partitions = 4 }
    pg.append(conn, { event_type = "batch_created", event_id = 1, files = {} })
    pg.append(conn, { event_type = "batch_created", event_id = 2, batch_id = { "t" }, files = {} })
    assert.equal(2, w:step())
    local dead = pg.dead_letters(conn)
    assert.equal(2, #dead)
    -- the router's words (on_unroutable = "dead_letter")
    assert.equal("procman.router: event 'batch_created' lacks the field batch_id, which workflow \"batch\" needs",
                 dead[1].error)
    assert.matches("^procman.router: event 'batch_created': flow id for workflow \"batch\" must be a non%-empty "
                   .. "string or an integer, got a table", dead[2].error)
  end)

  it("parks a flow whose handler fails (on_error = \"park\"), holds its later events, resumes and skips", function()
    local broken = { on = true }
    local fragile = procman.workflow {
      name = "fragile", correlate = "id", starts = { "open" },
      on = { open = function(state) state.log = {} end,
             step = function(state, e)
               if broken.on and e.n == 2 then error("step 2 is broken", 0) end
               table.insert(state.log, e.n)
               return { { command_type = "did", n = e.n } }
             end,
             close = function(state) state.closed = true end },
      done = function(state) return state.closed == true end,
    }
    local w = worker { workflows = { fragile }, partitions = 1, on_error = "park" }
    for i, e in ipairs { { event_type = "open" }, { event_type = "step", n = 1 }, { event_type = "step", n = 2 },
                         { event_type = "step", n = 3 } } do
      e.id, e.event_id = "f", i
      pg.append(conn, e)
    end
    assert.equal(4, w:step())
    local parked = pg.parked(conn)
    assert.equal(1, #parked)
    assert.same({ "fragile", "f", "fragile/f: handler for 'step' failed: step 2 is broken", 2, 2 },
                { parked[1].workflow, parked[1].flow, parked[1].error, parked[1].held, parked[1].event.n })
    assert.same({ 1 }, pg.flow(conn, "fragile", "f").state.log)
    assert.error_matches(function() w:resume("fragile", "nope") end, "flow fragile/nope is not parked")
    local applied, err = w:resume("fragile", "f")  -- still broken: parked again, nothing lost
    assert.same({ 0, "fragile/f: handler for 'step' failed: step 2 is broken" }, { applied, err })
    assert.equal(2, pg.parked(conn)[1].held)
    broken.on = false
    assert.equal(2, w:resume("fragile", "f"))
    assert.same({}, pg.parked(conn))
    assert.same({ 1, 2, 3 }, pg.flow(conn, "fragile", "f").state.log)
    -- skip: the first parked event is dropped, the rest applied
    broken.on = true
    pg.append(conn, { event_type = "step", id = "f", n = 2, event_id = 10 })
    pg.append(conn, { event_type = "step", id = "f", n = 4, event_id = 11 })
    assert.equal(2, w:step())
    assert.equal(1, w:skip("fragile", "f"))
    assert.same({ 1, 2, 3, 4 }, pg.flow(conn, "fragile", "f").state.log)
    assert.equal(5, pg.flow(conn, "fragile", "f").version)
    -- a late event for a completed flow: a dead letter
    pg.append(conn, { event_type = "close", id = "f", event_id = 12 })
    pg.append(conn, { event_type = "step", id = "f", n = 5, event_id = 13 })
    assert.equal(2, w:step())
    assert.is_true(pg.flow(conn, "fragile", "f").done)
    assert.matches("flow fragile/f is complete %(.*%): event 'step' came after it finished",
                   pg.dead_letters(conn)[1].error)
  end)

  it("keeps its cache bounded: completed flows leave it, live flows are reloaded on demand", function()
    local w = worker { workflows = { batch, order }, partitions = 1, cache = 10 }
    local list = {}
    for i = 1, 40 do
      list[#list + 1] = { event_type = "batch_created", batch_id = "b" .. i, event_id = "c" .. i, files = { "f" } }
    end
    assert(pg.append_all(conn, list))
    while w:step() > 0 do end
    assert.is_true(w.stats.cached <= 10, "cached " .. w.stats.cached)
    list = {}
    for i = 1, 40 do
      list[i] = { event_type = "file_processed", batch_id = "b" .. i, event_id = "p" .. i,
                  file = { id = "f", status = "success" } }
    end
    assert(pg.append_all(conn, list))
    while w:step() > 0 do end
    assert.same({}, pg.dead_letters(conn))
    assert.equal(0, w.stats.cached)  -- all completed
    assert.equal(40, #pg.flows(conn, "batch", "success"))
  end)

  it("costs the same per batch late in a long flow as early: no history rewritten", function()
    local counter = procman.workflow { name = "counter", correlate = "id", starts = { "inc" },
                                       on = { inc = function(state) state.n = (state.n or 0) + 1 end } }
    local w = worker { workflows = { counter }, partitions = 1, batch = 100 }
    local function batch_of(k)
      local list = {}
      for i = 1, 100 do list[i] = { event_type = "inc", id = "long", event_id = k * 1000 + i } end
      assert(pg.append_all(conn, list))
      local before = db.statements
      assert.equal(100, w:step())
      return db.statements - before, one("SELECT octet_length(state) AS n FROM procman_flows").n
    end
    -- (the fewest of three batches: claiming partitions adds statements once a second)
    local function fewest(from)
      local least, bytes = math.huge, nil
      for k = from, from + 2 do
        local n, b = batch_of(k)
        least, bytes = math.min(least, n), b
      end
      return least, bytes
    end
    batch_of(1)  -- loads the flow
    local first_statements, first_bytes = fewest(2)
    for k = 5, 19 do batch_of(k) end
    local late_statements, late_bytes = fewest(20)
    assert.equal(first_statements, late_statements)
    assert.equal(first_bytes, late_bytes)
    assert.equal(2200, pg.flow(conn, "counter", "long").version)
  end)
end)
