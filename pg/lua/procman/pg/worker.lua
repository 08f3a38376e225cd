--- procman.pg.worker: run flows from the shared event store.
--
-- A flow belongs to partition hash(workflow, flow id) mod N; a worker owns
-- partitions (procman.pg.partitions). A step reads, in (transaction id,
-- position) order, the events after its checkpoints that may concern its
-- partitions, loads the flows they may go to (procman.pg.store: three
-- statements), and hands the events to the router's own step
-- (procman.pg.unit: a procman.router filled from the store, told which
-- flows are this worker's, writing its records to a PostgreSQL log port):
-- routing, dedup, parking, dead letters, timers, command ids and statuses
-- are the router's. It commits in ONE transaction what the step did: the
-- flows' new state and version (checked against the version it read, so
-- two owners can never both write), the outbox rows, the timers, the
-- parked events, the dead letters and the checkpoints (procman.pg.store,
-- one statement per table).
--
-- Failure isolation: when the commit fails for anything but a lost
-- connection or another owner, the worker forgets its cache and handles
-- the batch again one event per transaction; an event whose own
-- transaction fails becomes a dead letter with the database's reason, and
-- the rest commits. No input can stall a partition.
--
-- Connection loss: w:run reconnects with backoff (forever, unless told a
-- number of attempts), reports each failure (the on_error hook, else
-- warn), and starts again from the stored checkpoints: nothing is lost and
-- nothing is applied twice, since state and checkpoints commit together.
local procman = require "procman"
local workflow = require "procman.workflow"
local replay_plan = require "procman.replay_plan"
local message = require "procman.message"
local db = require "procman.pg.db"
local pgcore = require "procman.pg.core"
local schema = require "procman.pg.schema"
local routes = require "procman.pg.routes"
local store = require "procman.pg.store"
local partitions = require "procman.pg.partitions"
local producer = require "procman.pg.producer"
local policies = require "procman.pg.policies"
local unit = require "procman.pg.unit"

local encode, decode = procman.encode, procman.decode

local M = {}
local Worker = {}
Worker.__index = Worker
Worker.__name = "procman.pg.worker"

M.partition = routes.partition

local OPTIONS = { conninfo = true, workflows = true, partitions = true, batch = true, clock = true,
                  on_error = true, cache = true, warn = true, reconnect = true, on_unknown = true,
                  on_late = true, on_unroutable = true, hooks = true }

local function fail(fmt, ...)
  error("procman.pg.worker: " .. string.format(fmt, ...), 3)
end

local function label(name, flow_id)
  return string.format("%s/%s", name, tostring(flow_id))
end

-- ---------------------------------------------------------------------
-- Options and connection
-- ---------------------------------------------------------------------

local function positive_integer(opts, key, default)
  local v = opts[key]
  if v == nil then return default end
  if math.type(v) ~= "integer" or v < 1 then
    fail("%s must be a positive integer, got %s", key, tostring(v))
  end
  return v
end

local function check_reconnect(r)
  r = r or {}
  if type(r) ~= "table" then fail("reconnect must be a table, got %s", type(r)) end
  local out = { initial = r.initial or 0.05, max = r.max or 5, attempts = r.attempts }
  for _, k in ipairs { "initial", "max" } do
    if type(out[k]) ~= "number" or out[k] ~= out[k] or out[k] < 0 then
      fail("reconnect.%s must be seconds >= 0", k)
    end
  end
  if out.attempts ~= nil and (math.type(out.attempts) ~= "integer" or out.attempts < 1) then
    fail("reconnect.attempts must be a positive integer (or nil: never give up)")
  end
  return out
end

