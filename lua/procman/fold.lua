--- procman.fold: what a journal record means. One record, folded into
-- the durable state, does the same thing wherever it is read: the live
-- router after it journals an event (settle), recovery, compaction (the
-- inverse: the state written as records), procman inspect, verify and
-- diagram (procman.journal_view, procman.replay_plan).
--
-- The state is a table with these fields (a router is one; fold.new makes
-- one for the tools):
--   live[name][flow_id]      a live flow: a procman.pm, or a counted flow
--                            (fold.counted: version, status and event ids
--                            as the journal gives them, no code run)
--   finished[name][flow_id]  a completed flow: one string (fold.final), its final
--                            status (fold.final_status) and the event ids it
--                            handled as the codec's bytes for their array
--                            (fold.final_ids; none once let go): fold.completed_ids
--                            makes them into ids, and fold.was_seen asks the bytes
--   finished_count, finished_of[name]   how many
--   parked_of[name][flow_id] a parked flow: { events, error }; parked_count
--   older[name][flow_id]     the spec of a flow on an older version (router)
--   outbox (procman.outbox), schedule (procman.schedule),
--   dead (procman.dead_letters), seq
-- and optionally by_name (name -> newest spec: a router), hooks and warn
-- (the dead_letter hook), on_applied (tools: transitions, timelines),
-- all_flows (tools: every counted flow, completed ones too), offsets
-- (recovery: each counted flow lists the records it must replay from).
--
-- docs/journal-format.md describes each record's payload.
local core = require "procman.core"
local records = require "procman.records"
local timers = require "procman.timers"
local schedule = require "procman.schedule"
local outbox = require "procman.outbox"
local dead_letters = require "procman.dead_letters"
local patches = require "procman.patches"
local hooks = require "procman.hooks"

local copy = core.copy

local M = {}

-- ---------------------------------------------------------------------
-- Counted flows: a flow as the journal tells it, without its code
-- ---------------------------------------------------------------------

local Counted = {}
Counted.__index = Counted

function Counted:version() return self.applied end
function Counted:status() return self.last_status end
function Counted.done() return false end  -- settle is told by the journal

--- is_counted(flow) -> is it a counted flow (not a procman.pm)?
function M.is_counted(flow)
  return getmetatable(flow) == Counted
end

-- A counted flow seen for the first time (its first entry, or a snapshot).
local function counted(state, name, flow_id, workflow_version, version, status, ids)
  local g = setmetatable({ name = name, flow = flow_id, applied = version or 0, last_status = status,
                           ids = ids or {}, workflow_version = workflow_version or 1 }, Counted)
  if state.offsets then g.offsets = {} end
  local all = state.all_flows
  if all then all[name][flow_id] = g end
  return g
end

--- restore_counted(state, name, flow_id, workflow_version, version, status,
-- ids, offsets): a counted flow as recovery's scan in C (procman.fold_scan)
-- left it: the same flow the records would have counted.
function M.restore_counted(state, name, flow_id, workflow_version, version, status, ids, offsets)
  local g = counted(state, name, flow_id, workflow_version, version, status, ids)
  if g.offsets then g.offsets = offsets end
  state.live[name][flow_id] = g
end

-- The event ids a flow handled, as a completed flow keeps them: the
-- codec's bytes for their array (nil: none).
local function encoded_ids(flow)
  if getmetatable(flow) ~= Counted then return core.encoded_event_ids(flow) end
  if #flow.ids == 0 then return nil end
  return core.encode(flow.ids)
end

-- ---------------------------------------------------------------------
-- The state
-- ---------------------------------------------------------------------

--- new() -> an empty state, whose workflows are added as records name
-- them (the tools: no workflow code).
function M.new()
  return { live = {}, finished = {}, finished_count = 0, finished_of = {}, parked_of = {},
           parked_count = 0, older = {}, outbox = outbox.new(), schedule = schedule.new {},
           dead = dead_letters.new(), seq = 0, names = {} }
end

