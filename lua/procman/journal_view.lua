--- procman.journal_view: what a router's journal says, read without the
-- workflow code and without taking the journal's lock (a router may be
-- using it). For operators' tools: procman inspect and procman diagram.
--
--   local view = assert(journal_view.read("flows.pmj", { timeline = { "batch", "b7" } }))
--   view.flows.batch.b7   --> { workflow, flow, status, version, completed, parked, timeline }
--
-- It folds the records as the router does (procman.fold, the one module
-- that says what a record means; docs/journal-format.md lists them):
-- each flow's version and status (journaled with every event), completed
-- flows, the pending outbox, parked flows, timers and dead letters, and
-- the observed transitions (status before, event type, status after).
local core = require "procman.core"
local records = require "procman.records"
local timers = require "procman.timers"
local fold = require "procman.fold"

local decode = core.decode

local M = {}

local START = records.START  -- the status before a flow's first event, in transitions
M.START = START
-- The status shown for a flow that has handled no event yet (its first
-- event failed and parked it).
local NOT_STARTED = "(not started)"
M.NOT_STARTED = NOT_STARTED

local function count_transition(view, workflow, from, event_type, to)
  local t = view.transitions[workflow]
  if t == nil then
    t = {}
    view.transitions[workflow] = t
  end
  local key = from .. "\0" .. event_type .. "\0" .. to
  local edge = t[key]
  if edge == nil then
    edge = { from = from, event_type = event_type, to = to, count = 0 }
    t[key] = edge
  end
  edge.count = edge.count + 1
end

-- What the fold tells of each applied event: transitions, and the
-- wanted flow's timeline.
local function observer(view, wanted)
  return function(_, g, before, rec, e)
    local status = e.status or "?"
    count_transition(view, g.name, before or "?", rec.event.event_type, status)
    if wanted and wanted[1] == g.name and wanted[2] == g.flow then
      g.timeline = g.timeline or {}
      g.timeline[#g.timeline + 1] = { version = g.applied, seq = rec.seq, event = rec.event,
                                      commands = e.commands, status = status }
    end
  end
end

-- A flow as the tools show it, from the folded state.
local function flow_entry(state, name, flow_id)
  local g = state.all_flows[name][flow_id]
  local final = state.finished[name][flow_id]
  local f = { workflow = name, flow = flow_id, version = 0, status = NOT_STARTED,
              completed = final ~= nil, workflow_version = 1, parked = state.parked_of[name][flow_id],
              timers = state.schedule.by_flow[name][flow_id] }
  if g then
    f.version, f.workflow_version = g.applied, g.workflow_version
    f.patches, f.timeline = g.patches, g.timeline
    if g.applied > 0 or g.last_status then f.status = g.last_status or "?" end
  end
  if final then f.status = fold.final_status(final) end
  if f.parked and f.parked.workflow_version then f.workflow_version = f.parked.workflow_version end
  return f
end

-- The view (the shape procman.pg.view gives too) of a folded state.
local function view_of(state, view)
  view.seq, view.dead, view.workflows = state.seq, state.dead, state.names
  for _, name in ipairs(state.names) do
    local by_id = {}
    view.flows[name] = by_id
    for _, set in ipairs { state.all_flows[name], state.finished[name], state.parked_of[name],
                           state.schedule.by_flow[name] } do
      for flow_id in pairs(set) do
        if by_id[flow_id] == nil then by_id[flow_id] = flow_entry(state, name, flow_id) end
      end
    end
    for _, f in pairs(by_id) do
      if f.parked then view.parked[f] = true end
    end
  end
  for _, envelope in ipairs(state.outbox:list()) do
    view.pending[envelope.id] = envelope
    view.pending_order[#view.pending_order + 1] = envelope.id
  end
  return view
end

--- read(path[, opts]) -> view, or nil, message. opts.timeline = { workflow,
-- flow_id }: keep that flow's timeline (each applied event, its commands
-- and the status after it).
function M.read(path, opts)
  local next_record, info = core.journal_scan(path)
  if not next_record then return nil, info end
  local view = { path = path, bytes = info.bytes, records = info.records, dropped = info.dropped,
                 damaged_at = info.damaged_at, resume_at = info.resume_at, flows = {}, transitions = {},
                 pending = {}, pending_order = {}, parked = {} }
  local state = fold.new()
  state.all_flows, state.on_applied = {}, observer(view, opts and opts.timeline)
  state.outbox:defer()
  for offset, kind, payload in next_record do
    local ok, rec = pcall(decode, payload)
    if ok and not fold.knows(kind) then ok, rec = false, "unknown type" end
    if ok then ok, rec = pcall(fold.record, state, kind, rec, offset, payload) end
    if not ok then
      return nil, string.format("%s: record at byte %d (type %d) is not a router record: %s",
                                path, offset, kind, rec)
    end
  end
  state.outbox:undefer()
  return view_of(state, view)
end

--- The pending envelopes, in emission order.
function M.pending(view)
  local out, listed = {}, {}
  for _, id in ipairs(view.pending_order) do
    if view.pending[id] and not listed[id] then
      out[#out + 1], listed[id] = view.pending[id], true
    end
  end
  return out
end

--- The pending timers, by due time: { workflow, flow, key, due, event }.
function M.timers(view)
  local out = {}
  for _, name in ipairs(view.workflows) do
    for _, f in pairs(view.flows[name]) do
      for _, t in ipairs(f.timers or {}) do
        out[#out + 1] = { workflow = name, flow = f.flow, key = t.key, due = t.due, event = t.event,
                          seq = t.seq, index = t.index }
      end
    end
  end
  table.sort(out, timers.before)
  return out
end

--- The dead letters, oldest first: { id, event, error, time }. (A view
-- of a PostgreSQL store, procman.pg.view, keeps a plain list: { position,
-- workflow, flow, event, error }.)
function M.dead_letters(view)
  return view.dead.list or view.dead
end

--- The parked flows: { workflow, flow, error, event, held }.
function M.parked(view)
  local out = {}
  for f in pairs(view.parked) do
    out[#out + 1] = records.parked_entry(f.workflow, f.flow, f.parked.error, f.parked.events)
  end
  table.sort(out, records.by_flow)
  return out
end

return M