local function check_options(opts)
  if type(opts) ~= "table" then fail("options must be a table, got %s", type(opts)) end
  for k in pairs(opts) do
    if not OPTIONS[k] then fail("unknown option %s", tostring(k)) end
  end
  if type(opts.conninfo) ~= "string" then fail("conninfo must be a string, got %s", type(opts.conninfo)) end
  local n = opts.partitions or 16
  if math.type(n) ~= "integer" or n < 1 or n > 100000 then
    fail("partitions must be an integer from 1 to 100000, got %s", tostring(n))
  end
  for _, f in ipairs { "clock", "warn" } do
    if opts[f] ~= nil and type(opts[f]) ~= "function" then fail("%s must be a function", f) end
  end
  local on_error = opts.on_error or "dead_letter"
  if on_error ~= "dead_letter" and on_error ~= "park" then
    fail('on_error must be "dead_letter" or "park", got %s', tostring(on_error))
  end
  return { partitions = n, batch = positive_integer(opts, "batch", 200), on_error = on_error,
           cache_limit = positive_integer(opts, "cache", 10000), reconnect = check_reconnect(opts.reconnect),
           policies = policies.check(opts) }
end

-- The workflows as the router takes them: the newest version of each
-- (new flows start on it), every version (a flow runs the one it started
-- on: procman_flows.workflow_version), and the event types each
-- workflow handles in some version.
local function workflows_of(list)
  local specs, by_name, versions = workflow.routable(list)
  if not specs then fail("%s", by_name) end
  local types_of, known_types = {}, {}
  for name, by_version in pairs(versions) do
    types_of[name] = {}
    for _, spec in pairs(by_version) do
      for event_type in pairs(spec.on) do types_of[name][event_type], known_types[event_type] = true, true end
    end
  end
  return { specs = specs, by_name = by_name, versions = versions, types_of = types_of,
           known_types = known_types }
end

-- Refuse a store whose live flows run a version of a workflow this worker
-- was not given (as the router refuses such a journal): running them on
-- other code would be wrong, and dead-lettering their events would lose
-- them. Workflows the worker does not run at all are not its business.
local function check_versions(conn, wf)
  -- live flows, and flows parked on their first event (they have no flow row)
  local rows = db.exec(conn, "SELECT workflow, workflow_version AS v, count(*) AS n FROM ("
                             .. "SELECT workflow, workflow_version FROM procman_flows WHERE NOT done "
                             .. "UNION ALL SELECT p.workflow, p.workflow_version FROM procman_parked p "
                             .. "WHERE p.n = 1 AND "
                             .. "NOT EXISTS (SELECT 1 FROM procman_flows f WHERE f.workflow = p.workflow "
                             .. "AND f.key_hash = p.key_hash)) AS live "
                             .. "GROUP BY workflow, workflow_version ORDER BY workflow, v")
  local live = {}
  for _, r in ipairs(rows) do
    if wf.versions[r.workflow] then
      live[r.workflow] = live[r.workflow] or {}
      live[r.workflow][r.v] = r.n
    end
  end
  local why = replay_plan.missing(live, wf.versions)
  if why then
    why = why:gsub("the journal has", "the store has"):gsub("this router", "this worker")
    error("procman.pg.worker: " .. why, 0)
  end
end

-- Every worker must cut the flows into the same partitions.
local function agree_on_partitions(conn, n)
  db.exec(conn, "INSERT INTO procman_config (key, value) VALUES ('partitions', $1::bytea) "
                .. "ON CONFLICT (key) DO NOTHING", pgcore.bytes(tostring(n)))
  local rows = db.exec(conn, "SELECT value FROM procman_config WHERE key = 'partitions'")
  if tonumber(rows[1].value) ~= n then
    error(string.format("procman.pg.worker: the store is partitioned in %s, this worker was given "
                        .. "partitions = %d", rows[1].value, n), 0)
  end
end

