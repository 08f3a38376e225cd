--- procman.pg.store: a worker's flows in and out of PostgreSQL, set-based:
-- the flows a batch needs are loaded with three statements (flows, their
-- timers, their parked events), and a batch is written with one statement
-- per table, whatever its size (docs/postgres.md, "Round trips").
local procman = require "procman"
local core = require "procman.core"
local db = require "procman.pg.db"
local pgcore = require "procman.pg.core"

local encode, decode, bytes = procman.encode, procman.decode, pgcore.bytes

local M = {}

-- A flow that changed under this worker: another owner wrote it. Never
-- the fault of one event, so a batch is not retried event by event.
M.CONFLICT = "changed under this worker"

local WANT = "WITH want (workflow, flow_key) AS (VALUES %s) "

local function want_rows(list)
  local rows = {}
  for i, w in ipairs(list) do rows[i] = { w.spec.name, bytes(w.key) } end
  return rows
end

local function select_for(conn, list, sql)
  return db.exec_rows(conn, { "text", "bytea" }, want_rows(list), function(values)
    return string.format(WANT, values) .. sql
  end)
end

local function group(rows)
  local by = {}
  for _, r in ipairs(rows) do
    local k = r.workflow .. "\0" .. r.flow_key
    by[k] = by[k] or {}
    table.insert(by[k], r)
  end
  return by
end

-- The code of the version a stored flow started on; a version this worker
-- lacks is a deployment to finish, not the event's fault: the step fails
-- (and reads the same events again once the code is there).
local function version_of(versions, w, v)
  local spec = versions[w.spec.name] and versions[w.spec.name][v]
  if spec == nil then
    error(string.format("procman.pg.worker: flow %s/%s runs version %d of %s, which this worker was not "
                        .. "given: give it that version's code too until such flows complete "
                        .. "(docs/operations.md)", w.spec.name, tostring(w.flow), v, w.spec.name), 0)
  end
  return spec
end

--- Load the flows of 'list' ({ spec, flow, key, partition }): an entry for
-- each flow the store has, by "workflow\0key", on the code of the version
-- it started on (versions: name -> version -> spec); the others are absent.
function M.load(conn, list, versions)
  local entries = {}
  if #list == 0 then return entries end
  local flows = select_for(conn, list, "SELECT f.workflow, f.flow_key, f.version, f.done, f.status, f.state, "
                                       .. "f.workflow_version "
                                       .. "FROM procman_flows f JOIN want ON f.workflow = want.workflow "
                                       .. "AND f.key_hash = sha256(want.flow_key)")
  local timers = group(select_for(conn, list, "SELECT t.workflow, t.flow_key, t.key, t.due_exact, t.event, "
                                  .. "t.seq, "
                                  .. "t.index FROM procman_timers t JOIN want ON t.workflow = want.workflow "
                                  .. "AND t.key_hash = sha256(want.flow_key) ORDER BY t.seq, t.index"))
  local parked = group(select_for(conn, list, "SELECT p.workflow, p.flow_key, p.error, p.event, "
                                  .. "p.workflow_version FROM "
                                  .. "procman_parked p JOIN want ON p.workflow = want.workflow "
                                  .. "AND p.key_hash = sha256(want.flow_key) ORDER BY p.n"))
  local by_key = {}
  for _, w in ipairs(list) do by_key[w.spec.name .. "\0" .. w.key] = w end
  local function entry_of(k)
    local w = by_key[k]
    entries[k] = entries[k] or { spec = w.spec, flow = w.flow, key = w.key, partition = w.partition }
    return entries[k]
  end
  for _, row in ipairs(flows) do
    local entry = entry_of(row.workflow .. "\0" .. row.flow_key)
    entry.db_version, entry.done, entry.status = row.version, row.done, row.status
    if not row.done then  -- no event ids: the store appends each id once (docs/postgres.md)
      entry.spec = version_of(versions, entry, row.workflow_version)
      entry.pm = core.restore(entry.spec, entry.flow, decode(row.state), row.version, {})
    end
  end
  for k, list_of in pairs(timers) do
    local entry = entry_of(k)
    entry.timers = {}
    for i, t in ipairs(list_of) do
      entry.timers[i] = { key = t.key, due = decode(t.due_exact), event = decode(t.event), seq = t.seq,
                          index = t.index }
    end
  end
  for k, list_of in pairs(parked) do  -- a flow whose first event failed may have parked events only
    local entry = entry_of(k)
    entry.parked = { events = {}, error = list_of[1].error }
    if entry.db_version == nil then  -- parked on its first event: pinned to the version it parked on
      entry.spec = version_of(versions, entry, list_of[1].workflow_version)
    end
    for i, p in ipairs(list_of) do entry.parked.events[i] = decode(p.event) end
  end
  return entries
