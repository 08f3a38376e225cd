-- procman.pg: appends without a global lock, readers that never skip an
-- event whose transaction commits late, producers that have not seen a new
-- workflow yet, and a database restart under load.
local h = require "spec.support.pg_helpers"
local conninfo = h.conninfo

describe("procman.pg concurrency", function()
  if h.without_cluster(it, pending) then return end

  local pg = require "procman.pg"
  local procman = require "procman"
  local batch = require "procman.workflows.batch"
  local order = require "procman.workflows.order"
  local conn
  local later, worker = h.cleanups(pg, after_each)

  local function one(sql, ...) return h.one(conn, sql, ...) end

  -- A flow per source that must see 1, 2, 3, ... in order: a skipped or
  -- reordered event is a dead letter.
  local sequence = procman.workflow {
    name = "sequence", correlate = "source", starts = { "tick" },
    on = { tick = function(state, e)
      local want = (state.last or 0) + 1
      if e.n ~= want then error(string.format("expected %d, got %d", want, e.n), 0) end
      state.last = e.n
    end },
  }

  setup(function() conn = assert(pg.connect(conninfo)) end)
  teardown(function() conn:close() end)
  before_each(function() h.reset(conn, pg) end)

  it("never lets a reader skip an event whose transaction commits late, and takes no lock to append", function()
    local w = worker { workflows = { batch }, partitions = 1 }
    assert(conn:script("BEGIN"))
    local first = pg.append(conn, { event_type = "batch_created", batch_id = "t1", event_id = "t1", files = {} })
    local pid = h.spawn("append", "t2")   -- a second producer appends and commits meanwhile
    h.wait_until("the second append is done (it waits for no lock)", function() return not h.alive(pid) end, 60)
    assert.equal(0, w:step())   -- t2 is committed, but t1 may still commit before it: wait
    assert.equal(0, #pg.flows(w.conn, "batch"))
    assert(conn:script("COMMIT"))
    assert.equal(2, w:step())
    local rows = assert(conn:exec("SELECT event_key, position FROM procman_events ORDER BY xid, position"))
    assert.same({ procman.encode("t1"), procman.encode("t2") }, { rows[1].event_key, rows[2].event_key })
    assert.equal(first, rows[1].position)
    assert.equal(2, #pg.flows(conn, "batch"))
  end)

  it("4 producers append concurrently while 2 workers read: no event skipped, none twice, in order", function()
    local sources, count = 4, 300
    local a = worker { workflows = { sequence }, partitions = 4 }
    local b = worker { workflows = { sequence }, partitions = 4 }
    local pids = {}
    for i = 1, sources do pids[i] = h.spawn("numbered", "s" .. i, count) end
    later(function() for _, pid in ipairs(pids) do h.sh("kill -9 " .. pid .. " 2>/dev/null") end end)
    local function running()
      for _, pid in ipairs(pids) do if h.alive(pid) then return true end end
      return false
    end
    for _ = 1, 100000 do  -- a guard against a hang only
      local busy = running()
      assert((a:step()))
      assert((b:step()))
      if not busy and a:step() == 0 and b:step() == 0 then break end
    end
    assert.same({}, pg.dead_letters(conn))
    for i = 1, sources do
      local f = pg.flow(conn, "sequence", "s" .. i)
      assert.same({ count, count }, { f.state.last, f.version })
    end
    assert.is_true(a.stats.events + b.stats.events < 2 * sources * count, "each worker reads only its share")
  end)

  it("loses nothing when a producer appends with routes from before a workflow was added", function()
    local early = worker { workflows = { batch }, partitions = 4 }
    pg.append(conn, { event_type = "batch_created", batch_id = "b", event_id = 1, files = {} })  -- routes cached
    early:close()
    local a = worker { workflows = { batch, order }, partitions = 4 }  -- order's routes are new
    local b = worker { workflows = { batch, order }, partitions = 4 }
    assert.same({ 2, 2 }, { a:claim(), b:claim() })
    for i = 1, 8 do
      pg.append(conn, { event_type = "order_created", order_id = i, event_id = "o" .. i,
                        items = { { sku = "x", quantity = 1 } } })
    end
    while a:step() + b:step() > 0 do end
    assert.equal(8, #pg.flows(conn, "order"))
    assert.equal(1, #pg.flows(conn, "batch"))
  end)

  -- A worker that owns only 'mine' of n partitions (the others are held
  -- by this test's session).
  local function worker_of(mine, n, opts)
    for p = 0, n - 1 do
      if p ~= mine then assert(conn:exec("SELECT pg_advisory_lock(5164018, $1)", p)) end
    end
    later(function() assert(conn:exec("SELECT pg_advisory_unlock_all()")) end)
    opts.partitions = n
    local w = worker(opts)
    w:claim()
    assert.same({ mine }, w:owned_partitions())
    return w
  end

  local partition_of = require("procman.pg.worker").partition

  -- A batch id in partition p of n (the i-th such id).
  local function batch_in(p, n, i)
    local k = 0
    for j = 1, 100000 do
      if partition_of("batch", "b" .. j, n) == p then
        k = k + 1
        if k == (i or 1) then return "b" .. j end
      end
    end
  end

  it("reads only its partitions' events: its first step finds its event behind many of other partitions", function()
    local w = worker_of(1, 2, { workflows = { batch }, batch = 2 })
    local others = {}
    for i = 1, 60 do
      others[i] = { event_type = "batch_created", batch_id = batch_in(0, 2, i), event_id = i, files = {} }
    end
    assert(pg.append_all(conn, others))
    pg.append(conn, { event_type = "batch_created", batch_id = batch_in(1, 2), event_id = "mine", files = {} })
    assert.same({ 0, 60 }, { one("SELECT min(partition) AS p FROM procman_events").p,
                             one("SELECT count(*) AS n FROM procman_events WHERE partition = 0").n })
    assert.equal(1, w:step())  -- not a window of other partitions' events first
    assert.is_not_nil(pg.flow(conn, "batch", batch_in(1, 2)))
    assert.equal(0, w:step())
  end)

  it("reads an event stored for another partition under an old generation of the routes "
     .. "(an append that raced with a route change)", function()
    local early = worker { workflows = { batch }, partitions = 4 }
    local old = one("SELECT gen FROM procman_routes").gen
    early:close()
    local p = partition_of("order", 5, 4)
    local w = worker_of(p, 4, { workflows = { batch, order } })  -- order's routes are new
    assert.equal("{0," .. old .. "}", one("SELECT history::text AS h FROM procman_routes").h)
    pg.append(conn, { event_type = "order_created", order_id = 5, event_id = "o5",
                      items = { { sku = "x", quantity = 1 } } })
    -- as stored by an append whose statement read the routes before the change committed
    assert(conn:exec("UPDATE procman_events SET route_gen = $1, partition = $2", old, (p + 1) % 4))
    assert.equal(1, w:step())
    assert.equal(1, #pg.flows(conn, "order"))
  end)

  it("survives a database restart under load: the worker reconnects and finishes every flow exactly once", function()
    local flows, seed, partitions = 400, 11, 4
    local w = h.spawn("worker", partitions)
    local producers = { h.spawn("producer", 1, flows // 2, seed), h.spawn("producer", flows // 2 + 1, flows, seed) }
    later(function()
      h.sh("kill -9 " .. w .. " 2>/dev/null")
      for _, pid in ipairs(producers) do h.sh("kill -9 " .. pid .. " 2>/dev/null") end
    end)
    h.wait_until("the worker is busy", function()
      return (one("SELECT coalesce(max(position), 0) AS p FROM procman_checkpoints").p or 0) > 200
    end)
    conn:close()
    assert(h.sh("sh tools/pg-cluster.sh restart " .. h.cluster_dir()))   -- pg_ctl stop -m immediate; start
    conn = assert(pg.connect(conninfo))
    h.wait_until("the producers are done", function()
      return not h.alive(producers[1]) and not h.alive(producers[2])
    end)
    h.wait_until("every flow is done", function()
      return one("SELECT count(*) AS n FROM procman_flows WHERE done").n == flows
    end)
    assert.is_true(h.alive(w), "the same worker process finished the work")
    require("spec.support.pg_reference").check(conn, flows)
  end)
end)