-- Open a session: schema, partitioning, routes, presence, LISTEN. The
-- partitions are claimed afresh (a lost session lost its locks).
local function connect(self)
  local conn, err = pgcore.connect(self.conninfo)
  if not conn then return nil, err end
  local ok, why = pcall(function()
    schema.check(conn)
    check_versions(conn, self.wf)
    agree_on_partitions(conn, self.partitions)
    routes.register(conn, self.specs, self.partitions)
    partitions.present(conn)
    db.exec(conn, "LISTEN " .. producer.CHANNEL)  -- appends wake an idle run (a constant name)
  end)
  if not ok then
    conn:close()
    return nil, message(why)
  end
  self.conn, self.owned, self.owned_count, self.claimed_at = conn, {}, 0, nil
  self:forget_all()
  return true
end

--- pg.worker { conninfo, workflows, partitions = 16, batch = 200, clock = os.time,
--              on_error = "dead_letter" | "park", cache = 10000 (live flows kept),
--              on_unknown = "ignore" | "dead_letter", on_late = "dead_letter" | "ignore",
--              hooks = { name = fn } (procman.hooks), warn = function(message),
--              reconnect = { initial, max, attempts } }
function M.new(opts)
  local o = check_options(opts)
  local wf = workflows_of(opts.workflows)
  local self = setmetatable({
    conninfo = opts.conninfo, wf = wf, workflow_list = opts.workflows, specs = wf.specs, by_name = wf.by_name,
    partitions = o.partitions,
    batch = o.batch, on_unknown = o.policies.on_unknown, on_late = o.policies.on_late,
    hooks = o.policies.hooks,
    clock = opts.clock or os.time, on_error = o.on_error, cache_limit = o.cache_limit,
    warn = opts.warn, reconnect_opts = o.reconnect, cache = {}, cache_size = 0, owned = {}, owned_count = 0,
    stats = { events = 0, handled = 0, commands = 0, dead = 0, timers = 0, commits = 0, parked = 0,
              isolated = 0, reconnects = 0 },
  }, Worker)
  local ok, err = connect(self)
  if not ok then error(err, 2) end
  return self
end

-- A failure the worker goes on after: the warn option, else Lua's warn.
function Worker:report(text)
  if self.warn then self.warn(text) else warn("procman.pg.worker: ", text) end
end

--- w:reconnect([stop]) -> true, or nil, message once it gives up (after
-- reconnect.attempts failures; never without that option) or stop() says so.
function Worker:reconnect(stop)
  if self.conn then self.conn:close() end
  self.conn = nil
  local ok, err = db.with_backoff("procman.pg.worker", self.reconnect_opts,
                                  function() return connect(self) end,
                                  function(text) self:report(text) end,
                                  stop and function() return stop(self) end)
  if ok then self.stats.reconnects = self.stats.reconnects + 1 end
  return ok, err
end
-- ---------------------------------------------------------------------
-- The cache: live flows by workflow and key, bounded
-- ---------------------------------------------------------------------

function Worker:forget_all()
  self.cache, self.cache_size = {}, 0
end

function Worker:forget_partition(p)
  for k, entry in pairs(self.cache) do
    if entry.partition == p then
      self.cache[k] = nil
      self.cache_size = self.cache_size - 1
    end
  end
end

local function cache_put(self, k, entry)
  if self.cache[k] == nil then self.cache_size = self.cache_size + 1 end
  self.cache[k] = entry
end

local function cache_drop(self, k)
  if self.cache[k] ~= nil then
    self.cache[k] = nil
    self.cache_size = self.cache_size - 1
  end
end

