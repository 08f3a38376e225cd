--- procman.pg.worker: run flows from the shared event store.
--
-- A flow belongs to partition hash(workflow, flow id) mod N; a worker owns
-- partitions (procman.pg.partitions). A step reads, in (transaction id,
-- position) order, the events after its checkpoints that may concern its
-- partitions, routes each by the router's rules (procman.workflow's
-- flow_id, the same dead letters, parking with on_error = "park"), and
-- commits in ONE transaction: the flows' new state and version (checked
-- against the version it read, so two owners can never both write), the
-- outbox rows, the timers, the parked events, the dead letters and the
-- checkpoints (procman.pg.store, one statement per table).
--
-- Failure isolation: when the commit fails for anything but a lost
-- connection or another owner, the worker forgets its cache and handles
-- the batch again one event per transaction; an event whose own
-- transaction fails becomes a dead letter with the database's reason, and
-- the rest commits. No input can stall a partition.
--
-- The router's rules, where a worker can keep them: workflow versions
-- (new flows on the newest, each flow on the version it started on), the
-- policies on_unknown, on_late and on_unroutable and the hooks
-- (procman.pg.policies: called after the commit of what they report).
--
-- Connection loss: w:run reconnects with backoff (forever, unless told a
-- number of attempts), reports each failure (the on_error hook, else
-- warn), and starts again from the stored checkpoints: nothing is lost and
-- nothing is applied twice, since state and checkpoints commit together.
local procman = require "procman"
local core = require "procman.core"
local workflow = require "procman.workflow"
local timers = require "procman.timers"
local records = require "procman.records"
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

local encode, decode = procman.encode, procman.decode

local M = {}
local Worker = {}
Worker.__index = Worker
Worker.__name = "procman.pg.worker"

M.partition = routes.partition

local OPTIONS = { conninfo = true, workflows = true, partitions = true, batch = true, clock = true,
                  on_error = true, cache = true, warn = true, reconnect = true, on_unknown = true,
                  on_late = true, on_unroutable = true, hooks = true }
local NO_MEMORY = "not enough memory"  -- never a reason to park or dead-letter
local START = "[*]"  -- the status before a flow's first event (procman.journal_view's START)

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
    conninfo = opts.conninfo, wf = wf, specs = wf.specs, by_name = wf.by_name, partitions = o.partitions,
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

local function cache_key(name, key)
  return name .. "\0" .. key
end

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

local function cache_put(self, entry)
  local k = cache_key(entry.spec.name, entry.key)
  if self.cache[k] == nil then self.cache_size = self.cache_size + 1 end
  self.cache[k] = entry
end