-- A workflow named by a record: known to a router (by_name), else added
-- (the tools; a router notes it in state.unknown to refuse the journal
-- once it is read, saying which workflow and where).
local function workflow(state, name, offset)
  if state.live[name] ~= nil then return name end
  if type(name) ~= "string" then
    error(string.format("a workflow name must be a string, got %s", type(name)), 0)
  end
  if state.by_name then
    state.unknown = state.unknown or {}
    state.unknown[name] = state.unknown[name] or offset
  end
  state.live[name], state.finished[name], state.parked_of[name], state.older[name] = {}, {}, {}, {}
  state.finished_of[name] = 0
  state.schedule:add(name)
  if state.all_flows then state.all_flows[name] = {} end
  if state.names then state.names[#state.names + 1] = name end
  return name
end

-- ---------------------------------------------------------------------
-- Completed, parked, dead letters
-- ---------------------------------------------------------------------

-- A completed flow is remembered with its final status and, until the
-- journal is compacted, the event ids it handled (redeliveries stay
-- no-ops), kept as bytes: a table of them is made only when asked for.
-- Both are one string (a router may remember millions of flows: a table
-- and a string each made the collector walk three objects a flow each
-- cycle): the status with its length before it (string.pack's "s4"),
-- then the ids' bytes, if any. The engine (csrc/engine.c, complete) and
-- recovery (csrc/fold_scan.c, scan:finished) write the same bytes. A
-- status that is not a string (a journal's record may lack one) keeps
-- the table { status, ids }.

--- final(status, ids) -> a completed flow's entry in finished[name];
-- ids: the codec's bytes for the array of its event ids, or nil.
function M.final(status, ids)
  if type(status) ~= "string" then return { status = status, ids = ids } end
  local entry = string.pack("s4", status)
  if ids == nil then return entry end
  return entry .. ids
end

--- final_status(final) -> the status of a completed flow's entry.
function M.final_status(final)
  if type(final) == "table" then return final.status end
  return (string.unpack("s4", final))
end

--- final_ids(final) -> the codec's bytes for its event ids, or nil.
function M.final_ids(final)
  if type(final) == "table" then return final.ids end
  local at = 5 + string.unpack("I4", final)
  if at > #final then return nil end
  return final:sub(at)
end
local function remember_completed(state, name, flow_id, status, ids)
  state.finished[name][flow_id] = M.final(status, ids)
  state.finished_count = state.finished_count + 1
  state.finished_of[name] = state.finished_of[name] + 1  -- for metrics: no walk of them all
end

local function dead_letter(state, event, err, time)
  local letter = state.dead:add { event = copy(event), error = err, time = time }
  local h = state.hooks
  if h then hooks.call(state, h, "dead_letter", letter) end
end

local function park(state, name, flow_id, event, err)
  local p = state.parked_of[name][flow_id]
  if p then
    p.error = err  -- a retried event failed again
  else
    state.parked_of[name][flow_id] = { events = { copy(event) }, error = err }
    state.parked_count = state.parked_count + 1
  end
end

local function hold(state, name, flow_id, event)
  local events = state.parked_of[name][flow_id].events
  events[#events + 1] = copy(event)
end

--- unpark_front(state, name, flow_id): drop the first parked event of a
-- flow (resumed, or skipped); unpark it when none is left.
function M.unpark_front(state, name, flow_id)
  local p = state.parked_of[name][flow_id]
  if p == nil then error(string.format("flow %s/%s is not parked", name, tostring(flow_id)), 0) end
  table.remove(p.events, 1)
  if #p.events == 0 then
    state.parked_of[name][flow_id] = nil
    state.parked_count = state.parked_count - 1
    if state.live[name][flow_id] == nil then state.older[name][flow_id] = nil end  -- never started
  end
end
local unpark_front = M.unpark_front

--- complete(state, name, flow_id, pm[, now]): a flow is done: it leaves
-- the live set with its timers. Events still parked for it (a retried
-- event finished it) can no longer be applied: they become dead letters,
-- at the record's time ('now' is journaled then).
function M.complete(state, name, flow_id, pm, now)
  state.live[name][flow_id] = nil
  state.older[name][flow_id] = nil
  state.schedule:drop(name, flow_id)
  remember_completed(state, name, flow_id, pm:status(), encoded_ids(pm))
  local p = state.parked_of[name][flow_id]
  if p then
    for _, event in ipairs(p.events) do
      dead_letter(state, event, string.format("flow %s/%s completed while this event was parked",
                                              name, tostring(flow_id)), now)
    end
    state.parked_of[name][flow_id] = nil
    state.parked_count = state.parked_count - 1
  end
end
local complete = M.complete

-- ---------------------------------------------------------------------
-- Event records
-- ---------------------------------------------------------------------

--- settle(state, targets, record[, out]): what an event record does, once
-- its flows' part is known: targets are { spec, flow, pm, committed,
-- plain, directives, done, patches, parked_error, held, resumed } (the
-- router's, after running handlers; counted ones when read from a
-- journal). Envelopes of the commands emitted are appended to 'out'.
function M.settle(state, targets, record, out)
  local fired = record.fired
  if fired then state.schedule:remove(fired.workflow, fired.flow, fired.seq, fired.index) end
  if record.dead_letter then state.dead:remove(record.dead_letter) end  -- retried
  if record.late then dead_letter(state, record.event, record.late, record.now) end
  local by_name = state.by_name
  for _, t in ipairs(targets) do
    local name, flow_id = t.spec.name, t.flow
    if t.resumed and not t.parked_error then unpark_front(state, name, flow_id) end
    if by_name and t.spec ~= by_name[name] and (t.committed or t.parked_error) then
      state.older[name][flow_id] = t.spec  -- pinned to the version it started on
    end
    if t.committed then
      if t.patches then patches.rebase(t.pm, t.patches) end
      state.live[name][flow_id] = t.pm
      state.outbox:emit(name, flow_id, t.pm:version(), t.plain, out)
      if t.directives then state.schedule:set(name, flow_id, t.directives, record.now, record.seq) end
      local done = t.done
      if done == nil then done = t.pm:done() end  -- what the code says
      if done then complete(state, name, flow_id, t.pm, record.now) end
    elseif t.parked_error then
      if t.pm then state.live[name][flow_id] = t.pm end
      park(state, name, flow_id, record.event, t.parked_error)
    elseif t.held then
      hold(state, name, flow_id, record.event)
    end
  end
end

-- The spec a counted target names: the router's (its newest version:
-- recovery pins older versions once the journal is read), else a name.
local function spec_of(state, name)
  local spec = state.by_name and state.by_name[name]
  if spec then return spec end
  local named = state.named or {}
  state.named = named
  spec = named[name] or { name = name }
  named[name] = spec
  return spec
end

-- Taken patches: a sorted set (the tools' view of a counted flow).
local function add_patches(list, ids)
  local set, out = {}, {}
  for _, id in ipairs(list or {}) do set[id] = true end
  for _, id in ipairs(ids) do set[id] = true end
  for id in pairs(set) do out[#out + 1] = id end
  table.sort(out)
  return out
end

-- One flow's entry of an event record, counted: the journaled commands,
-- status and completion are the ones that count.
local function counted_target(state, f, rec, offset, t)
  local name = workflow(state, f.workflow, offset)
  local g = state.live[name][f.flow]
  if g == nil and (f.commands or f.parked) then g = counted(state, name, f.flow, f.workflow_version) end
  t.spec, t.flow, t.pm, t.resumed, t.held, t.parked_error = spec_of(state, name), f.flow, g, f.resumed,
    f.held, f.parked
  t.committed, t.commands, t.done, t.plain, t.directives = nil, nil, nil, nil, nil
  if g and g.offsets and (f.commands or f.parked) then g.offsets[#g.offsets + 1] = offset end
  if f.commands then
    local before = g.applied == 0 and records.START or g.last_status
    g.applied, g.last_status = g.applied + 1, f.status
    local event_id = state.by_name and rawget(rec.event, "event_id")  -- a router's: for dedup
    if event_id then g.ids[#g.ids + 1] = event_id end
    if f.patches and state.all_flows then g.patches = add_patches(g.patches, f.patches) end
    t.committed, t.commands, t.done = true, f.commands, f.done or false
    t.plain, t.directives = timers.split(f.commands)
    local applied = state.on_applied
    if applied then applied(state, g, before, rec, f) end
  end
  return t
end

-- The targets of counted entries: reused from record to record (settle
-- keeps none of them).
local scratch = {}

local function fold_event(state, rec, offset)
  local fired = rec.fired
  if fired then workflow(state, fired.workflow, offset) end
  local targets, flows = scratch, rec.flows
  for i = 1, #flows do
    local t = targets[i]
    if t == nil then
      t = {}
      targets[i] = t
    end
    counted_target(state, flows[i], rec, offset, t)
  end
  for i = #flows + 1, #targets do targets[i] = nil end
  M.settle(state, targets, rec)
  state.seq = rec.seq
end

-- ---------------------------------------------------------------------
-- The other records
-- ---------------------------------------------------------------------

-- A live flow from a compaction snapshot.
local function fold_flow(state, rec, offset)
  local name = workflow(state, rec.workflow, offset)
  local g = counted(state, name, rec.flow, rec.workflow_version, rec.version, rec.status, rec.seen)
  if g.offsets then g.offsets[1] = offset end
  if rec.patches and state.all_flows then g.patches = add_patches(nil, rec.patches) end
  state.live[name][rec.flow] = g
end

local function fold_parked(state, rec, offset)
  local name = workflow(state, rec.workflow, offset)
  if state.parked_of[name][rec.flow] == nil then state.parked_count = state.parked_count + 1 end
  state.parked_of[name][rec.flow] = { events = rec.events, error = rec.error,
                                      workflow_version = rec.workflow_version or 1 }
end

local fold = {
  [records.EVENT] = fold_event,
  [records.ACK] = function(state, rec)
    if state.outbox:has(rec.id) then state.outbox:forget(rec.id) end
  end,
  [records.FLOW] = fold_flow,
  [records.OUTBOX] = function(state, rec, _, payload)
    state.outbox:add(rec, payload)  -- the journaled bytes are the envelope's
  end,
  [records.COMPLETED] = function(state, rec, offset)
    remember_completed(state, workflow(state, rec.workflow, offset), rec.flow, rec.status)
  end,
  [records.SEQ] = function(state, rec)
    state.seq = rec.seq
    state.dead:skip_to(rec.next_dead_letter)
  end,
  [records.SKIP] = function(state, rec, offset)
    unpark_front(state, workflow(state, rec.workflow, offset), rec.flow)
  end,
  [records.TIMER] = function(state, rec, offset)
    local timer = { key = rec.key, due = rec.due, event = rec.event, seq = rec.seq, index = rec.index }
    state.schedule:restore(workflow(state, rec.workflow, offset), rec.flow, timer)
  end,
  [records.PARKED] = fold_parked,
  [records.DEAD] = function(state, rec) state.dead:add(rec) end,
  [records.DROP] = function(state, rec) state.dead:remove(rec.id) end,
}

--- knows(kind) -> is 'kind' a record type of the router's journal?
function M.knows(kind)
  return fold[kind] ~= nil
end

--- record(state, kind, rec, offset[, payload]): fold one decoded record
-- (read at byte 'offset'; 'payload' its bytes) into the state. Flows are
-- counted (see the header); a router's recovery then runs the handlers of
-- the flows still live (procman.router).
function M.record(state, kind, rec, offset, payload)
  fold[kind](state, rec, offset, payload)
end

-- ---------------------------------------------------------------------
-- The state read back: versions, and the state as records (compaction)
-- ---------------------------------------------------------------------

--- workflow_version(state, name, flow_id) -> the workflow version a live
-- or parked flow runs (counted flows and parked ones say it themselves).
function M.workflow_version(state, name, flow_id)
  local flow = state.live[name][flow_id]
  if flow and getmetatable(flow) == Counted then return flow.workflow_version end
  local spec = state.older[name][flow_id]
  if spec then return spec.version end
  local p = state.parked_of[name][flow_id]
  if p and p.workflow_version and flow == nil then return p.workflow_version end
  local newest = state.by_name and state.by_name[name]
  return newest and newest.version or 1
end

-- The workflows in a fixed order: the router's, else as the journal named them.
local function names_of(state)
  if state.names then return state.names end
  local names = {}
  for name in pairs(state.live) do names[#names + 1] = name end
  table.sort(names)
  return names
end

local function version_field(v)
  if v ~= 1 then return v end
  return nil
end

-- A live flow's snapshot record: a procman.pm's state, as it is now.
local function flow_record(state, name, flow_id, pm)
  local snapshot, version, seen = core.snapshot(pm)
  return { workflow = name, flow = flow_id, state = snapshot, version = version, seen = seen,
           status = pm:status(), workflow_version = version_field(M.workflow_version(state, name, flow_id)),
           patches = patches.taken(pm) }
end

--- state_records(state) -> { { kind, payload }, ... }: the state written
-- as records (compaction): folded into an empty state they give it back.
-- A payload is a table to encode, or bytes already encoded (the outbox's).
function M.state_records(state)
  -- The counters come first, always: they must never go back (sequence
  -- numbers, dead letter ids never given twice). For a router that holds nothing
  -- they are the start values, so compacting one grows the 16-byte journal
  -- to 49 bytes: that is right (one shape for every compacted journal, no
  -- special case), and compacting it again gives the same 49 bytes.
  local out = { { records.SEQ, { seq = state.seq, next_dead_letter = state.dead.next_id } } }
  local names = names_of(state)
  for _, name in ipairs(names) do
    for flow_id, final in pairs(state.finished[name]) do  -- ids are let go here
      out[#out + 1] = { records.COMPLETED,
                        { workflow = name, flow = flow_id, status = M.final_status(final) } }
    end
    for flow_id, pm in pairs(state.live[name]) do
      out[#out + 1] = { records.FLOW, flow_record(state, name, flow_id, pm) }
    end
  end
  for _, name in ipairs(names) do
    for flow_id, p in pairs(state.parked_of[name]) do
      local version = version_field(M.workflow_version(state, name, flow_id))
      out[#out + 1] = { records.PARKED, { workflow = name, flow = flow_id, error = p.error,
                                          events = p.events, workflow_version = version } }
    end
    for flow_id, list in state.schedule:flows(name) do
      for _, t in ipairs(list) do
        out[#out + 1] = { records.TIMER, { workflow = name, flow = flow_id, key = t.key, due = t.due,
                                           event = t.event, seq = t.seq, index = t.index } }
      end
    end
  end
  for _, letter in ipairs(state.dead.list) do out[#out + 1] = { records.DEAD, letter } end
  for _, bytes in ipairs(state.outbox:encoded()) do out[#out + 1] = { records.OUTBOX, bytes } end
  return out
end

--- forget_seen(state): the journal now starts at the state's records
-- (compaction): completed flows' event ids are let go, as after a restart.
function M.forget_seen(state)
  for _, name in ipairs(names_of(state)) do
    local finished = state.finished[name]
    for flow_id, final in pairs(finished) do finished[flow_id] = M.final(M.final_status(final)) end
  end
end

--- was_seen(final, event_id) -> did the completed flow 'final' (an entry
-- of finished[name]) handle that event_id (a redelivery)? Read from its
-- bytes: no table of ids is made.
function M.was_seen(final, event_id)
  if event_id == nil then return false end
  local ids = M.final_ids(final)
  return ids ~= nil and core.ids_include(ids, event_id)
end

--- completed_ids(final) -> the event ids a completed flow handled (an
-- array, in the order it keeps them; empty once they were let go).
function M.completed_ids(final)
  local ids = M.final_ids(final)
  if ids == nil then return {} end
  return core.decode(ids)
end

--- trim_histories(state): the journal now starts each live flow at its
-- snapshot: the events a flow kept to rebuild its state are redundant.
function M.trim_histories(state)
  for _, name in ipairs(names_of(state)) do
    for _, pm in pairs(state.live[name]) do
      if getmetatable(pm) ~= Counted then core.trim(pm) end
    end
  end
end

return M