end

-- ---------------------------------------------------------------------
-- Writing a batch: one statement per table
-- ---------------------------------------------------------------------

local function write_flows(conn, changed)
  local rows, expected = {}, 0
  for _, e in ipairs(changed) do
    if e.pm then
      local state = e.snapshot and e.snapshot[2] == e.pm:version() and e.snapshot[1]
                    or (core.snapshot(e.pm))
      rows[#rows + 1] = { e.spec.name, bytes(e.key), e.partition, e.status and bytes(e.status) or nil,
                          e.pm:version(), e.done or false, bytes(encode(state)), e.db_version,
                          e.spec.version or 1 }
      if e.db_version then expected = expected + 1 end
    end
  end
  if #rows == 0 then return end
  local types = { "text", "bytea", "int", "bytea", "bigint", "boolean", "bytea", "bigint", "int" }
  local counts = db.exec_rows(conn, types, rows, function(values)
    return "WITH input (workflow, flow_key, partition, status, version, done, state, expected, "
      .. "workflow_version) AS (VALUES "
      .. values .. "), upd AS (UPDATE procman_flows f SET status = i.status, version = i.version, "
      .. "done = i.done, state = i.state, updated_at = now() FROM input i WHERE i.expected IS NOT NULL "
      .. "AND f.workflow = i.workflow AND f.key_hash = sha256(i.flow_key) AND f.version = i.expected "
      .. "RETURNING 1), ins AS (INSERT INTO procman_flows (workflow, flow_key, partition, status, version, "
      .. "done, state, workflow_version) SELECT workflow, flow_key, partition, status, version, done, state, "
      .. "workflow_version FROM input "
      .. "WHERE expected IS NULL RETURNING 1) SELECT (SELECT count(*) FROM upd) AS updated"
  end)
  local updated = 0
  for _, c in ipairs(counts) do updated = updated + c.updated end
  if updated ~= expected then
    error(setmetatable({ message = string.format("procman.pg.worker: %d flows %s (their version in the store "
                                                 .. "is not the "
                                    .. "one it read): another owner?", expected - updated, M.CONFLICT),
            conflict = true }, { __tostring = function(e) return e.message end }), 0)
  end
end

-- Replace the rows of 'table' for the flows in 'list' by 'rows'.
local function replace(conn, tbl, list, columns, types, rows)
  if #list > 0 then
    db.exec_rows(conn, { "text", "bytea" }, want_rows(list), function(values)
      return string.format(WANT, values) .. "DELETE FROM " .. tbl .. " t USING want "
        .. "WHERE t.workflow = want.workflow AND t.key_hash = sha256(want.flow_key)"
    end)
  end
  if #rows > 0 then
    db.exec_rows(conn, types, rows, function(values)
      return "INSERT INTO " .. tbl .. " (" .. columns .. ") VALUES " .. values
    end)
  end
end

