--- procman.router: many flows of many workflows, routed by correlation id,
-- journaled, with an outbox of commands that stay pending until acked.
--
--   local r <close> = procman.router { workflows = { batch, order },
--                                      journal = "flows.pmj", sync = "always" }
--   for _, envelope in ipairs(r:handle(event)) do ... end
--   r:dispatch(function(command, envelope) gateway.send(command, envelope.id) end)
--
-- Journal records (docs/journal-format.md gives the framing; payloads are
-- the codec's MessagePack):
--   type 1, an event:     { seq = n, event = {...},
--                           flows = { { workflow = w, flow = id, commands = {...} }, ... } }
--   type 2, an ack:       { id = "<command id>" }
-- and, written by compaction at the start of a new journal:
--   type 3, a live flow:  { workflow = w, flow = id, state = {...}, version = n, seen = { ids } }
--   type 4, a pending command: an envelope { id, workflow, flow, command }
--   type 5, a completed flow:  { workflow = w, flow = id, status = s }
--   type 6, the sequence:      { seq = n }
-- Recovery replays event records through the handlers (their commands are
-- compared with the journaled ones, not emitted again), restores snapshot
-- records as they are, and applies acks.
local core = require "procman.core"
local workflow = require "procman.workflow"
local pretty = require "procman.pretty"

local encode, decode, copy = core.encode, core.decode, core.copy

local RECORD_EVENT, RECORD_ACK, RECORD_FLOW, RECORD_OUTBOX, RECORD_COMPLETED, RECORD_SEQ =
  1, 2, 3, 4, 5, 6
local OPTIONS = { workflows = true, journal = true, sync = true, repair = true,
                  on_divergence = true, warn = true }
local SYNC = { always = true, batch = true, none = true }

local Router = {}

-- Raise "procman.router: ...". Like the errors of procman.pm, they carry
-- no position: the message says what and where (workflow, flow, event).
local function fail(fmt, ...)
  error("procman.router: " .. string.format(fmt, ...), 0)
end

local function check_open(self)
  if self.closed then error("procman.router: this router is closed", 0) end
end

local function label(name, flow_id)
  return string.format("%s/%s", name, tostring(flow_id))
end

-- ---------------------------------------------------------------------
-- Options
-- ---------------------------------------------------------------------

local function check_workflows(list)
  if type(list) ~= "table" or #list == 0 then
    fail("workflows must be a non-empty array of workflows, got %s", type(list))
  end
  local specs, by_name = {}, {}
  for i, wf in ipairs(list) do
    local spec = workflow.spec(wf)
    if spec == nil then
      -- { require "m" } also keeps require's second result, the file name
      local hint = (type(wf) == "string" and wf:match("%.lua$"))
                   and "; a second result of require? write (require \"...\")" or ""
      fail("workflows[%d] is not a workflow (see procman.workflow)%s", i, hint)
    end
    if by_name[spec.name] then fail("workflows[%d]: two workflows are named %q", i, spec.name) end
    if spec.correlate == nil then
      fail("workflow %q has no correlate: the router cannot tell its flows apart", spec.name)
    end
    specs[i], by_name[spec.name] = spec, spec
  end
  return specs, by_name
end

local function check_options(opts)
  if type(opts) ~= "table" then fail("options must be a table, got %s", type(opts)) end
  for k in pairs(opts) do
    if not OPTIONS[k] then fail("unknown option %s", tostring(k)) end
  end
  if opts.journal ~= nil and (type(opts.journal) ~= "string" or opts.journal == "") then
    fail("journal must be a file path, got %s", type(opts.journal))
  end
  if opts.sync ~= nil and not SYNC[opts.sync] then
    fail('sync must be "always", "batch" or "none", got %s', tostring(opts.sync))
  end
  local d = opts.on_divergence
  if d ~= nil and d ~= "error" and d ~= "warn" then
    fail('on_divergence must be "error" or "warn", got %s', tostring(d))
  end
  if opts.warn ~= nil and type(opts.warn) ~= "function" then
    fail("warn must be a function, got %s", type(opts.warn))
  end
end

-- ---------------------------------------------------------------------
-- The outbox
-- ---------------------------------------------------------------------

-- The queue holds envelopes in emission order from 'head' to 'tail'; acked
-- ones are dropped from the front. (Not '#queue': with the front cleared
-- the length of the table is not defined.)
local function enqueue(self, envelope)
  self.tail = self.tail + 1
  self.queue[self.tail] = envelope
  self.pending_by_id[envelope.id] = envelope
  self.pending_count = self.pending_count + 1
end

-- Add the envelopes of one flow's commands; ids are deterministic: the
-- workflow, the flow, the flow's version after the event, the index. The
-- outbox keeps its own copy of each command: a handler that kept the table
-- cannot change a pending command later, nor make the live outbox differ
-- from a recovered one.
local function emit(self, name, flow_id, version, commands, out)
  for i, command in ipairs(commands) do
    local envelope = { id = string.format("%s/%s/%d/%d", name, tostring(flow_id), version, i),
                       workflow = name, flow = flow_id, command = copy(command) }
    enqueue(self, envelope)
    if out then out[#out + 1] = copy(envelope) end
  end
end

local function forget_pending(self, id)
  self.pending_by_id[id] = nil
  self.pending_count = self.pending_count - 1
  local q, head = self.queue, self.head
  while head <= self.tail and self.pending_by_id[q[head].id] == nil do
    q[head] = nil
    head = head + 1
  end
  if head > self.tail then self.queue, head, self.tail = {}, 1, 0 end
  self.head = head
end

-- ---------------------------------------------------------------------
-- Flows
-- ---------------------------------------------------------------------

local function flow_id_of(spec, event)
  local c = spec.correlate
  local id
  if type(c) == "string" then id = rawget(event, c) else id = c(event) end
  if id == nil then
    local how = type(c) == "string" and ("the field " .. c) or "a flow id (correlate returned nil)"
    fail("event '%s' lacks %s, which workflow %q needs", rawget(event, "event_type"), how, spec.name)
  end
  if not (math.type(id) == "integer" or (type(id) == "string" and id ~= "")) then
    fail("event '%s': flow id for workflow %q must be a non-empty string or an integer, got %s",
         rawget(event, "event_type"), spec.name, type(id))
  end
  return id
end

-- A completed flow is remembered with its final status and, until the
-- journal is compacted, the event ids it handled (redeliveries stay no-ops).
local function remember_completed(self, name, flow_id, status, seen_ids)
  local set
  if seen_ids and #seen_ids > 0 then
    set = {}
    for _, id in ipairs(seen_ids) do set[id] = true end
  end
  self.finished[name][flow_id] = { status = status, seen = set }
  self.finished_count = self.finished_count + 1
end

-- The flows an event goes to: { spec, flow, pm (nil: a new flow) }. A
-- redelivery to a completed flow goes nowhere.
local function targets_of(self, event, event_type)
  local targets = {}
  for _, spec in ipairs(self.specs) do
    if spec.on[event_type] then
      local flow_id = flow_id_of(spec, event)
      local pm = self.live[spec.name][flow_id]
      local final = pm == nil and self.finished[spec.name][flow_id]
      local event_id = rawget(event, "event_id")
      if final and final.seen and event_id ~= nil and final.seen[event_id] then
        pm = false  -- already handled: at-least-once delivery
      elseif final then
        fail("flow %s is complete (%s): event '%s' came after it finished",
             label(spec.name, flow_id), final.status, event_type)
      elseif pm == nil and not spec.starts_set[event_type] then
        fail("no flow %s for %s", label(spec.name, flow_id), event_type)
      end
      if pm ~= false then targets[#targets + 1] = { spec = spec, flow = flow_id, pm = pm } end
    end
  end
  return targets
end

-- Take back what the first n targets committed.
local function undo(targets, n)
  for i = n, 1, -1 do
    if targets[i].committed then core.undo(targets[i].pm) end
  end
end

-- Run the event through every target; on any failure undo and re-raise.
local function apply(targets, event)
  for i, t in ipairs(targets) do
    local ok, result = true, t.pm
    if result == nil then ok, result = pcall(core.new, t.spec, t.flow) end
    local before = ok and result:version()
    if ok then
      t.pm = result
      ok, result = pcall(result.handle, result, event)
    end
    if not ok then
      undo(targets, i - 1)
      error(result, 0)
    end
    t.commands, t.committed = result, t.pm:version() > before
  end
end

-- After a commit: live flows, completed flows, outbox.
local function settle(self, targets, out)
  for _, t in ipairs(targets) do
    if t.committed then
      local name = t.spec.name
      self.live[name][t.flow] = t.pm
      emit(self, name, t.flow, t.pm:version(), t.commands, out)
      if t.pm:done() then
        self.live[name][t.flow] = nil
        remember_completed(self, name, t.flow, t.pm:status(), core.event_ids(t.pm))
      end
    end
  end
end

-- ---------------------------------------------------------------------
-- Journal and recovery
-- ---------------------------------------------------------------------

local function event_record(self, targets, event)
  local flows = {}
  for _, t in ipairs(targets) do
    if t.committed then
      flows[#flows + 1] = { workflow = t.spec.name, flow = t.flow, commands = t.commands }
    end
  end
  return { seq = self.seq + 1, event = event, flows = flows }
end

local function diverged(self, where, journaled, now)
  local msg = string.format("replay diverged at %s: the journal says the handler returned %s, "
                            .. "but now it returns %s", where, pretty.format(journaled),
                            pretty.format(now))
  if self.on_divergence == "warn" then
    self.warn("procman.router: " .. msg)
  else
    error("procman.router: " .. msg, 0)
  end
end

-- Replay one event record: the flows handle it again; their commands are
-- compared with the journaled ones, and the journaled ones go to the outbox.
-- Where a journaled flow event is, for messages (built only when needed).
local function where(self, f, rec, offset)
  return string.format("%s, sequence %d (byte %d of %s)", label(f.workflow, f.flow),
                       rec.seq, offset, self.journal_path)
end

-- Do two command lists differ? Most are empty: no need to encode those.
local function differ(a, b)
  if next(a) == nil and next(b) == nil then return false end
  return encode(a) ~= encode(b)
end

local function replay_event(self, rec, offset)
  for _, f in ipairs(rec.flows) do
    local spec = self.by_name[f.workflow]
    if spec == nil then
      error(string.format("procman.router: the journal has flows of workflow %q, "
                          .. "which this router was not given (%s)", f.workflow,
                          where(self, f, rec, offset)), 0)
    end
    local pm = self.live[spec.name][f.flow] or core.new(spec, f.flow)
    local ok, now = pcall(pm.handle, pm, rec.event)
    if not ok then
      error(string.format("procman.router: replay failed at %s: %s", where(self, f, rec, offset),
                          tostring(now)), 0)
    end
    if differ(now, f.commands) then diverged(self, where(self, f, rec, offset), f.commands, now) end
    settle(self, { { spec = spec, flow = f.flow, pm = pm, committed = true,
                     commands = f.commands } })
  end
  self.seq = rec.seq
end

local function spec_for(self, name, offset)
  local spec = self.by_name[name]
  if spec == nil then
    error(string.format("procman.router: the journal has flows of workflow %q, which this router "
                        .. "was not given (byte %d of %s)", name, offset, self.journal_path), 0)
  end
  return spec
end

-- Records written by compaction: the router's state, as it was.
local function restore_record(self, kind, rec, offset)
  if kind == RECORD_FLOW then
    local spec = spec_for(self, rec.workflow, offset)
    self.live[spec.name][rec.flow] = core.restore(spec, rec.flow, rec.state, rec.version, rec.seen)
  elseif kind == RECORD_OUTBOX then
    enqueue(self, rec)
  elseif kind == RECORD_COMPLETED then
    remember_completed(self, spec_for(self, rec.workflow, offset).name, rec.flow, rec.status)
  else
    self.seq = rec.seq
  end
end

local function recover(self, j)
  for offset, kind, payload in j:records() do
    local rec = decode(payload)
    if kind == RECORD_EVENT then
      replay_event(self, rec, offset)
    elseif kind == RECORD_ACK then
      if self.pending_by_id[rec.id] then forget_pending(self, rec.id) end
    elseif kind >= RECORD_FLOW and kind <= RECORD_SEQ then
      restore_record(self, kind, rec, offset)
    else
      error(string.format("procman.router: %s: unknown record type %d at byte %d",
                          self.journal_path, kind, offset), 0)
    end
    self.recovered = self.recovered + 1
  end
end

local function open_journal(self, opts)
  local j, info, code = core.journal_open(opts.journal, { sync = opts.sync, repair = opts.repair })
  if j == nil then
    if code == 84 then error("procman.router: " .. info, 0) end  -- EILSEQ: damaged
    return nil, "procman.router: " .. info
  end
  self.journal, self.dropped = j, info.dropped
  if info.dropped > 0 then
    self.warn(string.format("procman.router: %s: cut a torn tail of %d bytes (a crash while writing)",
                            opts.journal, info.dropped))
  end
  local ok, err = pcall(recover, self, j)
  if not ok then
    j:close()
    error(err, 0)
  end
  return true
end

-- ---------------------------------------------------------------------
-- The public methods
-- ---------------------------------------------------------------------

--- r:handle(event) -> envelopes { id, workflow, flow, command }
-- Atomic: if any flow fails, or the journal cannot take the record,
-- nothing changes. A failure of the journal returns nil, message.
function Router:handle(event)
  check_open(self)
  if type(event) ~= "table" then fail("event must be a table, got %s", type(event)) end
  local event_type = rawget(event, "event_type")
  if type(event_type) ~= "string" or event_type == "" then
    fail("event.event_type must be a non-empty string, got %s", type(event_type))
  end
  local targets = targets_of(self, event, event_type)
  apply(targets, event)
  local record = event_record(self, targets, event)
  if #record.flows == 0 then return {} end  -- a redelivery everywhere
  local ok, bytes = pcall(encode, record)
  if not ok then
    undo(targets, #targets)
    fail("a handler returned commands that are not data: %s", bytes)
  end
  if self.journal then
    local at, err = self.journal:append(RECORD_EVENT, bytes)
    if not at then
      undo(targets, #targets)
      return nil, "procman.router: " .. err
    end
  end
  self.seq = record.seq
  local out = {}
  settle(self, targets, out)
  return out
end

--- r:pending() -> the envelopes not yet acked, in emission order (copies).
function Router:pending()
  check_open(self)
  local out = {}
  for i = self.head, self.tail do
    local e = self.queue[i]
    if self.pending_by_id[e.id] then out[#out + 1] = copy(e) end
  end
  return out
end

--- r:ack(id) -> true, or nil, message if the journal cannot take it.
function Router:ack(id)
  check_open(self)
  if type(id) ~= "string" or self.pending_by_id[id] == nil then
    fail("no pending command with id %s", tostring(id))
  end
  if self.journal then
    local at, err = self.journal:append(RECORD_ACK, encode({ id = id }))
    if not at then return nil, "procman.router: " .. err end
  end
  forget_pending(self, id)
  return true
end

--- r:dispatch(fn) -> count[, error]: fn(command, envelope) for each pending
-- envelope in order, acking each that returns; stops at the first error.
function Router:dispatch(fn)
  check_open(self)
  if type(fn) ~= "function" then fail("dispatch needs a function(command, envelope)") end
  local count = 0
  for _, envelope in ipairs(self:pending()) do
    local ok, err = pcall(fn, envelope.command, envelope)
    if not ok then return count, err end
    local acked, why = self:ack(envelope.id)
    if not acked then return count, why end
    count = count + 1
  end
  return count
end

--- r:flow(workflow_name, flow_id) -> the live procman.pm, or nil.
function Router:flow(name, flow_id)
  check_open(self)
  if self.by_name[name] == nil then fail("no workflow named %s", tostring(name)) end
  return self.live[name][flow_id]
end

--- for pm in r:flows() do ... end: the live flows.
function Router:flows()
  check_open(self)
  local list = {}
  for _, spec in ipairs(self.specs) do
    for _, pm in pairs(self.live[spec.name]) do list[#list + 1] = pm end
  end
  local i = 0
  return function()
    i = i + 1
    return list[i]
  end
end

--- r:completed(workflow_name, flow_id) -> the final status, or nil.
function Router:completed(name, flow_id)
  check_open(self)
  if self.by_name[name] == nil then fail("no workflow named %s", tostring(name)) end
  local final = self.finished[name][flow_id]
  return final and final.status
end

--- r:stats() -> counts.
function Router:stats()
  check_open(self)
  local live = 0
  for _, spec in ipairs(self.specs) do
    for _ in pairs(self.live[spec.name]) do live = live + 1 end
  end
  return { live = live, completed = self.finished_count, pending = self.pending_count,
           journal_bytes = self.journal and self.journal:size() or 0,
           recovered = self.recovered, dropped = self.dropped, seq = self.seq }
end

-- The records of a compacted journal: the router's state now.
local function state_records(self)
  local records = { { RECORD_SEQ, { seq = self.seq } } }
  for _, spec in ipairs(self.specs) do
    for flow_id, final in pairs(self.finished[spec.name]) do  -- ids are let go here
      records[#records + 1] = { RECORD_COMPLETED, { workflow = spec.name, flow = flow_id,
                                                    status = final.status } }
    end
    for flow_id, pm in pairs(self.live[spec.name]) do
      local state, version, seen = core.snapshot(pm)
      records[#records + 1] = { RECORD_FLOW, { workflow = spec.name, flow = flow_id, state = state,
                                               version = version, seen = seen } }
    end
  end
  for _, envelope in ipairs(self:pending()) do
    records[#records + 1] = { RECORD_OUTBOX, envelope }
  end
  return records
end

-- Write 'records' to a new journal at 'tmp', durably; true or nil, message.
local function write_journal(tmp, records)
  os.remove(tmp)  -- left by a compaction that crashed: we hold the lock
  local j, err = core.journal_create(tmp, { sync = "batch" })
  if not j then return nil, err end
  for _, r in ipairs(records) do
    local at, why = j:append(r[1], encode(r[2]))
    if not at then
      j:close()
      os.remove(tmp)
      return nil, why
    end
  end
  local ok, why = j:close()  -- syncs
  if not ok then
    os.remove(tmp)
    return nil, why
  end
  return true
end

--- r:compact() -> true, or nil, message: rewrite the journal as snapshots
-- of the live flows, the completed set and the pending outbox, so that
-- recovery time depends on live state, not on all of history. Written to a
-- temporary file in the same directory, synced, renamed over the journal.
function Router:compact()
  check_open(self)
  if not self.journal then fail("compact needs a journal") end
  local tmp = self.journal_path .. ".compact"
  local ok, err = write_journal(tmp, state_records(self))
  if not ok then return nil, "procman.router: compaction failed, the journal is unchanged: " .. err end
  ok, err = core.journal_replace(tmp, self.journal_path)
  if not ok then
    os.remove(tmp)
    return nil, "procman.router: compaction failed, the journal is unchanged: " .. err
  end
  self.journal:close()  -- the old file, now unlinked
  local j, info = core.journal_open(self.journal_path, { sync = self.sync })
  if not j then  -- past the point of no return: the new journal is in place
    self.closed = true
    error("procman.router: compacted, but cannot reopen the journal: " .. info, 0)
  end
  self.journal = j
  for _, spec in ipairs(self.specs) do  -- as after a restart: completed flows' ids are gone
    for _, final in pairs(self.finished[spec.name]) do final.seen = nil end
  end
  return true
end

--- r:flush() -> true, or nil, message: make every record durable.
function Router:flush()
  check_open(self)
  if self.journal then
    local ok, err = self.journal:sync()
    if not ok then return nil, "procman.router: " .. err end
  end
  return true
end

--- r:close(), <close>, __gc: flush and close the journal; safe twice.
function Router:close()
  if self.closed then return true end
  self.closed = true
  if self.journal then
    local ok, err = self.journal:close()
    if not ok then return nil, "procman.router: " .. err end
  end
  return true
end

local meta = {
  __name = "procman.router",
  __index = Router,
  __close = function(self) self:close() end,
  __gc = function(self) self:close() end,
  __tostring = function(self)
    if self.closed then return "procman.router (closed)" end
    local s = self:stats()
    return string.format("procman.router (%d live, %d completed, %d pending)",
                         s.live, s.completed, s.pending)
  end,
}

--- procman.router(opts) -> router, or nil, message if the journal cannot
-- be opened. Misuse and a damaged journal raise.
return function(opts)
  check_options(opts)
  local specs, by_name = check_workflows(opts.workflows)
  local self = setmetatable({
    specs = specs, by_name = by_name, live = {}, finished = {}, finished_count = 0,
    queue = {}, head = 1, tail = 0, pending_by_id = {}, pending_count = 0,
    seq = 0, recovered = 0, dropped = 0, closed = false,
    on_divergence = opts.on_divergence or "error",
    warn = opts.warn or function(msg) warn(msg) end,
    journal_path = opts.journal, sync = opts.sync,
  }, meta)
  for _, spec in ipairs(specs) do
    self.live[spec.name], self.finished[spec.name] = {}, {}
  end
  if opts.journal then
    local ok, err = open_journal(self, opts)
    if not ok then
      self.closed = true
      return nil, err
    end
  end
  return self
end