-- Keep at most cache_limit flows: drop the least recently used (they are
-- reloaded from the store on demand).
local function trim_cache(self)
  if self.cache_size <= self.cache_limit then return end
  local list = {}
  for k, entry in pairs(self.cache) do list[#list + 1] = { k = k, used = entry.used or 0 } end
  table.sort(list, function(a, b) return a.used < b.used end)
  for i = 1, #list - (self.cache_limit * 9) // 10 do cache_drop(self, list[i].k) end
end

-- Load the flows of 'targets' ({ spec, flow, key, partition }) the cache
-- lacks, three statements however many; 'loaded' (key -> entry or false)
-- then knows each: live flows also go to the cache, completed ones only
-- to 'loaded' (they are not cached).
local function preload(self, targets, loaded)
  local want = {}
  for _, t in ipairs(targets) do
    local k = unit.key_of(t.spec.name, t.flow)
    if loaded[k] == nil then
      local cached = self.cache[k]
      loaded[k] = cached or false
      if cached == nil then want[#want + 1] = t end
    end
  end
  for k, entry in pairs(store.load(self.conn, want, self.wf.versions)) do
    loaded[k] = entry
    if not entry.done then cache_put(self, k, entry) end
  end
end

-- A unit of work (procman.pg.unit) whose flows come from 'loaded'; a flow
-- the batch did not foresee is loaded when the router asks for it (a
-- failure there fails the unit: nothing of it is written).
local function new_unit(self, loaded)
  self.tick_count = (self.tick_count or 0) + 1
  local stamp = self.tick_count
  return unit.new(self, function(k, name, flow_id)
    if loaded[k] == nil then
      local t = { spec = self.by_name[name], flow = flow_id, key = encode(flow_id),
                  partition = routes.partition(name, flow_id, self.partitions) }
      local ok, err = pcall(preload, self, { t }, loaded)
      if not ok then
        loaded.failed = loaded.failed or err
        loaded[k] = false
      end
    end
    local entry = loaded[k] or nil
    if entry then entry.used = stamp end
    return entry
  end)
end

-- ---------------------------------------------------------------------
-- Committing
-- ---------------------------------------------------------------------

-- Commit a unit (with the checkpoint 'cp', or none); on success the cache
-- follows (completed flows leave it), on failure it is dropped (the store
-- is the truth).
local function commit(self, u, cp, loaded)
  if loaded and loaded.failed then
    self:forget_all()
    return nil, loaded.failed
  end
  local work = u:writes()
  if cp then work.xid, work.position = cp.xid, cp.position end
  local ok, written = pcall(db.transaction, self.conn, store.write, work, partitions.list(self))
  if not ok then
    self:forget_all()
    return nil, written
  end
  for i, d in ipairs(work.dead) do d.letter.id = written.dead_ids[i] end
  for k, entry in pairs(u.cached(work.changed)) do
    if entry then
      entry.used = self.tick_count
      cache_put(self, k, entry)
    else
      cache_drop(self, k)
    end
  end
  if cp then
    for p, old in pairs(self.owned) do
      if partitions.before(old, cp) then self.owned[p] = cp end
    end
  end
  local s = self.stats
  s.handled, s.commands, s.dead, s.commits, s.parked = s.handled + u.handled, s.commands + #work.outbox,
                                                       s.dead + #work.dead, s.commits + 1, s.parked + u.parked
  trim_cache(self)
  s.cached = self.cache_size
  if u.calls then policies.run(self.hooks, u.calls, function(text) self:report(text) end) end
  return true
end

-- May a failed commit be blamed on the unit's events (and retried one by
-- one)? Not a lost connection, not another owner's write.
local function isolatable(self, err)
  return not (type(err) == "table" and err.conflict) and not db.is_connection_loss(err, self.conn)
end

-- ---------------------------------------------------------------------
-- Steps
-- ---------------------------------------------------------------------

-- The flows an event may go to in this worker's partitions (to load them
-- in one go; the router decides), or nil and why it cannot be routed.
local function targets_of(self, event)
  local event_type, list = rawget(event, "event_type"), {}
  for _, spec in ipairs(self.specs) do
    if self.wf.types_of[spec.name][event_type] then
      local id, why = workflow.flow_id(spec, event)
      if id == nil then return nil, why end
      list[#list + 1] = { spec = spec, flow = id, key = encode(id),
                          partition = routes.partition(spec.name, id, self.partitions) }
    end
  end
  return list
end

local function after_checkpoint(self, p, ev)
  local cp = self.owned[p]
  return cp ~= nil and partitions.before(cp, ev)
end

