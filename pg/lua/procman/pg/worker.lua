--- procman.pg.worker: run flows from the shared event store.
--
-- A flow belongs to partition hash(workflow, flow id) mod N. A worker owns
-- partitions through PostgreSQL advisory locks (session locks: they go
-- when the worker's connection goes, so a dead worker's partitions are
-- free for the others), each with a checkpoint: the position of the last
-- event handled for it. A step reads the events after its checkpoints in
-- position order, handles those of flows in its partitions, and commits in
-- ONE transaction: the flows' new state and version (checked against the
-- version it read, so two owners can never both write), the outbox rows,
-- the timers, the dead letters and the checkpoints. If anything fails the
-- transaction rolls back, the worker forgets what it had cached, and the
-- next step reads again from the checkpoints.
--
-- Workers share the partitions fairly: each takes at most its share,
-- ceil(N / live workers), counting live workers by their presence locks,
-- and gives back partitions above its share when workers join.
local procman = require "procman"
local core = require "procman.core"
local workflow = require "procman.workflow"
local timers = require "procman.timers"
local records = require "procman.records"
local message = require "procman.message"
local db = require "procman.pg.db"
local producer = require "procman.pg.producer"
local pgcore = require "procman.pg.core"

local encode, decode = procman.encode, procman.decode

local PARTITION_LOCK = 5164018  -- advisory lock class of partitions (key: the partition)
local PRESENCE_LOCK = 5164019   -- advisory lock class of live workers (key: backend pid)

local M = {}
local Worker = {}
Worker.__index = Worker
Worker.__name = "procman.pg.worker"

local function fail(fmt, ...)
  error("procman.pg.worker: " .. string.format(fmt, ...), 3)
end

--- The partition of a flow: FNV-1a of "workflow/flow id", mod n. The same
-- in every worker, process and machine.
function M.partition(name, flow_id, n)
  local h = 2166136261
  for i = 1, #name do h = ((h ~ name:byte(i)) * 16777619) & 0xffffffff end
  h = ((h ~ 47) * 16777619) & 0xffffffff  -- '/'
  local id = tostring(flow_id)
  for i = 1, #id do h = ((h ~ id:byte(i)) * 16777619) & 0xffffffff end
  return h % n
end

local function check_options(opts)
  if type(opts) ~= "table" then fail("options must be a table, got %s", type(opts)) end
  if type(opts.conninfo) ~= "string" then fail("conninfo must be a string, got %s", type(opts.conninfo)) end
  local n = opts.partitions or 16
  if math.type(n) ~= "integer" or n < 1 or n > 100000 then
    fail("partitions must be an integer from 1 to 100000, got %s", tostring(n))
  end
  if opts.clock ~= nil and type(opts.clock) ~= "function" then fail("clock must be a function") end
  local batch = opts.batch or 200
  if math.type(batch) ~= "integer" or batch < 1 then fail("batch must be a positive integer") end
  return n, batch
end

local function specs_of(list)
  local specs, by_name, versions = workflow.routable(list)
  if not specs then fail("%s", by_name) end
  for name, by_version in pairs(versions) do  -- versions: the router's, not yet the worker's
    if next(by_version, next(by_version)) ~= nil then
      fail("workflow %q is given in several versions: the PostgreSQL worker runs one version of "
           .. "each workflow (docs/operations.md)", name)
    end
  end
  return specs, by_name
end

-- Every worker must cut the flows into the same partitions.
local function agree_on_partitions(conn, n)
  db.exec(conn, "INSERT INTO procman_config (key, value) VALUES ('partitions', $1) "
                .. "ON CONFLICT (key) DO NOTHING", tostring(n))
  local rows = db.exec(conn, "SELECT value FROM procman_config WHERE key = 'partitions'")
  if tonumber(rows[1].value) ~= n then
    fail("the store is partitioned in %s, this worker was given partitions = %d", rows[1].value, n)
  end
end

