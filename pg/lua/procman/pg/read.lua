--- procman.pg.read: what the store holds, as Lua values, so that users,
-- tests and tools never depend on the table layout. Each function takes a
-- connection or a conninfo string. Flow ids, statuses and errors come back
-- exactly as they were (ids typed: 7 and "7" are different flows).
local procman = require "procman"
local records = require "procman.records"
local db = require "procman.pg.db"
local pgcore = require "procman.pg.core"

local encode, decode, bytes = procman.encode, procman.decode, pgcore.bytes

local M = {}

local function with(target, who, fn)
  local conn, opened = db.connection(target, who)
  local ok, result = pcall(fn, conn)
  if opened then conn:close() end
  if not ok then error(tostring(result), 0) end
  return result
end

local function check_name(name, who)
  if type(name) ~= "string" then
    error(string.format("procman.pg.%s: workflow must be a string, got %s", who, type(name)), 3)
  end
end

--- pg.flow(conn, workflow, flow_id) -> { status, version, state, done,
-- workflow_version (the code it runs: the version it started on),
-- parked = false | { error, held, event } }, or nil when there is no such flow.
function M.flow(target, name, flow_id)
  check_name(name, "flow")
  return with(target, "flow", function(conn)
    local row = db.exec(conn, "SELECT status, version, done, state, workflow_version FROM procman_flows "
                              .. "WHERE workflow = $1 AND key_hash = sha256($2::bytea)", name,
                        bytes(encode(flow_id)))[1]
    local parked = db.exec(conn, "SELECT error, event FROM procman_parked WHERE workflow = $1 "
                                 .. "AND key_hash = sha256($2::bytea) ORDER BY n", name,
                         bytes(encode(flow_id)))
    if row == nil and #parked == 0 then return nil end
    row = row or { version = 0, done = false }
    return { status = row.status, version = row.version, done = row.done,
             workflow_version = row.workflow_version, state = row.state and decode(row.state) or nil,
             parked = #parked > 0 and { error = parked[1].error, held = #parked,
                                        event = decode(parked[1].event) } }
  end)
end

--- pg.flows(conn, workflow[, status]) -> { { workflow, flow, status,
-- version, done }, ... } by flow id.
function M.flows(target, name, status)
  check_name(name, "flows")
  return with(target, "flows", function(conn)
    local rows = db.exec(conn, "SELECT flow_key, status, version, done FROM procman_flows "
                               .. "WHERE workflow = $1 "
                               .. "AND ($2::bytea IS NULL OR status = $2::bytea)", name,
                         status ~= nil and bytes(tostring(status)) or nil)
    local list = {}
    for i, r in ipairs(rows) do
      list[i] = { workflow = name, flow = decode(r.flow_key), status = r.status, version = r.version,
                  done = r.done }
    end
    table.sort(list, records.by_flow)
    return list
  end)
end

--- pg.outbox(conn[, pending_only]) -> { { id, workflow, flow, command,
-- dispatched }, ... } in emission order.
function M.outbox(target, pending_only)
  return with(target, "outbox", function(conn)
    local rows = db.exec(conn, "SELECT envelope, dispatched FROM procman_outbox "
                               .. (pending_only and "WHERE NOT dispatched " or "") .. "ORDER BY seq")
    local list = {}
    for i, r in ipairs(rows) do
      list[i] = decode(r.envelope)
      list[i].dispatched = r.dispatched
    end
    return list
  end)
end

--- pg.timers(conn) -> { { workflow, flow, key, due, event }, ... } by due time
-- (due as it was set: an integer stays an integer).
function M.timers(target)
  return with(target, "timers", function(conn)
    local rows = db.exec(conn, "SELECT workflow, flow_key, key, due_exact, event FROM procman_timers "
                               .. "ORDER BY due, seq, index")
    local list = {}
    for i, r in ipairs(rows) do
      list[i] = { workflow = r.workflow, flow = decode(r.flow_key), key = r.key, due = decode(r.due_exact),
                  event = decode(r.event) }
    end
    return list
  end)
end

--- pg.parked(conn) -> { { workflow, flow, error, event, held }, ... }
function M.parked(target)
  return with(target, "parked", function(conn)
    local rows = db.exec(conn, "SELECT workflow, flow_key, error, event FROM procman_parked "
                               .. "ORDER BY workflow, key_hash, n")
    local by, order = {}, {}
    for _, r in ipairs(rows) do
      local k = r.workflow .. "\0" .. r.flow_key
      if not by[k] then
        by[k] = { workflow = r.workflow, flow = decode(r.flow_key), error = r.error, events = {} }
        order[#order + 1] = by[k]
      end
      table.insert(by[k].events, decode(r.event))
    end
    local list = {}
    for i, p in ipairs(order) do list[i] = records.parked_entry(p.workflow, p.flow, p.error, p.events) end
    table.sort(list, records.by_flow)
    return list
  end)
end

--- pg.dead_letters(conn) -> { { event, error, workflow, flow, position }, ... } oldest first.
function M.dead_letters(target)
  return with(target, "dead_letters", function(conn)
    local rows = db.exec(conn, "SELECT position, workflow, flow_key, error, event FROM procman_dead_letters "
                               .. "ORDER BY id")
    local list = {}
    for i, r in ipairs(rows) do
      list[i] = { event = decode(r.event), error = r.error, workflow = r.workflow,
                  flow = r.flow_key and decode(r.flow_key) or nil, position = r.position }
    end
    return list
  end)
end

return M