local function write_timers(conn, changed)
  local list, rows = {}, {}
  for _, e in ipairs(changed) do
    if e.timers_changed then
      list[#list + 1] = e
      if not e.done then
        for _, t in ipairs(e.timers or {}) do
          rows[#rows + 1] = { e.spec.name, bytes(e.key), e.partition, t.seq, t.index,
                              t.key and bytes(t.key) or nil, t.due, bytes(encode(t.due)),
                              bytes(encode(t.event)) }
        end
      end
    end
  end
  replace(conn, "procman_timers", list,
          "workflow, flow_key, partition, seq, index, key, due, due_exact, event",
          { "text", "bytea", "int", "bigint", "int", "bytea", "float8", "bytea", "bytea" }, rows)
end

local function write_parked(conn, changed)
  local list, rows = {}, {}
  for _, e in ipairs(changed) do
    if e.parked_changed then
      list[#list + 1] = e
      for n, event in ipairs(e.parked and e.parked.events or {}) do
        rows[#rows + 1] = { e.spec.name, bytes(e.key), n, e.partition,
                            n == 1 and bytes(e.parked.error) or nil, bytes(encode(event)), e.spec.version }
      end
    end
  end
  replace(conn, "procman_parked", list, "workflow, flow_key, n, partition, error, event, workflow_version",
          { "text", "bytea", "int", "int", "bytea", "bytea", "int" }, rows)
end

local function write_outbox(conn, outbox)
  if #outbox == 0 then return end
  local rows = {}
  for i, o in ipairs(outbox) do
    rows[i] = { bytes(o.id), o.workflow, bytes(o.key), bytes(o.envelope), o.position }
  end
  db.exec_rows(conn, { "bytea", "text", "bytea", "bytea", "bigint" }, rows, function(values)
    return "INSERT INTO procman_outbox (command_id, workflow, flow_key, envelope, position) VALUES " .. values
  end)
end

-- The dead letters, and their ids in the same order.
local function write_dead(conn, dead)
  if #dead == 0 then return {} end
  local rows = {}
  for i, d in ipairs(dead) do
    rows[i] = { i, d.position, d.workflow, d.key and bytes(d.key) or nil, bytes(d.error), bytes(d.event) }
  end
  local ids = {}
  local types = { "int", "bigint", "text", "bytea", "bytea", "bytea" }
  local added = db.exec_rows(conn, types, rows, function(values)
    return "WITH input (i, position, workflow, flow_key, error, event) AS (VALUES " .. values .. "), "
      .. "added AS (INSERT INTO procman_dead_letters (position, workflow, flow_key, error, event) "
      .. "SELECT position, workflow, flow_key, error, event FROM input ORDER BY i RETURNING id) "
      .. "SELECT id FROM added ORDER BY id"
  end)
  for i, row in ipairs(added) do ids[i] = row.id end
  return ids
end

-- The observed transitions (status before, event type, status after),
-- counted: what procman diagram draws.
local function write_transitions(conn, transitions)
  local rows = {}
  for _, t in pairs(transitions) do rows[#rows + 1] = { t.workflow, bytes(t.edge), t.count } end
  if #rows == 0 then return end
  db.exec_rows(conn, { "text", "bytea", "bigint" }, rows, function(values)
    return "INSERT INTO procman_transitions (workflow, edge, count) VALUES " .. values
      .. " ON CONFLICT (workflow, edge_hash) DO UPDATE SET count = procman_transitions.count + excluded.count"
  end)
end

--- Move the checkpoints of 'partitions' to (xid, position), never back.
function M.write_checkpoints(conn, partitions, xid, position)
  if #partitions == 0 then return end
  db.exec(conn, "UPDATE procman_checkpoints SET xid = $2, position = $3 WHERE partition = ANY($1::int[]) "
                .. "AND (xid, position) < ($2, $3)", "{" .. table.concat(partitions, ",") .. "}", xid,
          position)
end

--- Write a batch's work (in the caller's transaction) -> { dead_ids }.
function M.write(conn, work, partitions)
  write_flows(conn, work.changed)
  write_timers(conn, work.changed)
  write_parked(conn, work.changed)
  write_outbox(conn, work.outbox)
  local dead_ids = write_dead(conn, work.dead)
  write_transitions(conn, work.transitions)
  if work.xid then M.write_checkpoints(conn, partitions, work.xid, work.position) end
  return { dead_ids = dead_ids }
end

return M