--- pg.worker { conninfo, workflows, partitions = 16, batch = 200, clock = os.time }
function M.new(opts)
  local n, batch = check_options(opts)
  local specs, by_name = specs_of(opts.workflows)
  local conn, err = pgcore.connect(opts.conninfo)
  if not conn then error(err, 2) end
  agree_on_partitions(conn, n)
  local self = setmetatable({
    conn = conn, specs = specs, by_name = by_name, partitions = n, batch = batch,
    clock = opts.clock or os.time, owned = {}, owned_count = 0, cache = {},
    stats = { events = 0, handled = 0, commands = 0, dead = 0, timers = 0, commits = 0 },
  }, Worker)
  for _, spec in ipairs(specs) do self.cache[spec.name] = {} end
  db.exec(conn, "SELECT pg_advisory_lock($1, pg_backend_pid())", PRESENCE_LOCK)
  db.exec(conn, "LISTEN " .. producer.CHANNEL)  -- appends wake an idle run (a constant name)
  return self
end

-- ---------------------------------------------------------------------
-- Partitions
-- ---------------------------------------------------------------------

local function live_workers(conn)
  local rows = db.exec(conn, "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' "
                             .. "AND classid = $1 AND granted AND database = "
                             .. "(SELECT oid FROM pg_database WHERE datname = current_database())",
                       PRESENCE_LOCK)
  return math.max(rows[1].n, 1)
end

local function forget_partition(self, p)
  for _, spec in ipairs(self.specs) do
    for flow_id, entry in pairs(self.cache[spec.name]) do
      if entry.partition == p then self.cache[spec.name][flow_id] = nil end
    end
  end
end

local function release(self, p)
  db.exec(self.conn, "SELECT pg_advisory_unlock($1, $2)", PARTITION_LOCK, p)
  self.owned[p] = nil
  self.owned_count = self.owned_count - 1
  forget_partition(self, p)
end