-- The read, in one statement, below the oldest running transaction (one
-- bound for the whole statement), in (transaction id, position) order:
-- for each owned partition, the next events of that partition after its
-- own checkpoint (an index range scan on (partition, xid, position) that
-- touches no other partition's events); the events stored for every
-- worker (no partition), and those appended under an old generation of
-- the routes (procman.pg.routes), after the lowest checkpoint; of all
-- these, the first 'batch', with their payloads. And the last event of
-- the store below the bound, the horizon: when the batch is not full,
-- every event up to the bound that concerns these partitions is in it,
-- so the checkpoints may move to the horizon (a partition without
-- events does not hold the lowest checkpoint back).
--
-- Each stream is written so that PostgreSQL reads its index in order and
-- stops after 'batch' entries, however long the backlog: the row
-- comparison starts with the index's leading column (the equality alone
-- lets the planner prefer the (xid, position) index with a filter), the
-- ORDER BY is the index's, and the bound is a scalar (a join with it
-- would lose the index order and sort the whole range). The payloads are
-- then fetched by key (a join may hash the whole table).
local function stream(column, where)
  return "(SELECT e.position, e.xid FROM procman_events e WHERE " .. where
    .. " AND e.xid < (SELECT x FROM bound) ORDER BY " .. column .. "e.xid, e.position LIMIT $6)"
end

local READ = "WITH bound AS MATERIALIZED (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS x), "
  .. "own (p, x, pos) AS (SELECT * FROM unnest($3::int[], $4::bigint[], $5::bigint[])), "
  .. "mine AS ((SELECT s.* FROM own, LATERAL "
  .. stream("e.partition, ", "e.partition = own.p "
            .. "AND (e.partition, e.xid, e.position) > (own.p, own.x::text::xid8, own.pos)") .. " s) "
  .. "UNION " .. stream("", "e.partition IS NULL AND (e.xid, e.position) > ($1::text::xid8, $2)") .. " "
  .. "UNION (SELECT s.* FROM procman_routes r, unnest(r.history) AS g (gen), LATERAL "
  .. stream("e.route_gen, ", "e.route_gen = g.gen AND e.partition IS NOT NULL "
            .. "AND (e.route_gen, e.xid, e.position) > (g.gen, $1::text::xid8, $2)") .. " s)), "
  .. "batch AS (SELECT * FROM mine ORDER BY xid, position LIMIT $6) "
  .. "SELECT b.position, b.xid::text::bigint AS xid, e.payload, e.partition, false AS horizon FROM batch b, "
  .. "LATERAL (SELECT payload, partition FROM procman_events WHERE position = b.position LIMIT 1) e "
  .. "UNION ALL (SELECT e.position, e.xid::text::bigint, NULL, NULL, true FROM procman_events e "
  .. "WHERE e.xid < (SELECT x FROM bound) ORDER BY e.xid DESC, e.position DESC LIMIT 1) "
  .. "ORDER BY horizon, xid, position"

-- A stored event whose payload cannot be decoded (damaged in the store):
-- a dead letter, never a step that fails on it again and again. The
-- letter's event is what the store still says (its type and id) with the
-- stored bytes as they are.
local function damaged(self, ev, payload, why)
  local row = db.exec(self.conn, "SELECT event_type, event_key FROM procman_events WHERE position = $1",
                      ev.position)[1]
  local ok, id = pcall(decode, row.event_key)
  ev.event = { event_type = row.event_type, event_id = ok and id or row.event_key, payload = payload }
  ev.damaged = string.format("procman.pg.worker: the stored payload of the event at position %d cannot "
                             .. "be decoded (%s): its bytes are kept in this letter's event.payload",
                             ev.position, message(why))
end