local function cache_drop(self, entry)
  local k = cache_key(entry.spec.name, entry.key)
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
  for _, entry in pairs(self.cache) do list[#list + 1] = entry end
  table.sort(list, function(a, b) return (a.used or 0) < (b.used or 0) end)
  for i = 1, #list - (self.cache_limit * 9) // 10 do cache_drop(self, list[i]) end
end

-- Load into the cache the flows of 'targets' it lacks (three statements
-- however many): after this, a miss means the store has no such flow.
local function preload(self, targets)
  local want, seen = {}, {}
  for _, t in ipairs(targets) do
    local k = cache_key(t.spec.name, t.key)
    if self.cache[k] == nil and not seen[k] then
      seen[k] = true
      want[#want + 1] = t
    end
  end
  for _, entry in pairs(store.load(self.conn, want, self.wf.versions)) do cache_put(self, entry) end
end

-- ---------------------------------------------------------------------
-- Handling one event on one flow (the router's rules)
-- ---------------------------------------------------------------------

local function new_work(self, now)
  self.tick_count = (self.tick_count or 0) + 1
  return { changed = {}, changed_set = {}, outbox = {}, dead = {}, transitions = {}, handled = 0,
           now = now or self.clock(), stamp = self.tick_count, hooks = self.hooks and {} or nil }
end

local function touch(work, entry)
  entry.used = work.stamp
  if not work.changed_set[entry] then
    work.changed_set[entry] = true
    work.changed[#work.changed + 1] = entry
  end
end

-- A dead letter; its hook gets it as pg.dead_letters lists it, with the
-- id the store gives it.
local function dead_letter(work, position, t, err, event)
  local letter = { position = position, workflow = t and t.spec.name, flow = t and t.flow,
                   error = message(err), event = event }
  work.dead[#work.dead + 1] = { letter = letter, position = position, workflow = letter.workflow,
                                key = t and t.key, error = letter.error, event = encode(event) }
  policies.queue(work, "dead_letter", letter)
end

-- An event a policy (on_unknown, on_late) judges: a dead letter, or
-- ignored (the event_ignored hook, kind "unknown" or "late").
local function by_policy(work, policy, kind, position, t, why, event)
  if policy == "dead_letter" then return dead_letter(work, position, t, why, event) end
  policies.queue(work, "event_ignored", kind, rawget(event, "event_type"), why)
end

-- The router's wording for a handler's failure.
local function run_handler(entry, event)
  local pm = entry.pm
  local ok, result = pcall(pm.handle, pm, event)
  if not ok and type(result) ~= "string" then
    return nil, string.format("%s: handler for '%s' failed: %s", label(entry.spec.name, entry.flow),
                              rawget(event, "event_type"), message(result))
  end
  if not ok then return nil, result end
  local plain, directives
  ok, plain, directives = pcall(timers.split, result)
  if not ok then
    return nil, string.format("%s: handler for '%s' returned a bad timer directive: %s",
                              label(entry.spec.name, entry.flow), rawget(event, "event_type"), plain)
  end
  return plain, directives
end

-- What a flow needs to know after an event, and its outbox rows: may
-- raise (a status or done function that fails, a state or a command that
-- is not data), before anything changed.
local function after_event(entry, plain, position)
  local name, version = entry.spec.name, entry.pm:version()
  local rows = {}
  for i, command in ipairs(plain) do
    local id = records.command_id(name, entry.flow, version, i)
    local envelope = { id = id, workflow = name, flow = entry.flow, command = command }
    rows[i] = { id = id, workflow = name, key = entry.key, position = position, envelope = encode(envelope),
                plain = envelope }
  end
  local done, status = entry.pm:done(), entry.pm:status()
  return { done = done, status = status, snapshot = table.pack(core.snapshot(entry.pm)), outbox = rows }
end

-- Count the edge (status before, event type, status after) for procman
-- diagram.
local function count_transition(work, entry, before, event, status)
  local from = before == 0 and START or tostring(entry.status)
  local edge = encode { from, rawget(event, "event_type"), tostring(status) }
  local key = entry.spec.name .. "\0" .. edge
  local t = work.transitions[key]
  if t == nil then
    t = { workflow = entry.spec.name, edge = edge, count = 0 }
    work.transitions[key] = t
  end
  t.count = t.count + 1
end

-- Apply an event to a flow that has a pm; nil, or the error with the flow
-- unchanged.
local function apply(work, entry, event, position)
  local before = entry.pm:version()
  local started = work.hooks and core.monotonic()
  local plain, directives = run_handler(entry, event)
  local ok, after, why = plain ~= nil, nil, directives
  if ok then
    if entry.pm:version() == before then return nil end  -- a redelivery: nothing
    ok, after = pcall(after_event, entry, plain, position)
    if not ok then why = after end
  end
  if not ok then
    if entry.pm:version() > before then core.undo(entry.pm) end
    return message(why)
  end
  table.move(after.outbox, 1, #after.outbox, #work.outbox + 1, work.outbox)
  count_transition(work, entry, before, event, after.status)
  if directives then  -- timers named by the flow's version: the same in every worker
    entry.timers = timers.apply(entry.timers, directives, work.now, entry.pm:version())
    entry.timers_changed = true
  end
  entry.done, entry.status, entry.snapshot = after.done, after.status, after.snapshot
  if after.done then entry.timers_changed = true end  -- its timers go with it
  work.handled = work.handled + 1
  if work.hooks then
    local name, flow_id = entry.spec.name, entry.flow
    if before == 0 and not work.resuming then  -- a flow routed to, not one resumed
      policies.queue(work, "flow_started", name, flow_id)
    end
    policies.queue(work, "event_handled", name, flow_id, rawget(event, "event_type"),
                   core.monotonic() - started)
    if after.done then policies.queue(work, "flow_completed", name, flow_id, after.status) end
    work.commands_at = #work.hooks + 1  -- (the router reports the flow's hooks, then the commands)
    for _, row in ipairs(after.outbox) do policies.queue(work, "command_emitted", row.plain) end
  end
  return nil
end

local function park(self, work, entry, event, err)
  entry.parked = { events = { event }, error = err }
  entry.parked_changed = true
  self.stats.parked = self.stats.parked + 1
  policies.queue(work, "flow_parked", entry.spec.name, entry.flow, err)
  touch(work, entry)
end

-- Events still parked when a retried one completed the flow (the retried
-- one is off the list already): dead letters.
local function complete_parked(work, entry)
  if not entry.parked then return end
  for i = 1, #entry.parked.events do
    dead_letter(work, nil, entry, string.format("flow %s completed while this event was parked",
                                                label(entry.spec.name, entry.flow)), entry.parked.events[i])
  end
  entry.parked, entry.parked_changed = nil, true
end

-- A new flow for an event that may start one; nil, why when it cannot
-- (and "unknown" when the version new flows start on has no handler for
-- it: on_unknown judges it).
local function new_flow(self, t, event)
  local event_type = rawget(event, "event_type")
  if t.spec.on[event_type] == nil then
    return nil, string.format("no flow %s for %s, and version %d of %s (new flows start on it) has no "
                              .. "handler for it", label(t.spec.name, t.flow), event_type, t.spec.version,
                              t.spec.name), "unknown"
  end
  if not t.spec.starts_set[event_type] then
    return nil, string.format("no flow %s for %s", label(t.spec.name, t.flow), event_type)
  end
  local entry = { spec = t.spec, flow = t.flow, key = t.key, partition = t.partition }
  local ok, pm = pcall(core.new, t.spec, t.flow)
  if not ok then return entry, message(pm) end
  entry.pm = pm
  cache_put(self, entry)
  return entry
end

-- Handle an event on one target flow of an owned partition, into 'work'.
-- fired: the timer that injected it (removed whatever happens).
local function handle(self, work, t, event, position, fired)
  local entry = self.cache[cache_key(t.spec.name, t.key)]
  if fired and entry then
    entry.timers = timers.remove(entry.timers, fired.seq, fired.index)
    entry.timers_changed = true
    touch(work, entry)
  end
  local event_type = rawget(event, "event_type")
  if entry and entry.done then
    return by_policy(work, self.on_late, "late", position, t,
                     string.format("flow %s is complete (%s): event '%s' came after it finished",
                                   label(t.spec.name, t.flow), tostring(entry.status), event_type), event)
  end
  if entry and not fired and (entry.pm or entry.parked) and entry.spec.on[event_type] == nil then
    return by_policy(work, self.on_unknown, "unknown", position, t,  -- the flow runs an older version
                     string.format("flow %s runs version %d of %s, which has no handler for '%s'",
                                   label(t.spec.name, t.flow), entry.spec.version, t.spec.name, event_type),
                     event)
  end
  if entry and entry.parked then  -- held behind the parked event, in order
    table.insert(entry.parked.events, event)
    entry.parked_changed = true
    return touch(work, entry)
  end
  local err, kind
  if entry == nil or entry.pm == nil then
    entry, err, kind = new_flow(self, t, event)
    if kind then return by_policy(work, self.on_unknown, kind, position, t, err, event) end
    if entry == nil then return dead_letter(work, position, t, err, event) end
  end
  err = err or apply(work, entry, event, position)
  if err == nil then return touch(work, entry) end
  if self.on_error == "park" and not err:find(NO_MEMORY, 1, true) then
    cache_put(self, entry)
    return park(self, work, entry, event, err)
  end
  if entry.db_version == nil and not work.changed_set[entry] then cache_drop(self, entry) end  -- never was
  dead_letter(work, position, t, err, event)
end

-- ---------------------------------------------------------------------
-- Committing
-- ---------------------------------------------------------------------

-- Commit a batch; on success the cache follows (completed flows leave it),
-- on failure it is dropped (the store is the truth).
local function commit(self, work)
  local ok, written = pcall(db.transaction, self.conn, store.write, work, partitions.list(self))
  if not ok then
    self:forget_all()
    return nil, written
  end
  for i, d in ipairs(work.dead) do d.letter.id = written.dead_ids[i] end
  for _, entry in ipairs(work.changed) do
    if entry.pm then entry.db_version = entry.pm:version() end
    entry.timers_changed, entry.parked_changed, entry.snapshot = nil, nil, nil
    if entry.done then cache_drop(self, entry) end  -- a completed flow: in the store, not in memory
  end
  if work.xid then
    local cp = { xid = work.xid, position = work.position }
    for p, old in pairs(self.owned) do
      if partitions.before(old, cp) then self.owned[p] = cp end
    end
  end
  local s = self.stats
  s.handled, s.commands, s.dead, s.commits = s.handled + work.handled, s.commands + #work.outbox,
                                             s.dead + #work.dead, s.commits + 1
  trim_cache(self)
  s.cached = self.cache_size
  if work.hooks then policies.run(self.hooks, work.hooks, function(text) self:report(text) end) end
  return true
end

-- May a failed commit be blamed on the batch's events (and retried one
-- by one)? Not a lost connection, not another owner's write.
local function isolatable(self, err)
  return not (type(err) == "table" and err.conflict) and not db.is_connection_loss(err, self.conn)
end

-- ---------------------------------------------------------------------
-- Steps
-- ---------------------------------------------------------------------

-- The flows an event goes to (all of them, as the router computes them),
-- or nil and why it cannot be routed.
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

-- The partition whose owner keeps the one dead letter of an event that
-- reaches no flow: the one it is stored for, or 0 (an event for every
-- worker).
local function keeper(ev)
  return ev.partition or 0
end

-- A stored event whose payload cannot be decoded (damaged in the store):
-- a dead letter, never a step that fails on it again and again. The
-- letter's event is what the store still says (its type and id) with the
-- stored bytes as they are.
local function damaged(self, ev, payload, why)
  local row = db.exec(self.conn, "SELECT event_type, event_key FROM procman_events WHERE position = $1",
                      ev.position)[1]
  local ok, id = pcall(decode, row.event_key)
  ev.event = { event_type = row.event_type, event_id = ok and id or row.event_key, payload = payload }
  ev.unroutable = string.format("procman.pg.worker: the stored payload of the event at position %d cannot "
                                .. "be decoded (%s): its bytes are kept in this letter's event.payload",
                                ev.position, message(why))
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
      local targets, why
      if ev.unroutable == nil then targets, why = targets_of(self, ev.event) end
      if targets == nil then
        ev.unroutable = after_checkpoint(self, keeper(ev), ev) and (ev.unroutable or why)
      elseif not self.wf.known_types[rawget(ev.event, "event_type")] then  -- one judgement, by the keeper
        ev.unknown = after_checkpoint(self, keeper(ev), ev)
                     and string.format("no workflow handles event type '%s'", rawget(ev.event, "event_type"))
      else
        for _, t in ipairs(targets) do
          if after_checkpoint(self, t.partition, ev) then ev.mine[#ev.mine + 1] = t end
        end
      end
      events[#events + 1] = ev
    end
  end
  if #events == self.batch then horizon = nil end
  return events, horizon, low
end

local function apply_event(self, work, ev)
  if ev.unroutable then return dead_letter(work, ev.position, nil, ev.unroutable, ev.event) end
  if ev.unknown then
    return by_policy(work, self.on_unknown, "unknown", ev.position, nil, ev.unknown, ev.event)
  end
  for _, t in ipairs(ev.mine) do handle(self, work, t, ev.event, ev.position) end
end

local function all_targets(events)
  local list = {}
  for _, ev in ipairs(events) do table.move(ev.mine, 1, #ev.mine, #list + 1, list) end
  return list
end

-- Units (events or timers) again, one per transaction: fill(work, unit)
-- puts what a unit does into a work; a unit whose transaction the store
-- refuses is handed to refuse(work, unit, reason) instead (a dead letter).
-- targets(unit): the flows to load first (the cache is dropped on failure).
local function one_by_one(self, units, now, targets, fill, refuse)
  for _, unit in ipairs(units) do
    preload(self, targets(unit))
    local work = new_work(self, now)
    fill(work, unit)
    local ok, err = commit(self, work)
    if not ok then
      if not isolatable(self, err) then return nil, err end
      preload(self, targets(unit))
      local dead = new_work(self, now)
      refuse(dead, unit, message(err))
      ok, err = commit(self, dead)
      if not ok then return nil, err end
    end
  end
  self.stats.isolated = self.stats.isolated + 1
  return true
end

-- The batch again, one event per transaction: the ones the store refuses
-- become dead letters with its reason.
local function isolate(self, events)
  return one_by_one(self, events, nil, function(ev) return ev.mine end,
    function(work, ev)
      apply_event(self, work, ev)
      work.xid, work.position = ev.xid, ev.position
    end,
    function(dead, ev, why)
      dead_letter(dead, ev.position, nil,
                  "procman.pg.worker: the store refused this event's changes: " .. why, ev.event)
      dead.xid, dead.position = ev.xid, ev.position
    end)
end

local isolate_timers  -- (below, with tick)

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
      local work = new_work(self)
      work.xid, work.position = horizon.xid, horizon.position
      local ok, err = commit(self, work)
      if not ok then return nil, err end
    end
    return 0
  end
  preload(self, all_targets(events))
  local work = new_work(self)
  for _, ev in ipairs(events) do apply_event(self, work, ev) end
  local last = horizon or events[#events]
  work.xid, work.position = last.xid, last.position
  local ok, err = commit(self, work)
  if not ok then
    if not isolatable(self, err) then return nil, err end
    ok, err = isolate(self, events)
    if not ok then return nil, err end
  end
  self.stats.events = self.stats.events + #events
  return #events
end

-- Fire one timer of a loaded flow into 'work' (nothing if it is gone).
-- With 'refused', the timer goes and its event becomes a dead letter.
local function fire(self, work, t, refused)
  local entry = self.cache[cache_key(t.spec.name, t.key)]
  local timer = entry and entry.timers and timers.find(entry.timers, t.fired.seq, t.fired.index)
  if timer == nil then return end
  if refused then
    entry.timers = timers.remove(entry.timers, t.fired.seq, t.fired.index)
    entry.timers_changed = true
    touch(work, entry)
    return dead_letter(work, nil, t, refused, timer.event)
  end
  handle(self, work, t, timer.event, nil, t.fired)
  policies.queue(work, "timer_fired", t.spec.name, t.flow, rawget(timer.event, "event_type"),
                 work.now - timer.due)
end

-- The timers again, one per transaction: a timer whose event the store
-- refuses goes, its event a dead letter with the reason (as for events).
function isolate_timers(self, targets, now)
  return one_by_one(self, targets, now, function(t) return { t } end,
    function(work, t) fire(self, work, t) end,
    function(dead, t, why)
      fire(self, dead, t, "procman.pg.worker: the store refused this timer's changes: " .. why)
    end)
end

local function tick(self, now)
  claim(self)
  now = now or self.clock()
  local list = partitions.list(self)
  if #list == 0 then return 0 end
  local rows = db.exec(self.conn, "SELECT workflow, flow_key, partition, seq, index FROM procman_timers "
                                  .. "WHERE partition = ANY($1::int[]) AND due <= $2 "
                                  .. "ORDER BY due, seq, index LIMIT $3",
                       "{" .. table.concat(list, ",") .. "}", now, self.batch)
  local targets = {}
  for _, row in ipairs(rows) do
    local spec = self.by_name[row.workflow]
    if spec then
      targets[#targets + 1] = { spec = spec, flow = decode(row.flow_key), key = row.flow_key,
                                partition = row.partition, fired = { seq = row.seq, index = row.index } }
    end
  end
  if #targets == 0 then return 0 end
  preload(self, targets)
  local work = new_work(self, now)
  for _, t in ipairs(targets) do fire(self, work, t) end
  local ok, err = commit(self, work)
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
-- Parked flows
-- ---------------------------------------------------------------------

-- Retry the parked events of a flow in order until none is left or one
-- fails again (then the flow stays parked with that error).
local function retry(work, entry)
  local applied = 0
  while entry.parked do
    local event = entry.parked.events[1]
    local err
    if entry.pm == nil then
      local ok, pm = pcall(core.new, entry.spec, entry.flow)
      if ok then entry.pm = pm else err = message(pm) end
    end
    local mark = work.hooks and #work.hooks
    work.commands_at = mark and mark + 1  -- (apply moves it past the flow's own hooks)
    err = err or apply(work, entry, event, nil)
    touch(work, entry)
    entry.parked_changed = true
    if err then
      entry.parked.error = err
      policies.queue(work, "flow_parked", entry.spec.name, entry.flow, err)  -- again
      return applied, err
    end
    applied = applied + 1
    table.remove(entry.parked.events, 1)
    -- the router's order of reports: the letters of events left parked by
    -- a completed flow, the flow's hooks, flow_resumed, then the commands
    if entry.done or #entry.parked.events == 0 then
      policies.queue(work, "flow_resumed", entry.spec.name, entry.flow)
      if mark then policies.hoist(work, work.commands_at - 1, #work.hooks) end
    end
    if entry.done then
      local from = mark and #work.hooks + 1
      complete_parked(work, entry)
      if mark then policies.hoist(work, mark, from) end
    end
    if entry.parked and #entry.parked.events == 0 then entry.parked = nil end
  end
  return applied
end

local function parked_entry(self, name, flow_id)
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
  preload(self, { t })
  local entry = self.cache[cache_key(name, t.key)]
  if entry == nil or entry.parked == nil then fail("flow %s is not parked", label(name, flow_id)) end
  return entry
end

local function resume(self, entry, skip)
  local work = new_work(self)
  work.resuming = true
  if skip then
    table.remove(entry.parked.events, 1)
    entry.parked_changed = true
    touch(work, entry)
    if #entry.parked.events == 0 then entry.parked = nil end
  end
  local applied, why = retry(work, entry)
  local ok, err = commit(self, work)
  if not ok then return nil, message(err) end
  return applied, why
end

--- w:resume(workflow, flow) -> events applied[, error]: retry the flow's
-- parked events in order, in one transaction (after a fix of the code).
-- When one fails again the flow stays parked with that error.
function Worker:resume(name, flow_id)
  return resume(self, parked_entry(self, name, flow_id), false)
end

--- w:skip(workflow, flow) -> events applied[, error]: drop the first
-- parked event, then resume the rest.
function Worker:skip(name, flow_id)
  return resume(self, parked_entry(self, name, flow_id), true)
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