--- w:claim() -> the number of partitions owned: take free partitions up
-- to this worker's share, give back those above it. Steps and ticks call
-- it at most once a second (and at once while the worker owns none).
function Worker:claim(force)
  local now = os.time()
  if not force and self.owned_count > 0 and self.claimed_at == now then return self.owned_count end
  self.claimed_at = now
  local share = -(-self.partitions // live_workers(self.conn))
  for p = self.partitions - 1, 0, -1 do
    if self.owned_count <= share then break end
    if self.owned[p] then release(self, p) end
  end
  for p = 0, self.partitions - 1 do
    if self.owned_count >= share then break end
    if not self.owned[p] then
      local rows = db.exec(self.conn, "SELECT pg_try_advisory_lock($1, $2) AS got", PARTITION_LOCK, p)
      if rows[1].got then
        db.exec(self.conn, "INSERT INTO procman_checkpoints (partition, position) VALUES ($1, 0) "
                           .. "ON CONFLICT (partition) DO NOTHING", p)
        local cp = db.exec(self.conn, "SELECT position FROM procman_checkpoints WHERE partition = $1", p)
        self.owned[p] = cp[1].position
        self.owned_count = self.owned_count + 1
        forget_partition(self, p)  -- its flows may have moved on under another owner
      end
    end
  end
  return self.owned_count
end

--- w:owned_partitions() -> the partitions this worker owns, sorted.
function Worker:owned_partitions()
  local list = {}
  for p in pairs(self.owned) do list[#list + 1] = p end
  table.sort(list)
  return list
end

-- ---------------------------------------------------------------------
-- Flows
-- ---------------------------------------------------------------------

-- The cached entry of a flow, loaded from the store; nil if it has none.
-- entry = { pm, partition, db_version (nil: new), done, status, timers }
local function load_flow(self, spec, flow_id, p)
  local by_id = self.cache[spec.name]
  local entry = by_id[flow_id]
  if entry then return entry end
  local rows = db.exec(self.conn, "SELECT version, done, status, state, seen FROM procman_flows "
                                  .. "WHERE workflow = $1 AND flow_id = $2", spec.name, tostring(flow_id))
  local row = rows[1]
  if row == nil then return nil end
  entry = { partition = p, db_version = row.version, done = row.done, status = row.status }
  if not row.done then
    entry.pm = core.restore(spec, flow_id, decode(row.state), row.version, decode(row.seen))
    local trows = db.exec(self.conn, "SELECT key, due, event, seq, index FROM procman_timers "
                                     .. "WHERE workflow = $1 AND flow_id = $2", spec.name, tostring(flow_id))
    for _, t in ipairs(trows) do
      entry.timers = entry.timers or {}
      entry.timers[#entry.timers + 1] = { key = t.key, due = t.due, event = decode(t.event), seq = t.seq,
                                          index = t.index }
    end
  end
  by_id[flow_id] = entry
  return entry
end

local function dead_letter(work, position, name, flow_id, err, event)
  work.dead[#work.dead + 1] = { position = position, workflow = name, flow = flow_id,
                                error = message(err), event = encode(event) }
end

-- The commands of a handled event into 'work' (outbox rows, timers); may
-- raise (bad directives, commands that are not data, a done() that fails).
local function record_commands(work, entry, spec, flow_id, commands, position)
  local name = spec.name
  local plain, directives = timers.split(commands)
  local version = entry.pm:version()
  local rows = {}
  for i, command in ipairs(plain) do
    local id = records.command_id(name, flow_id, version, i)
    rows[i] = { id = id, workflow = name, flow = flow_id, position = position,
                envelope = encode { id = id, workflow = name, flow = flow_id, command = command } }
  end
  local done, status = entry.pm:done(), entry.pm:status()
  -- The state is stored with the batch: one that is not data (a handler
  -- kept an event in it, one level deeper than events may go) would fail
  -- every commit of this partition. The event that made it so is refused
  -- here, with the snapshot's error ("<flow>: state is not data: ..."), and
  -- the snapshot is kept for the write.
  local snapshot = table.pack(core.snapshot(entry.pm))
  -- nothing below raises: the flow and 'work' change together
  table.move(rows, 1, #rows, #work.outbox + 1, work.outbox)
  if directives then  -- timers named by the flow's version: the same in every worker
    entry.timers = timers.apply(entry.timers, directives, work.now, version)
    entry.timers_changed = true
  end
  entry.done, entry.status, entry.snapshot = done, status, snapshot
end

-- A flow for an event: the cached or stored one, or a new one for an event
-- that starts flows; nil and why it cannot take the event.
local function flow_for(self, spec, flow_id, p, event)
  local name = spec.name
  local entry = load_flow(self, spec, flow_id, p)
  if entry == nil then
    if not spec.starts_set[event.event_type] then
      return nil, string.format("no flow %s/%s for %s", name, tostring(flow_id), event.event_type)
    end
    local ok, pm = pcall(core.new, spec, flow_id)
    if not ok then return nil, pm end
    entry = { partition = p, pm = pm }
    self.cache[name][flow_id] = entry
  elseif entry.done then
    return nil, string.format("flow %s/%s is complete (%s): event '%s' came after it finished", name,
                              tostring(flow_id), tostring(entry.status), event.event_type)
  end
  return entry
end

-- Handle an event on one flow of an owned partition, into 'work'. Whatever
-- the workflow does wrong (its handler refuses the event, returns bad
-- commands or directives, init or done fail), the flow is left as it was
-- and the event becomes a dead letter.
local function handle(self, work, spec, flow_id, p, event, position, fired)
  local name = spec.name
  local entry, why = flow_for(self, spec, flow_id, p, event)
  if entry == nil then return dead_letter(work, position, name, flow_id, why, event) end
  if fired then  -- the timer is gone, whatever happens to its event
    entry.timers = timers.remove(entry.timers, fired.seq, fired.index)
    entry.timers_changed = true
    work.changed[entry] = { spec = spec, flow = flow_id }
  end
  local before = entry.pm:version()
  local ok, commands = pcall(entry.pm.handle, entry.pm, event)
  if ok and entry.pm:version() == before then return end  -- a redelivery
  if ok then ok, why = pcall(record_commands, work, entry, spec, flow_id, commands, position) end
  if not ok then
    if entry.pm:version() > before then core.undo(entry.pm) end
    return dead_letter(work, position, name, flow_id, why or commands, event)
  end
  work.changed[entry] = { spec = spec, flow = flow_id }
  work.handled = work.handled + 1
end

-- ---------------------------------------------------------------------
-- Writing a batch
-- ---------------------------------------------------------------------

local function write_flow(conn, entry, spec, flow_id)
  local snapshot = entry.snapshot  -- the one record_commands took after the flow's last event
  if snapshot == nil or snapshot[2] ~= entry.pm:version() then
    snapshot = table.pack(core.snapshot(entry.pm))
  end
  local state, version, seen = snapshot[1], snapshot[2], snapshot[3]
  local args = { spec.name, tostring(flow_id), entry.status, version, entry.done,
                 pgcore.bytes(encode(state)), pgcore.bytes(encode(seen)) }
  if entry.db_version == nil then
    db.exec(conn, "INSERT INTO procman_flows (workflow, flow_id, status, version, done, state, seen, "
                  .. "flow_key, partition) VALUES ($1, $2, $3, $4, $5, $6::bytea, $7::bytea, $8::bytea, $9)",
            args[1], args[2], args[3], args[4], args[5], args[6], args[7], pgcore.bytes(encode(flow_id)),
            entry.partition)
  else
    local _, count = db.exec(conn, "UPDATE procman_flows SET status = $3, version = $4, done = $5, "
                                   .. "state = $6::bytea, seen = $7::bytea, updated_at = now() "
                                   .. "WHERE workflow = $1 AND flow_id = $2 AND version = $8",
                             args[1], args[2], args[3], args[4], args[5], args[6], args[7], entry.db_version)
    if count ~= 1 then
      error(string.format("procman.pg.worker: flow %s/%s changed under this worker (version %d in the "
                          .. "store is not the one it read): another owner?", spec.name, tostring(flow_id),
                          entry.db_version), 0)
    end
  end
  if entry.timers_changed then
    db.exec(conn, "DELETE FROM procman_timers WHERE workflow = $1 AND flow_id = $2", args[1], args[2])
    if not entry.done then
      for _, t in ipairs(entry.timers or {}) do
        db.exec(conn, "INSERT INTO procman_timers (workflow, flow_id, partition, seq, index, key, due, "
                      .. "event) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::bytea)", args[1], args[2],
                entry.partition, t.seq, t.index, t.key, t.due, pgcore.bytes(encode(t.event)))
      end
    end
  end
end

local function write(conn, self, work)
  for entry, where in pairs(work.changed) do write_flow(conn, entry, where.spec, where.flow) end
  for _, o in ipairs(work.outbox) do
    db.exec(conn, "INSERT INTO procman_outbox (command_id, workflow, flow_id, envelope, position) "
                  .. "VALUES ($1, $2, $3, $4::bytea, $5)", o.id, o.workflow, tostring(o.flow),
            pgcore.bytes(o.envelope),
            o.position)
  end
  for _, d in ipairs(work.dead) do
    db.exec(conn, "INSERT INTO procman_dead_letters (position, workflow, flow_id, error, event) "
                  .. "VALUES ($1, $2, $3, $4, $5::bytea)", d.position, d.workflow,
            d.flow ~= nil and tostring(d.flow) or nil, d.error, pgcore.bytes(d.event))
  end
  if work.checkpoint then
    for p in pairs(self.owned) do
      db.exec(conn, "UPDATE procman_checkpoints SET position = $2 WHERE partition = $1 AND position < $2",
              p, work.checkpoint)
    end
  end
end

-- Commit a batch; on success the cache follows, on failure it is dropped.
local function commit(self, work)
  local ok, err = pcall(db.transaction, self.conn, write, self, work)
  if not ok then
    for _, spec in ipairs(self.specs) do self.cache[spec.name] = {} end
    return nil, tostring(err)
  end
  for entry, where in pairs(work.changed) do
    entry.db_version, entry.timers_changed = entry.pm:version(), false
    if entry.done then entry.pm = nil end  -- a completed flow: remembered, not kept
    self.cache[where.spec.name][where.flow] = entry
  end
  if work.checkpoint then
    for p, cp in pairs(self.owned) do
      if cp < work.checkpoint then self.owned[p] = work.checkpoint end
    end
  end
  local s = self.stats
  s.handled, s.commands, s.dead, s.commits = s.handled + work.handled, s.commands + #work.outbox,
                                             s.dead + #work.dead, s.commits + 1
  return true
end

local function new_work(self, now)
  return { changed = {}, outbox = {}, dead = {}, handled = 0, now = now or self.clock() }
end

-- ---------------------------------------------------------------------
-- Steps
-- ---------------------------------------------------------------------

local function lowest_checkpoint(self)
  local low
  for _, cp in pairs(self.owned) do
    if low == nil or cp < low then low = cp end
  end
  return low
end

local function route(self, work, event, position)
  for _, spec in ipairs(self.specs) do
    if spec.on[event.event_type] then
      local c = spec.correlate
      local ok, flow_id = pcall(function()
        if type(c) == "string" then return rawget(event, c) end
        return c(event)
      end)
      if ok and flow_id ~= nil then
        local p = M.partition(spec.name, flow_id, self.partitions)
        local cp = self.owned[p]
        if cp ~= nil and position > cp then handle(self, work, spec, flow_id, p, event, position) end
      elseif self.owned[0] ~= nil and position > self.owned[0] then  -- an event no flow can take:
        dead_letter(work, position, spec.name, nil,                   -- partition 0 keeps it
                    string.format("event '%s' has no flow id for workflow %q", event.event_type, spec.name),
                    event)
      end
    end
  end
end

-- Run a step or a tick; any error drops the cache (the store is the truth)
-- and comes back as nil, message.
local function protected(self, fn, ...)
  local ok, n, err = pcall(fn, self, ...)
  if ok then return n, err end
  for _, spec in ipairs(self.specs) do self.cache[spec.name] = {} end
  return nil, message(n)
end

local step, tick

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

function step(self)
  self:claim()
  local from = lowest_checkpoint(self)
  if from == nil then return 0 end
  local rows = db.exec(self.conn, "SELECT position, payload FROM procman_events WHERE position > $1 "
                                  .. "ORDER BY position LIMIT $2", from, self.batch)
  if #rows == 0 then return 0 end
  local work = new_work(self)
  for _, row in ipairs(rows) do route(self, work, decode(row.payload), row.position) end
  work.checkpoint = rows[#rows].position
  local ok, err = commit(self, work)
  if not ok then return nil, err end
  self.stats.events = self.stats.events + #rows
  return #rows
end

function tick(self, now)
  self:claim()
  now = now or self.clock()
  local list = self:owned_partitions()
  if #list == 0 then return 0 end
  local rows = db.exec(self.conn, "SELECT workflow, flow_id, seq, index FROM procman_timers "
                                  .. "WHERE partition = ANY($1::int[]) AND due <= $2 "
                                  .. "ORDER BY due, seq, index LIMIT $3",
                       "{" .. table.concat(list, ",") .. "}", now, self.batch)
  if #rows == 0 then return 0 end
  local work = new_work(self, now)
  for _, row in ipairs(rows) do
    local spec = self.by_name[row.workflow]
    if spec then
      local flow_rows = db.exec(self.conn, "SELECT flow_key, partition FROM procman_flows "
                                           .. "WHERE workflow = $1 AND flow_id = $2",
                                row.workflow, row.flow_id)
      local flow_id, p = decode(flow_rows[1].flow_key), flow_rows[1].partition
      local entry = load_flow(self, spec, flow_id, p)
      local timer = entry and entry.timers and timers.find(entry.timers, row.seq, row.index)
      if timer then
        handle(self, work, spec, flow_id, p, timer.event, nil, { seq = row.seq, index = row.index })
      end
    end
  end
  local ok, err = commit(self, work)
  if not ok then return nil, err end
  self.stats.timers = self.stats.timers + #rows
  return #rows
end

--- w:run{ stop = function() -> true to stop, idle = seconds, on_error = fn }
-- Steps and ticks until stop() says so. When there was nothing to do it
-- waits for an append's notification, at most 'idle' seconds (timers,
-- partitions left by a dead worker and stop() are looked at that often).
function Worker:run(opts)
  opts = opts or {}
  local idle = opts.idle or 0.05
  while not (opts.stop and opts.stop(self)) do
    local n, err = self:step()
    if n == nil and opts.on_error then opts.on_error(err) end
    local fired = self:tick()
    if (n or 0) == 0 and (fired or 0) == 0 then
      local woke, why = self.conn:wait(idle)
      if woke == nil and opts.on_error then opts.on_error(why) end
    end
  end
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