-- Is this worker to hand the event to its router? When it owns one of
-- the flows the event may go to (after that partition's checkpoint), or
-- keeps the event's own judgement (no workflow handles its type, it
-- cannot be routed): the owner of the partition it is stored for (of
-- partition 0 when it has none), so that one worker judges it.
local function concerned(self, ev)
  local keeper = after_checkpoint(self, ev.partition or 0, ev)
  ev.keeper = keeper
  if ev.damaged then return keeper end
  local targets = targets_of(self, ev.event)
  if targets == nil then return keeper end
  for _, t in ipairs(targets) do
    if after_checkpoint(self, t.partition, ev) then ev.mine[#ev.mine + 1] = t end
  end
  return keeper or #ev.mine > 0
end

local function read_events(self)
  local low = partitions.lowest(self)
  if low == nil then return {} end
  local list, xids, positions = partitions.list(self), {}, {}
  for i, p in ipairs(list) do xids[i], positions[i] = self.owned[p].xid, self.owned[p].position end
  local function array(a) return "{" .. table.concat(a, ",") .. "}" end
  local rows = db.exec(self.conn, READ, low.xid, low.position, array(list), array(xids), array(positions),
                       self.batch)
  local events, horizon = {}, nil
  for _, row in ipairs(rows) do
    if row.horizon then
      horizon = { xid = row.xid, position = row.position }
    else
      local ev = { xid = row.xid, position = row.position, partition = row.partition, mine = {} }
      local ok, event = pcall(decode, row.payload)
      if ok then ev.event = event else damaged(self, ev, row.payload, event) end
      ev.concerned = concerned(self, ev)
      events[#events + 1] = ev
    end
  end
  if #events == self.batch then horizon = nil end
  return events, horizon, low
end

-- Hand the events to a unit's router (a damaged one is a dead letter).
local function handle_events(u, events)
  for _, ev in ipairs(events) do
    if ev.damaged then
      local letter = u:dead_letter(ev.position, nil, nil, ev.damaged, ev.event)
      if u.calls then u.calls[#u.calls + 1] = table.pack("dead_letter", letter) end
    elseif ev.concerned then
      u:handle(ev)
    end
  end
end

local function all_targets(events)
  local list = {}
  for _, ev in ipairs(events) do table.move(ev.mine, 1, #ev.mine, #list + 1, list) end
  return list
end

-- Units (events or timers) again, one per transaction: fill(u, unit)
-- runs one in a unit; one whose transaction the store refuses is handed
-- to refuse(u, unit, reason) in a new unit instead (a dead letter).
-- targets(unit): the flows to load first (the cache is dropped on
-- failure); checkpoint(unit): where the checkpoints move with it.
local function one_by_one(self, units, how)
  for _, one in ipairs(units) do
    local loaded = {}
    preload(self, how.targets(one), loaded)
    local u = new_unit(self, loaded)
    how.fill(u, one)
    local ok, err = commit(self, u, how.checkpoint(one), loaded)
    if not ok then
      if not isolatable(self, err) then return nil, err end
      loaded = {}
      preload(self, how.targets(one), loaded)
      u = new_unit(self, loaded)
      how.refuse(u, one, message(err))
      ok, err = commit(self, u, how.checkpoint(one), loaded)
      if not ok then return nil, err end
    end
  end
  self.stats.isolated = self.stats.isolated + 1
  return true
end

-- The batch again, one event per transaction: the ones the store refuses
-- become dead letters with its reason.
local function isolate(self, events)
  return one_by_one(self, events, {
    targets = function(ev) return ev.mine end,
    checkpoint = function(ev) return { xid = ev.xid, position = ev.position } end,
    fill = function(u, ev) handle_events(u, { ev }) end,
    refuse = function(u, ev, why)
      if not (ev.concerned or ev.damaged) then return end
      local letter = u:dead_letter(ev.position, nil, nil, "procman.pg.worker: the store refused this event's "
                                   .. "changes: " .. why, ev.event)
      if u.calls then u.calls[#u.calls + 1] = table.pack("dead_letter", letter) end
    end,
  })
end

local function claim(self)
  local now = os.time()
  if self.owned_count > 0 and self.claimed_at == now then return end
  self.claimed_at = now
  partitions.claim(self)
end

local function step(self)
  claim(self)
  local events, horizon, low = read_events(self)
  if #events == 0 then
    if horizon and partitions.before(low, horizon) then  -- nothing of ours up to there
      local ok, err = commit(self, new_unit(self, {}), horizon)
      if not ok then return nil, err end
    end
    return 0
  end
  local loaded = {}
  preload(self, all_targets(events), loaded)
  local u = new_unit(self, loaded)
  handle_events(u, events)
  local last = horizon or events[#events]
  local ok, err = commit(self, u, { xid = last.xid, position = last.position }, loaded)
  if not ok then
    if not isolatable(self, err) then return nil, err end
    ok, err = isolate(self, events)
    if not ok then return nil, err end
  end
  self.stats.events = self.stats.events + #events
  return #events
end

-- Numbers of the store's position sequence that no event has: the
-- sequence numbers of a tick's or a resume's records (procman.pg.unit).
local NEXT_NUMBER = "SELECT nextval(pg_get_serial_sequence('procman_events', 'position'))"

local function sequence_number(self)
  return db.exec(self.conn, NEXT_NUMBER .. " AS v")[1].v
end

-- The due timers of the owned partitions, in due order, at most a batch.
local function due_timers(self, now)
  local list = partitions.list(self)
  if #list == 0 then return {} end
  -- (with the tick's sequence number: evaluated once, and only when a timer is due)
  local rows = db.exec(self.conn, "SELECT workflow, flow_key, partition, seq, index, (" .. NEXT_NUMBER
                                  .. ") AS v FROM procman_timers WHERE partition = ANY($1::int[]) "
                                  .. "AND due <= $2 ORDER BY due, seq, index LIMIT $3",
                       "{" .. table.concat(list, ",") .. "}", now, self.batch)
  local targets = { number = rows[1] and rows[1].v }
  for _, row in ipairs(rows) do
    local spec = self.by_name[row.workflow]
    if spec then
      targets[#targets + 1] = { spec = spec, flow = decode(row.flow_key), key = row.flow_key,
                                partition = row.partition, seq = row.seq, index = row.index }
    end
  end
  return targets
end

-- Fire timers in a unit: the router's tick over their flows.
local function fire(u, targets, now)
  for _, t in ipairs(targets) do u:ensure(t.spec.name, t.flow) end
  u:sequence(targets.number)
  u:tick(now, #targets)
end

-- The timers again, one per transaction: a timer whose event the store
-- refuses goes, its event a dead letter with the reason (as for events).
local function isolate_timers(self, targets, now)
  return one_by_one(self, targets, {
    targets = function(t) return { t } end,
    checkpoint = function() return nil end,
    fill = function(u, t)
      u:ensure(t.spec.name, t.flow)
      if u.r.schedule:find(t.spec.name, t.flow, t.seq, t.index) then
        u:sequence(sequence_number(self))
        u:tick(now, 1)
      end
    end,
    refuse = function(u, t, why)
      u:drop_timer(t.spec.name, t.flow, t.seq, t.index,
                   "procman.pg.worker: the store refused this timer's changes: " .. why)
    end,
  })
end

local function tick(self, now)
  claim(self)
  now = now or self.clock()
  local targets = due_timers(self, now)
  if #targets == 0 then return 0 end
  local loaded = {}
  preload(self, targets, loaded)
  local u = new_unit(self, loaded)
  fire(u, targets, now)
  local ok, err = commit(self, u, nil, loaded)
  if not ok then
    if not isolatable(self, err) then return nil, err end
    ok, err = isolate_timers(self, targets, now)
    if not ok then return nil, err end
  end
  self.stats.timers = self.stats.timers + #targets
  return #targets
end

-- Run a step or a tick; any error comes back as nil, message.
local function protected(self, fn, ...)
  if self.conn == nil then return nil, "procman.pg.worker: not connected (closed, or reconnecting failed)" end
  local ok, n, err = pcall(fn, self, ...)
  if not ok then
    self:forget_all()
    return nil, message(n)
  end
  if n == nil then return nil, message(err) end
  return n
end

--- w:step() -> how many events it read (0: nothing new), or nil, message
-- (the batch was rolled back; the next step reads it again).
function Worker:step()
  return protected(self, step)
end

--- w:tick([now]) -> how many timers fired, or nil, message: inject the
-- events of the timers due at 'now' (default the clock) in this worker's
-- partitions, in due order, in one transaction.
function Worker:tick(now)
  return protected(self, tick, now)
end

--- w:claim() -> the number of partitions owned (at once, not once a second).
function Worker:claim()
  partitions.claim(self)
  self.claimed_at = os.time()
  return self.owned_count
end

--- w:owned_partitions() -> the partitions this worker owns, sorted.
function Worker:owned_partitions()
  return partitions.list(self)
end

-- ---------------------------------------------------------------------
-- Parked flows: the router's resume and skip
-- ---------------------------------------------------------------------

local function resume(self, name, flow_id, skip)
  local spec = self.by_name[name]
  if spec == nil then fail("no workflow named %s", tostring(name)) end
  if not (math.type(flow_id) == "integer" or (type(flow_id) == "string" and flow_id ~= "")) then
    fail("a flow id is a non-empty string or an integer, got %s", type(flow_id))
  end
  local t = { spec = spec, flow = flow_id, key = encode(flow_id),
              partition = routes.partition(name, flow_id, self.partitions) }
  self:claim()
  if not self.owned[t.partition] then
    fail("flow %s is in partition %d, which this worker does not own", label(name, flow_id), t.partition)
  end
  local loaded = {}
  preload(self, { t }, loaded)
  local u = new_unit(self, loaded)
  local entry = u:ensure(name, flow_id)
  if entry == nil or entry.parked == nil then fail("flow %s is not parked", label(name, flow_id)) end
  u:sequence(sequence_number(self))
  local applied, why = u:resume(name, flow_id, skip)
  local ok, err = commit(self, u, nil, loaded)
  if not ok then return nil, message(err) end
  return applied, why
end

--- w:resume(workflow, flow) -> events applied[, error]: r:resume on the
-- flow, in one transaction: retry its parked events in order (after a
-- fix of the code); when one fails again the flow stays parked with that
-- error.
function Worker:resume(name, flow_id)
  return resume(self, name, flow_id, false)
end

--- w:skip(workflow, flow) -> events applied[, error]: r:skip: drop the
-- first parked event, then resume the rest.
function Worker:skip(name, flow_id)
  return resume(self, name, flow_id, true)
end

-- ---------------------------------------------------------------------
-- Running
-- ---------------------------------------------------------------------

--- w:run{ stop = function(w) -> true to stop, idle = seconds, on_error = fn }
-- Steps and ticks until stop() says so. When there was nothing to do it
-- waits for an append's notification, at most 'idle' seconds. Every
-- failure goes to on_error (else the warn option, else warn); a lost
-- connection is reopened with backoff. Returns true when stopped, or nil,
-- message when reconnecting gave up.
function Worker:run(opts)
  opts = opts or {}
  local idle = opts.idle or 0.05
  local report = opts.on_error or function(err) self:report(err) end
  while not (opts.stop and opts.stop(self)) do
    local n, err = self:step()
    if n == nil then report(err) end
    local fired, terr = self:tick()
    if fired == nil then report(terr) end
    if self.conn == nil or not self.conn:alive() then
      local ok, why = self:reconnect(opts.stop)
      if not ok then return nil, why end
    elseif (n or 0) == 0 and (fired or 0) == 0 then
      local _, why = self.conn:wait(idle)
      if why then report(why) end
    end
  end
  return true
end

--- w:close(): let the partitions go (the session ends); safe twice.
function Worker:close()
  if self.conn then
    self.conn:close()
    self.conn = nil
  end
end

Worker.__close = Worker.close
Worker.__gc = Worker.close

return M
