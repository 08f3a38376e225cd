--- procman.pg.view: a PostgreSQL store seen as procman.journal_view sees a
-- journal, so that procman inspect and procman diagram work on both.
-- What a store does not keep is absent: a flow's timeline (the store keeps
-- state, not history; the events are in procman_events) and byte counts.
local procman = require "procman"
local db = require "procman.pg.db"
local schema = require "procman.pg.schema"
local read = require "procman.pg.read"

local decode = procman.decode

local M = {}

local function flows_into(view, conn)
  local rows = db.exec(conn, "SELECT workflow, flow_key, status, version, done, workflow_version "
                             .. "FROM procman_flows ORDER BY workflow")
  for _, r in ipairs(rows) do
    local by_id = view.flows[r.workflow]
    if by_id == nil then
      by_id = {}
      view.flows[r.workflow] = by_id
      view.workflows[#view.workflows + 1] = r.workflow
    end
    local id = decode(r.flow_key)
    by_id[id] = { workflow = r.workflow, flow = id, status = r.status or "?", version = r.version,
                  completed = r.done, workflow_version = r.workflow_version }
  end
end

local function flow_entry(view, workflow, id)
  view.flows[workflow] = view.flows[workflow] or {}
  local f = view.flows[workflow][id]
  if f == nil then
    f = { workflow = workflow, flow = id, status = "(not started)", version = 0, completed = false,
          workflow_version = 1 }
    view.flows[workflow][id] = f
    view.workflows[#view.workflows + 1] = workflow
  end
  return f
end

local function transitions_into(view, conn)
  for _, r in ipairs(db.exec(conn, "SELECT workflow, edge, count FROM procman_transitions")) do
    local edge = decode(r.edge)
    view.transitions[r.workflow] = view.transitions[r.workflow] or {}
    view.transitions[r.workflow][r.edge] = { from = edge[1], event_type = edge[2], to = edge[3],
                                             count = r.count }
  end
end

--- read(conninfo) -> a view (procman.journal_view's shape), or nil, message.
function M.read(conninfo)
  local conn, err = require("procman.pg.core").connect(conninfo)
  if not conn then return nil, err end
  local ok, view = pcall(function()
    schema.check(conn)
    local events = db.exec(conn, "SELECT count(*) AS n, coalesce(max(position), 0) AS seq "
                                 .. "FROM procman_events")[1]
    -- no byte count: a database is not a file (inspect shows events and the last position)
    local view = { path = "postgres (" .. conninfo .. ")", records = events.n, dropped = 0,
                   seq = events.seq, workflows = {}, flows = {}, transitions = {}, pending = {},
                   pending_order = {}, parked = {}, dead = {} }
    flows_into(view, conn)
    transitions_into(view, conn)
    for _, e in ipairs(read.outbox(conn, true)) do
      view.pending[e.id] = e
      view.pending_order[#view.pending_order + 1] = e.id
    end
    for _, p in ipairs(read.parked(conn)) do
      local f = flow_entry(view, p.workflow, p.flow)
      f.parked = { error = p.error, events = { p.event } }
      for i = 2, p.held do f.parked.events[i] = true end  -- (counted, not shown)
      view.parked[f] = true
    end
    for _, t in ipairs(read.timers(conn)) do
      local f = flow_entry(view, t.workflow, t.flow)
      f.timers = f.timers or {}
      f.timers[#f.timers + 1] = t
    end
    view.dead = read.dead_letters(conn)
    table.sort(view.workflows)
    return view
  end)
  conn:close()
  if not ok then return nil, tostring(view) end
  return view
end

return M
