--- procman.journal_view: what a router's journal says, read without the
-- workflow code and without taking the journal's lock (a router may be
-- using it). For operators' tools: procman inspect and procman diagram.
--
--   local view = assert(journal_view.read("flows.pmj", { timeline = { "batch", "b7" } }))
--   view.flows.batch.b7   --> { workflow, flow, status, version, completed, parked, timeline }
--
-- It follows the records as the router does (docs/journal-format.md):
-- each flow's version and status (journaled with every event), completed
-- flows, the pending outbox, parked flows, timers and dead letters, and
-- the observed transitions (status before, event type, status after).
local core = require "procman.core"
local records = require "procman.records"
local timers = require "procman.timers"
local dead_letters = require "procman.dead_letters"

local decode = core.decode

local M = {}

local START = "[*]"  -- the status before a flow's first event, in transitions
M.START = START
-- The status shown for a flow that has handled no event yet (its first
-- event failed and parked it).
local NOT_STARTED = "(not started)"
M.NOT_STARTED = NOT_STARTED

local function flow_of(view, workflow, flow_id, workflow_version)
  local by_id = view.flows[workflow]
  if by_id == nil then
    by_id = {}
    view.flows[workflow] = by_id
    view.workflows[#view.workflows + 1] = workflow
  end
  local f = by_id[flow_id]
  if f == nil then
    f = { workflow = workflow, flow = flow_id, version = 0, status = NOT_STARTED, completed = false,
          workflow_version = workflow_version or 1 }
    by_id[flow_id] = f
  end
  return f
end

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

local function add_pending(view, envelope)
  view.pending[envelope.id] = envelope
  view.pending_order[#view.pending_order + 1] = envelope.id
end

local function pop_parked(view, f)
  table.remove(f.parked.events, 1)
  if #f.parked.events == 0 then f.parked = nil end
  if f.parked == nil then view.parked[f] = nil end
end

local function complete(view, f, now)
  f.completed, f.timers = true, nil
  if f.parked then
    for _, event in ipairs(f.parked.events) do
      view.dead:add { event = event, time = now, error = string.format(
        "flow %s/%s completed while this event was parked", f.workflow, tostring(f.flow)) }
    end
    f.parked, view.parked[f] = nil, nil
  end
end

-- The patches (procman.patched) a flow took: a sorted array.
local function take_patches(list, ids)
  local set, out = {}, {}
  for _, id in ipairs(list or {}) do set[id] = true end
  for _, id in ipairs(ids) do set[id] = true end
  for id in pairs(set) do out[#out + 1] = id end
  table.sort(out)
  return out
end

-- One flow's entry of an event record.
local function apply_entry(view, rec, e, wanted)
  local f = flow_of(view, e.workflow, e.flow, e.workflow_version)
  if e.patches then f.patches = take_patches(f.patches, e.patches) end
  if e.commands then
    if e.resumed then pop_parked(view, f) end
    local from = f.version == 0 and START or f.status
    f.version = f.version + 1
    f.status = e.status or "?"
    local plain, directives = timers.split(e.commands)
    for i, command in ipairs(plain) do
      add_pending(view, { id = records.command_id(e.workflow, e.flow, f.version, i),
                          workflow = e.workflow, flow = e.flow, command = command })
    end
    if directives then f.timers = timers.apply(f.timers, directives, rec.now, rec.seq) end
    count_transition(view, e.workflow, from, rec.event.event_type, f.status)
    if wanted and wanted[1] == e.workflow and wanted[2] == e.flow then
      f.timeline = f.timeline or {}
      f.timeline[#f.timeline + 1] = { version = f.version, seq = rec.seq, event = rec.event,
                                      commands = e.commands, status = f.status }
    end
    if e.done then complete(view, f, rec.now) end
  elseif e.parked then
    if f.parked then
      f.parked.error = e.parked
    else
      f.parked = { error = e.parked, events = { rec.event } }
      view.parked[f] = true
    end
  elseif e.held then
    f.parked.events[#f.parked.events + 1] = rec.event
  else  -- a retried event that was a redelivery
    pop_parked(view, f)
  end
end

local function apply_event(view, rec, wanted)
  if rec.fired then
    local f = flow_of(view, rec.fired.workflow, rec.fired.flow)
    f.timers = timers.remove(f.timers, rec.fired.seq, rec.fired.index)
  end
  if rec.dead_letter then view.dead:remove(rec.dead_letter) end  -- retried
  if rec.late then view.dead:add { event = rec.event, error = rec.late, time = rec.now } end
  for _, e in ipairs(rec.flows) do apply_entry(view, rec, e, wanted) end
  view.seq = rec.seq
end

local apply = {
  [records.EVENT] = apply_event,
  [records.ACK] = function(view, rec) view.pending[rec.id] = nil end,
  [records.FLOW] = function(view, rec)
    local f = flow_of(view, rec.workflow, rec.flow, rec.workflow_version)
    f.version, f.status = rec.version, rec.status or "?"
    if rec.patches then f.patches = take_patches(f.patches, rec.patches) end
  end,
  [records.OUTBOX] = add_pending,
  [records.COMPLETED] = function(view, rec)
    local f = flow_of(view, rec.workflow, rec.flow)
    f.status, f.completed = rec.status, true
  end,
  [records.SEQ] = function(view, rec)
    view.seq = rec.seq
    view.dead:skip_to(rec.next_dead_letter)
  end,
  [records.SKIP] = function(view, rec) pop_parked(view, flow_of(view, rec.workflow, rec.flow)) end,
  [records.TIMER] = function(view, rec)
    local f = flow_of(view, rec.workflow, rec.flow)
    f.timers = f.timers or {}
    f.timers[#f.timers + 1] = { key = rec.key, due = rec.due, event = rec.event, seq = rec.seq,
                                index = rec.index }
  end,
  [records.PARKED] = function(view, rec)
    local f = flow_of(view, rec.workflow, rec.flow, rec.workflow_version)
    f.parked = { error = rec.error, events = rec.events }
    view.parked[f] = true
  end,
  [records.DEAD] = function(view, rec) view.dead:add(rec) end,
  [records.DROP] = function(view, rec) view.dead:remove(rec.id) end,
}

--- read(path[, opts]) -> view, or nil, message. opts.timeline = { workflow,
-- flow_id }: keep that flow's timeline (each applied event, its commands
-- and the status after it).
function M.read(path, opts)
  local next_record, info = core.journal_scan(path)
  if not next_record then return nil, info end
  local view = { path = path, bytes = info.bytes, records = info.records, dropped = info.dropped,
                 damaged_at = info.damaged_at, resume_at = info.resume_at, seq = 0,
                 workflows = {}, flows = {}, transitions = {}, pending = {}, pending_order = {},
                 parked = {}, dead = dead_letters.new() }
  local wanted = opts and opts.timeline
  for offset, kind, payload in next_record do
    local ok, rec = pcall(decode, payload)
    local step = apply[kind]
    if not ok or step == nil then
      return nil, string.format("%s: record at byte %d (type %d) is not a router record: %s",
                                path, offset, kind, ok and "unknown type" or rec)
    end
    step(view, rec, wanted)
  end
  return view
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
