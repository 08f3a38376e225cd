--- procman.router: many flows of many workflows, routed by correlation id,
-- journaled, with an outbox of commands that stay pending until acked,
-- timers injected as events, and parking of flows whose handlers fail.
--
--   local r <close> = procman.router { workflows = { batch, order },
--                                      journal = "flows.pmj", sync = "always" }
--   for _, envelope in ipairs(r:handle(event)) do ... end
--   r:dispatch(function(command, envelope) gateway.send(command, envelope.id) end)
--   r:tick(now)   -- inject the events of the timers due at 'now'
--
-- Journal records (docs/journal-format.md gives the framing and the table
-- of record types; payloads are the codec's MessagePack). Type 1, an event,
-- lists what each flow it went to did with it:
--   { seq = n, event = {...}, now = t (when an 'after' needed the time),
--     fired = { workflow, flow, seq, index } (when a timer injected it),
--     flows = { { workflow, flow, commands = {...},       -- applied, with
--                 status = s, done = true|nil },          -- the flow's status after
--               { workflow, flow, parked = "error" },     -- failed: parked
--               { workflow, flow, held = true }, ... } }  -- kept for a parked flow
-- with resumed = true on the entry when r:resume retried a parked event,
-- workflow_version = v on a flow's first entry (when v is not 1), patches =
-- { id, ... } on the entry whose event took those procman.patched changes,
-- late = "message" on the record when the late part of the event is
-- kept as a dead letter (on_late = "dead_letter"), and dead_letter = id on
-- the record when r:retry_dead_letter retried that dead letter.
-- Recovery reads the journal once for a plan (procman.replay_plan: which
-- flows complete, which versions the live ones need), then replays the
-- event records of the flows live at the end through the handlers of
-- their versions (their commands are compared with the journaled ones,
-- not emitted again), counts those of flows that complete without running
-- them, restores snapshot records as they are, and applies acks, skips, dead
-- letters and drops.
local core = require "procman.core"
local workflow = require "procman.workflow"
local pretty = require "procman.pretty"
local timers = require "procman.timers"
local schedule = require "procman.schedule"
local records = require "procman.records"
local outbox = require "procman.outbox"
local compaction = require "procman.compaction"
local message = require "procman.message"
local dead_letters = require "procman.dead_letters"
local hooks = require "procman.hooks"
local metrics = require "procman.metrics"
local patches = require "procman.patches"
local replay_plan = require "procman.replay_plan"
local fold = require "procman.fold"
local fold_scan = require "procman.fold_scan"
local describe = require "procman.describe"

local encode, decode, copy, monotonic = core.encode, core.decode, core.copy, core.monotonic
local forget = core.outbox_methods.forget

local RECORD_EVENT, RECORD_ACK, RECORD_FLOW, RECORD_SKIP, RECORD_DEAD, RECORD_DROP =
  records.EVENT, records.ACK, records.FLOW, records.SKIP, records.DEAD, records.DROP
local OPTIONS = { workflows = true, journal = true, sync = true, repair = true,
                  on_divergence = true, warn = true, clock = true, on_error = true,
                  on_unroutable = true, on_unknown = true, on_late = true, hooks = true, metrics = true }
local ON_UNKNOWN = { ignore = true, dead_letter = true, raise = true }
local ON_LATE = { raise = true, ignore = true, dead_letter = true }
local OPTION_NAMES = {}
for k in pairs(OPTIONS) do OPTION_NAMES[#OPTION_NAMES + 1] = k end
table.sort(OPTION_NAMES)
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

-- A handler (of any router) may not change a router: a flow's undo replays
-- its handler and the engine's Lua path may run it again, so what it did
-- would happen more than once and not be taken back with a failed event.
local function check_not_in_handler(method)
  if patches.context then
    fail("r:%s called from a handler: handlers are pure (return commands)", method)
  end
end

local function label(name, flow_id)
  return string.format("%s/%s", name, tostring(flow_id))
end

-- ---------------------------------------------------------------------
-- Options
-- ---------------------------------------------------------------------

local function check_workflows(list)
  local specs, by_name, versions = workflow.routable(list)
  if not specs then fail("%s", by_name) end
  return specs, by_name, versions
end

-- The options, checked, as a plain table: read with next and rawget, so a
-- table with metamethods runs none of them.
local function check_options(given)
  if type(given) ~= "table" then fail("options must be a table, got %s", type(given)) end
  local opts = {}
  for k, v in next, given do
    if not OPTIONS[k] then
      fail("unknown option %s%s; the options are %s", type(k) == "string" and k or type(k),
           describe.did_you_mean(k, OPTION_NAMES), table.concat(OPTION_NAMES, ", "))
    end
    opts[k] = v
  end
  if opts.journal ~= nil and (type(opts.journal) ~= "string" or opts.journal == "") then
    fail("journal must be a file path, got %s", type(opts.journal))
  end
  if opts.sync ~= nil and not SYNC[opts.sync] then
    fail('sync must be "always", "batch" or "none", got %s', tostring(opts.sync))
  end
  local d = opts.on_divergence
  if d ~= nil and d ~= "error" and d ~= "raise" and d ~= "warn" then
    fail('on_divergence must be "raise" (or "error") or "warn", got %s', tostring(d))
  end
  for _, f in ipairs { "warn", "clock" } do
    if opts[f] ~= nil and type(opts[f]) ~= "function" then
      fail("%s must be a function, got %s", f, type(opts[f]))
    end
  end
  if opts.on_error ~= nil and opts.on_error ~= "raise" and opts.on_error ~= "park" then
    fail('on_error must be "raise" or "park", got %s', tostring(opts.on_error))
  end
  local u = opts.on_unroutable
  if u ~= nil and u ~= "raise" and u ~= "dead_letter" then
    fail('on_unroutable must be "raise" or "dead_letter", got %s', tostring(u))
  end
  if opts.on_unknown ~= nil and not ON_UNKNOWN[opts.on_unknown] then
    fail('on_unknown must be "ignore", "dead_letter" or "raise", got %s', tostring(opts.on_unknown))
  end
  if opts.on_late ~= nil and not ON_LATE[opts.on_late] then
    fail('on_late must be "raise", "ignore" or "dead_letter", got %s', tostring(opts.on_late))
  end
  if opts.hooks ~= nil then opts.hooks = hooks.check_all(opts.hooks, "procman.router") end
  if opts.metrics ~= nil and type(opts.metrics) ~= "boolean" then
    fail("metrics must be a boolean, got %s", type(opts.metrics))
  end
  return opts
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
    local what_to_do = math.type(id) == "float" and ": send an integer, or the id as a string"
                       or id == "" and ": the event must name its flow" or ""
    fail("event '%s': flow id for workflow %q must be a non-empty string or an integer, got %s%s",
         rawget(event, "event_type"), spec.name, describe.value(id), what_to_do)
  end
  return id
end

-- When a flow's id looks like 'flow_id' but has the other type (7 and
-- "7"): a hint that says so, else "".
local function other_typed_flow(self, name, flow_id)
  local other = math.type(flow_id) == "integer" and tostring(flow_id) or math.tointeger(tonumber(flow_id))
  if other == nil or tostring(other) ~= tostring(flow_id) then return "" end
  if self.owns and not self.owns(name, other) then return "" end  -- (a worker's: it fills the flow in)
  local known = self.live[name][other] or self.parked_of[name][other] or self.finished[name][other]
  if known == nil then return "" end
  return string.format(": the event's flow id is %s, but there is a flow %s; ids of different types "
                       .. "are different flows: send the id as the flow has it", describe.value(flow_id),
                       describe.value(other))
end

-- The code a flow runs: the version it started on (only flows on an older
-- version than the newest are listed in self.older).
local function flow_spec(self, name, flow_id)
  return self.older[name][flow_id] or self.by_name[name]
end

-- A new event for a completed flow (not a redelivery): the late part of
-- an event, judged after its live targets are known (on_late).
local function late_part(name, flow_id, final, event_type)
  return string.format("flow %s is complete (%s): event '%s' came after it finished",
                       label(name, flow_id), fold.final_status(final), event_type)
end

-- One workflow's target for an event, or nil (a redelivery to a completed
-- flow, a flow whose version has no handler for it) with, as second
-- result, "late" and the message when the flow is complete, or "version"
-- and the message when its version has no handler.
local function target_in(self, newest, event, event_type)
  local name = newest.name
  local flow_id = flow_id_of(newest, event)
  local owns = self.owns  -- a PostgreSQL worker's: a flow of a partition it owns (and loaded), or none
  if owns and not owns(name, flow_id) then return nil end
  local pm = self.live[name][flow_id]
  local parked = self.parked_of[name][flow_id] ~= nil
  if pm ~= nil or parked then
    local spec = flow_spec(self, name, flow_id)
    if spec.on[event_type] == nil then
      return nil, "version", string.format("flow %s runs version %d of %s, which has no handler "
                                           .. "for '%s'", label(name, flow_id), spec.version, name,
                                           event_type)
    end
    return { spec = spec, flow = flow_id, pm = pm, held = parked }
  end
  local final = self.finished[name][flow_id]
  if final then
    if fold.was_seen(final, rawget(event, "event_id")) then return nil end  -- redelivered
    return nil, "late", late_part(name, flow_id, final, event_type)
  end
  if newest.on[event_type] == nil then  -- only older versions handle it: no flow to start
    return nil, "version", string.format("no flow %s for %s, and version %d of %s (new flows start on it) "
                                         .. "has no handler for it", label(name, flow_id), event_type,
                                         newest.version, name)
  end
  if not newest.starts_set[event_type] then
    fail("no flow %s for %s%s", label(name, flow_id), event_type, other_typed_flow(self, name, flow_id))
  end
  return { spec = newest, flow = flow_id, new = true }
end

-- The flows an event goes to: { spec, flow, pm (nil: a new flow), held
-- (the flow is parked), new }, and what kept it from others: { late =
-- { message, ... }, version = message }. A redelivery to a completed flow
-- goes nowhere; a completed flow never keeps the event from live flows of
-- other workflows.
local function targets_of(self, event, event_type)
  local targets, missed = {}, nil
  for _, newest in ipairs(self.specs) do
    if self.types_of[newest.name][event_type] then
      local t, why, text = target_in(self, newest, event, event_type)
      if t then
        targets[#targets + 1] = t
      elseif why then
        missed = missed or { late = {} }
        if why == "late" then missed.late[#missed.late + 1] = text else missed.version = text end
      end
    end
  end
  return targets, missed
end

-- Take back what the first n targets committed. Judged by the flow's
-- version, not by t.committed: memory may run out between a handler's
-- success and the assignment that would have said so.
local function undo(targets, n)
  for i = n, 1, -1 do
    local t = targets[i]
    if t.before ~= nil and t.pm:version() > t.before then
      local ctx = patches.UNDO  -- pm.c replays the flow's history: patched() as it was
      ctx.pm = t.pm
      patches.context = ctx
      core.undo(t.pm)
      patches.context = false
    end
    if t.committed then t.committed = false end  -- (assigning a new key could fail)
  end
end

-- Run the event through one target's flow: t.committed, t.commands (as the
-- handler returned them), t.plain (the commands for the outbox) and
-- t.directives (timers; nil for none). Returns nil, or the error message
-- with the flow unchanged.
local function run(t, event)
  local ok, result = true, t.pm
  if result == nil then ok, result = pcall(core.new, t.spec, t.flow) end
  if not ok then return message(result) end
  t.pm = result
  t.before = result:version()
  local ctx = patches.LIVE
  ctx.pm, ctx.recorded = result, false
  patches.context = ctx
  ok, result = pcall(result.handle, result, event)
  patches.context = false
  if not ok and type(result) ~= "string" then  -- a handler's error object: pm:handle passed it as it is
    return string.format("%s: handler for '%s' failed: %s", label(t.spec.name, t.flow),
                         rawget(event, "event_type"), message(result))
  end
  if not ok then return result end
  t.committed = t.pm:version() > t.before
  local plain, directives
  ok, plain, directives = pcall(timers.split, result)
  if not ok then
    undo({ t }, 1)
    return string.format("%s: handler for '%s' returned a bad timer directive: %s",
                         label(t.spec.name, t.flow), rawget(event, "event_type"), plain)
  end
  t.commands, t.plain, t.directives = result, plain, directives
  t.patches = ctx.recorded or nil  -- the changes this event took (procman.patched)
  if t.committed then  -- journaled with the event, so tools can read flows without the code
    t.status, t.done = t.pm:status(), t.pm:done()
  end
  return nil
end

-- Lua's message for a memory error: never a reason to park a flow.
local NO_MEMORY = "not enough memory"

-- Run the event through every target that is not parked. A failure parks
-- its flow when the router parks (or when the event is a parked one being
-- retried); otherwise, and always for a memory error, everything is undone
-- and the error raised.
local function apply(self, targets, event)
  for i, t in ipairs(targets) do
    if not t.held then
      local err = run(t, event)
      if err then
        if (self.on_error ~= "park" and not t.resumed) or err:find(NO_MEMORY, 1, true) then
          undo(targets, i - 1)
          error(err, 0)
        end
        t.parked_error = err
      end
    end
  end
end

-- ---------------------------------------------------------------------
-- Parked flows, timers, dead letters: the router's state besides flows
-- ---------------------------------------------------------------------

-- Call a hook (h: self.hooks, nil when none is set). One that raises is
-- reported and changes nothing: what it reports is done already.
local call_hook = hooks.call

-- Drop the first parked event of a flow; unpark it when none is left.
local unpark_front = fold.unpark_front

-- A flow is done: it leaves the live set (procman.fold says what follows).
local complete = fold.complete

-- After a record is journaled: flows, timers, parked flows, completed
-- flows, outbox, as procman.fold says a record does (the same fold reads
-- the journal back: the same journal always gives the same router).
local settle = fold.settle

-- ---------------------------------------------------------------------
-- Journal and recovery
-- ---------------------------------------------------------------------

local function read_clock(self)
  local now = self.clock()
  if type(now) ~= "number" or now ~= now then
    fail("clock() must return a number, got %s", tostring(now))
  end
  return now
end

-- A due time that would wrap around the integer clock is refused: the
-- event is undone and the error raised (a handler's mistake, like a bad
-- directive).
local function check_due(targets, now, event)
  for _, t in ipairs(targets) do
    local why = t.committed and t.directives and timers.check_due(t.directives, now)
    if why then
      fail("%s: handler for '%s' returned a bad timer directive: %s", label(t.spec.name, t.flow),
           rawget(event, "event_type"), why)
    end
  end
end

-- The journal record of an event: nil when no flow did anything with it
-- (a redelivery everywhere), it fired no timer and left no late part to
-- keep. A flow's first entry names its workflow version (when not 1) and
-- an entry lists the patches (procman.patched) the event took.
local function event_record(self, targets, event, extra)
  local flows, need_now = {}, false
  for _, t in ipairs(targets) do
    local f = { workflow = t.spec.name, flow = t.flow, resumed = t.resumed or nil }
    if t.new and t.spec.version ~= 1 then f.workflow_version = t.spec.version end
    if t.committed then
      f.commands, f.status, f.done = t.commands, t.status, t.done or nil
      f.patches = t.patches
      need_now = need_now or (t.directives ~= nil and timers.need_now(t.directives))
        or (t.done and self.parked_of[t.spec.name][t.flow] ~= nil)  -- dead letters' time
    elseif t.parked_error then
      f.parked = t.parked_error
    elseif t.held then
      f.held = true
    end
    if t.committed or t.parked_error or t.held or t.resumed then flows[#flows + 1] = f end
  end
  if #flows == 0 and not extra.fired and not extra.late and not extra.dead_letter then return nil end
  need_now = need_now or extra.late ~= nil  -- the late part's dead letter has a time
  local now = extra.now
  if need_now and now == nil then now = read_clock(self) end
  if need_now then check_due(targets, now, event) end
  return { seq = self.seq + 1, event = event, flows = flows, fired = extra.fired,
           now = need_now and now or nil, late = extra.late, dead_letter = extra.dead_letter }
end

-- Encode the record. Commands that are not data are the handler's fault:
-- that flow is parked (when the router parks) or everything is undone.
local function encode_record(self, targets, event, extra)
  local record = event_record(self, targets, event, extra)
  if record == nil then return nil end
  local ok, bytes = pcall(encode, record)
  if ok then return record, bytes end
  if message(bytes):find(NO_MEMORY, 1, true) then
    undo(targets, #targets)
    error(bytes, 0)
  end
  for _, t in ipairs(targets) do
    local fine, why = true, nil
    if t.committed then fine, why = pcall(encode, t.commands) end
    if not fine then
      if self.on_error ~= "park" and not t.resumed then
        undo(targets, #targets)
        fail("a handler returned commands that are not data: %s", why)
      end
      undo({ t }, 1)
      t.parked_error = string.format("%s: handler for '%s' returned commands that are not data: %s",
                                     label(t.spec.name, t.flow), rawget(event, "event_type"), why)
    end
  end
  record = event_record(self, targets, event, extra)
  ok, bytes = pcall(encode, record)
  if not ok then
    undo(targets, #targets)
    fail("event '%s' is not data: %s", rawget(event, "event_type"), bytes)
  end
  return record, bytes
end

-- Report the journal's fdatasyncs since the last report (hooks).
local function report_fsync(self, h)
  local syncs, _, last = self.journal:syncs()
  if syncs ~= self.syncs_reported then
    self.syncs_reported = syncs
    call_hook(self, h, "journal_fsync", last)
  end
end

-- Append a record; on failure undo the targets and return nil, message.
local function append(self, kind, bytes, targets)
  if self.journal then
    local at, err = self.journal:append(kind, bytes)
    if not at then
      if targets then undo(targets, #targets) end
      return nil, "procman.router: " .. err
    end
    local h = self.hooks
    if h then
      call_hook(self, h, "journal_append", kind, #bytes + 9)  -- 9: the record's framing
      report_fsync(self, h)
    end
  end
  return true
end

-- Once a record is in the journal, the router's memory must follow it. If
-- that fails (out of memory), the router stops rather than go on differing
-- from its journal; reopening it recovers the journaled state.
local function after_journaling(self, ok, err)
  if ok then return end
  if self.journal then self.journal:close() end
  self.closed = true
  error(string.format("procman.router: %s after journaling (sequence %d); this router is closed: "
                      .. "open the journal again to go on", message(err), self.seq), 0)
end

-- Apply an event to its targets, journal it, settle. Atomic: on any
-- failure that is not parked, nothing changes.
-- settle(), returning the envelopes in a new table (allocated inside the
-- protected call: after the journal took the record, nothing may raise
-- unprotected).
local function settle_into_new(self, targets, record)
  local out = {}
  settle(self, targets, record, out)
  return out
end

local function prepare(self, event, targets, extra)
  apply(self, targets, event)
  return encode_record(self, targets, event, extra or {})
end

-- What one delivered event did, for the hooks.
local function report_event(self, h, event, targets, envelopes, started)
  local seconds, event_type = monotonic() - started, rawget(event, "event_type")
  for _, t in ipairs(targets) do
    local name, flow_id = t.spec.name, t.flow
    if t.committed then
      if t.new then call_hook(self, h, "flow_started", name, flow_id) end
      call_hook(self, h, "event_handled", name, flow_id, event_type, seconds)
      if t.done then call_hook(self, h, "flow_completed", name, flow_id, t.status) end
    elseif t.parked_error then
      call_hook(self, h, "flow_parked", name, flow_id, t.parked_error)
    end
    if t.resumed and not t.parked_error and self.parked_of[name][flow_id] == nil then
      call_hook(self, h, "flow_resumed", name, flow_id)
    end
  end
  for _, envelope in ipairs(envelopes) do call_hook(self, h, "command_emitted", envelope) end
end

local function deliver(self, event, targets, extra)
  local h = self.hooks
  local started = h and monotonic()
  local prepared, record, bytes = pcall(prepare, self, event, targets, extra)
  if not prepared then  -- any error before the journal, out of memory included
    undo(targets, #targets)
    error(record, 0)
  end
  if record == nil then return {} end
  local ok, err = append(self, RECORD_EVENT, bytes, targets)
  if not ok then return nil, err end
  self.seq = record.seq
  local settled, out = pcall(settle_into_new, self, targets, record)
  after_journaling(self, settled, out)
  if h then report_event(self, h, event, targets, out, started) end
  return out
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

-- The code a flow live at the end of the journal runs: its version's.
local function replay_spec(self, name, flow_id)
  return self.versions[name][fold.workflow_version(self, name, flow_id)]
end

-- Replay one flow's part of an event record: the flow handles the event
-- again, with the code of the version it started on; its commands are
-- compared with the journaled ones (the fold took the journaled ones).
local function replay_entry(self, pms, f, rec, offset)
  local name, flow_id = f.workflow, f.flow
  local by_id = pms[name]
  local pm = by_id[flow_id]
  if f.commands then
    pm = pm or core.new(replay_spec(self, name, flow_id), flow_id)
    by_id[flow_id] = pm
    -- the decoded event is the handler's copy when it goes to this flow only
    local fresh = #rec.flows == 1 and core.handle_fresh or nil
    local ok, now = patches.replay(pm, rec.event, f.patches, fresh)
    if not ok then
      error(string.format("procman.router: replay failed at %s: %s", where(self, f, rec, offset),
                          message(now)), 0)
    end
    if differ(now, f.commands) then diverged(self, where(self, f, rec, offset), f.commands, now) end
    if f.patches then patches.rebase(pm, f.patches) end
  elseif f.parked and pm == nil then
    local ok, made = pcall(core.new, replay_spec(self, name, flow_id), flow_id)
    by_id[flow_id] = ok and made or nil
  end
end

-- A live flow from a compaction snapshot, on the code of its version.
local function restore_flow(self, pms, rec)
  local pm = core.restore(replay_spec(self, rec.workflow, rec.flow), rec.flow, rec.state, rec.version,
                          rec.seen)
  patches.take(pm, rec.patches)
  pms[rec.workflow][rec.flow] = pm
end

-- The records the flows live at the end replay from: a set of offsets, or
-- nil when there are none.
local function replay_offsets(self)
  local wanted, any = {}, false
  for _, spec in ipairs(self.specs) do
    for _, g in pairs(self.live[spec.name]) do
      for _, at in ipairs(g.offsets) do wanted[at], any = true, true end
    end
  end
  return any and wanted or nil
end

-- Each flow live at the end (counted so far) becomes its procman.pm, on
-- the code of its version; parked flows are pinned to theirs too.
local function take_flows(self, pms)
  for _, spec in ipairs(self.specs) do
    local name = spec.name
    local live, made, older = self.live[name], pms[name], self.older[name]
    for flow_id in pairs(live) do
      local version = replay_spec(self, name, flow_id)
      if version ~= spec then older[flow_id] = version end
      live[flow_id] = made[flow_id]  -- nil: a parked flow whose code could not start it
    end
    for flow_id in pairs(self.parked_of[name]) do
      local version = replay_spec(self, name, flow_id)
      if version ~= spec then older[flow_id] = version end
    end
  end
end

-- The second pass: the flows live at the end run their handlers on their
-- records (only those are decoded again), in journal order.
local function replay_live(self, j)
  local pms = {}
  for _, spec in ipairs(self.specs) do pms[spec.name] = {} end
  local wanted = replay_offsets(self)
  if wanted then
    for offset, kind, payload in j:records() do
      if wanted[offset] then
        local rec = decode(payload)
        if kind == RECORD_FLOW then
          restore_flow(self, pms, rec)
        else
          for _, f in ipairs(rec.flows) do
            if fold.is_counted(self.live[f.workflow][f.flow]) then replay_entry(self, pms, f, rec, offset) end
          end
        end
      end
    end
  end
  take_flows(self, pms)
end

-- Refuse a journal whose live flows need code this router lacks, or that
-- names a workflow it was not given, before any handler runs.
local function check_code(self)
  local missing = replay_plan.missing(replay_plan.live_versions(self), self.versions)
  if missing then error(string.format("procman.router: %s: %s", self.journal_path, missing), 0) end
  if self.unknown then
    local name, offset = next(self.unknown)
    error(string.format("procman.router: the journal has flows of workflow %q, which this router "
                        .. "was not given (byte %d of %s)", name, offset, self.journal_path), 0)
  end
end

-- Recovery reads the journal once into the state with procman.fold (the
-- common records in C from their bytes, procman.fold_scan, the rest in Lua),
-- counting flows (their journaled commands, statuses and completions are
-- the ones that count: no handler runs, no event is encoded again), then
-- replays only the records of the flows still live at the end through
-- their handlers, which rebuilds their state and checks their commands.
local function recover(self, j)
  self.offsets = true  -- counted flows note the records they replay from
  self.outbox:defer()  -- envelopes acked further on are never encoded
  local scanned, rest = fold_scan.run(self, j)  -- the common records, in C
  self.recovered = scanned
  if rest ~= false then
    for offset, kind, payload in j:records(rest) do
      if not fold.knows(kind) then
        error(string.format("procman.router: %s: unknown record type %d at byte %d",
                            self.journal_path, kind, offset), 0)
      end
      fold.record(self, kind, decode(payload), offset, payload)
      self.recovered = self.recovered + 1
    end
  end
  self.offsets = nil
  self.outbox:undefer()
  check_code(self)
  replay_live(self, j)
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
  if info.damaged_at then  -- repair = true: a damaged range is skipped, never silently
    self.warn(string.format("procman.router: %s: skipped damaged records from byte %d (repair)",
                            opts.journal, info.damaged_at))
  end
  local ok, err = pcall(recover, self, j)
  if not ok then
    j:close()
    err = message(err)
    error(err:find("^procman%.router: ") and err or "procman.router: " .. err, 0)
  end
  return true
end

-- ---------------------------------------------------------------------
-- The public methods
-- ---------------------------------------------------------------------

local function check_event(event)
  if type(event) ~= "table" then fail("event must be a table, got %s", type(event)) end
  local event_type = rawget(event, "event_type")
  if type(event_type) ~= "string" or event_type == "" then
    fail("event.event_type must be a non-empty string, got %s", type(event_type))
  end
  return event_type
end

-- Keep an event as a dead letter (journaled): {}, or nil, message when
-- the journal cannot take it.
local function keep_dead_letter(self, event, err)
  local ok, bytes = pcall(encode, { id = self.dead.next_id, event = event, error = message(err),
                                    time = read_clock(self) })
  if not ok then fail("event '%s' is not data: %s", rawget(event, "event_type"), bytes) end
  local appended, why = append(self, RECORD_DEAD, bytes)
  if not appended then return nil, why end
  local letter
  after_journaling(self, pcall(function() letter = self.dead:add(decode(bytes)) end))
  if self.hooks then call_hook(self, self.hooks, "dead_letter", letter) end
  return {}
end

-- An event the router cannot route: raise, or keep it as a dead letter.
local function unroutable(self, event, err)
  if self.on_unroutable ~= "dead_letter" then error(err, 0) end
  return keep_dead_letter(self, event, err)
end

-- What a policy (on_unknown, on_late) does with an event that reached no
-- live flow: raise (nothing changes), keep it as a dead letter, or drop it.
local function by_policy(self, policy, event, why, kind)
  if policy == "raise" then error("procman.router: " .. why, 0) end
  if policy == "dead_letter" then return keep_dead_letter(self, event, "procman.router: " .. why) end
  if self.hooks then call_hook(self, self.hooks, "event_ignored", kind, rawget(event, "event_type"), why) end
  return {}
end

-- The event reached no flow: unknown (no workflow handles its type, or
-- the flows it names run a version that does not), late (its flows are
-- complete), or a redelivery.
local function reached_none(self, event, event_type, missed)
  if missed and #missed.late > 0 then
    return by_policy(self, self.on_late, event, missed.late[1], "late")
  end
  if missed and missed.version then
    return by_policy(self, self.on_unknown, event, missed.version, "unknown")
  end
  if not self.known_types[event_type] then
    return by_policy(self, self.on_unknown, event,
                     string.format("no workflow handles event type '%s'", event_type), "unknown")
  end
  return {}
end

--- r:handle(event) -> envelopes { id, workflow, flow, command }
-- Atomic: if any flow fails (and the router does not park), or the journal
-- cannot take the record, nothing changes. A failure of the journal
-- returns nil, message.
function Router:handle(event)
  local engine = not self.owns and self.engine  -- (the engine does not ask owns: the Lua path does)
  if engine then  -- the common step, in C (csrc/engine.c); false: not one it takes
    -- (nor one that fails the checks below: it makes them itself)
    local out, err, journaled = engine:step(event)
    if out then return out end
    if out == nil then
      if journaled then after_journaling(self, false, err) end
      return nil, err
    end
  end
  check_open(self)
  -- From a handler (of any router): its flow's undo replays it and the
  -- engine's Lua fallback reruns it, so the inner event would be handled
  -- again, and the outer event's failure would not take it back.
  check_not_in_handler("handle")
  local event_type = check_event(event)
  local ok, targets, missed = pcall(targets_of, self, event, event_type)
  if not ok then return unroutable(self, event, targets) end
  if #targets == 0 then return reached_none(self, event, event_type, missed) end
  if missed and #missed.late > 0 and self.on_late == "dead_letter" then  -- live flows take it
    return deliver(self, event, targets, { late = "procman.router: " .. table.concat(missed.late, "; ") })
  end
  local out, err = deliver(self, event, targets)
  if missed and #missed.late > 0 and out and self.hooks then  -- the late part, ignored
    call_hook(self, self.hooks, "event_ignored", "late", event_type, table.concat(missed.late, "; "))
  end
  return out, err
end

--- r:handles(event_type) -> true when some workflow (in some version)
-- has a handler for that event type.
function Router:handles(event_type)
  check_open(self)
  return self.known_types[event_type] == true
end

--- r:flow_version(workflow, flow) -> the workflow version a live (or
-- parked) flow runs, or nil when there is no such flow.
function Router:flow_version(name, flow_id)
  check_open(self)
  if self.by_name[name] == nil then fail("no workflow named %s", tostring(name)) end
  if self.live[name][flow_id] == nil and self.parked_of[name][flow_id] == nil then return nil end
  return flow_spec(self, name, flow_id).version
end

local function check_flow_args(self, name, flow_id)
  if self.by_name[name] == nil then fail("no workflow named %s", tostring(name)) end
  if flow_id == nil then fail("needs a flow id") end
end

-- Fire the timers taken from the schedule, each on its own (see tick).
local function fire(self, due, now)
  local out = {}
  for _, d in ipairs(due) do
    local name, flow_id, t = d.name, d.flow, d.timer
    if self.schedule:find(name, flow_id, t.seq, t.index) then  -- not cancelled meanwhile
      local targets = { { spec = flow_spec(self, name, flow_id), flow = flow_id,
                          pm = self.live[name][flow_id], held = self.parked_of[name][flow_id] ~= nil } }
      local envelopes, err = deliver(self, t.event, targets,
                                     { now = now, fired = { workflow = name, flow = flow_id,
                                                            seq = t.seq, index = t.index } })
      if not envelopes then return nil, err end
      if self.hooks then
        call_hook(self, self.hooks, "timer_fired", name, flow_id, rawget(t.event, "event_type"), now - t.due)
      end
      table.move(envelopes, 1, #envelopes, #out + 1, out)
    end
  end
  return out
end

--- r:tick([now[, max]]) -> envelopes: inject the event of every timer due
-- at 'now' (default: the clock), in due order; with 'max', of at most that
-- many (the rest stay due, for the next tick). Each is handled and
-- journaled like an arriving event, and atomic on its own: when one
-- raises, or a crash stops the tick, the ones before it stay handled and
-- the rest fire at the next tick. Timers set while ticking fire at a later
-- tick, so a handler that always asks for "now" cannot loop.
function Router:tick(now, max)
  check_open(self)
  check_not_in_handler("tick")
  if now == nil then now = read_clock(self) end
  if type(now) ~= "number" or now ~= now then fail("tick needs a time (a number), got %s", tostring(now)) end
  if max ~= nil and not (math.type(max) == "integer" and max >= 0) then
    fail("tick's max must be an integer >= 0, got %s", tostring(max))
  end
  local due = self.schedule:take_due(now, max)
  local ok, out, err = pcall(fire, self, due, now)
  self.schedule:put_back(due)  -- those that did not fire
  if not ok then error(out, 0) end
  return out, err
end

--- r:timers([workflow[, flow]]) -> the pending timers, by due time:
-- { workflow, flow, key, due, event } (copies).
function Router:timers(name, flow_id)
  check_open(self)
  if name ~= nil and self.by_name[name] == nil then fail("no workflow named %s", tostring(name)) end
  return self.schedule:list(name, flow_id)
end

--- r:next_due() -> the due time of the earliest pending timer, or nil:
-- how long an event loop may sleep before it must tick.
function Router:next_due()
  check_open(self)
  return self.schedule:next_due()
end

--- r:parked() -> the parked flows: { workflow, flow, error, event (the
-- first parked one, which failed), held (how many events wait) }.
function Router:parked()
  check_open(self)
  local list = {}
  for _, spec in ipairs(self.specs) do
    for flow_id, p in pairs(self.parked_of[spec.name]) do
      list[#list + 1] = copy(records.parked_entry(spec.name, flow_id, p.error, p.events))
    end
  end
  table.sort(list, records.by_flow)
  return list
end

local function check_parked(self, name, flow_id)
  check_flow_args(self, name, flow_id)
  if self.parked_of[name][flow_id] == nil then fail("flow %s is not parked", label(name, flow_id)) end
end

-- Retry the parked events of a flow in order, until none is left or one
-- fails again.
local function retry(self, name, flow_id)
  local spec, out = flow_spec(self, name, flow_id), {}
  while self.parked_of[name][flow_id] do
    local t = { spec = spec, flow = flow_id, pm = self.live[name][flow_id], resumed = true }
    local envelopes, err = deliver(self, self.parked_of[name][flow_id].events[1], { t })
    if not envelopes then return nil, err end
    table.move(envelopes, 1, #envelopes, #out + 1, out)
    if t.parked_error then return out, t.parked_error end
  end
  return out
end

--- r:resume(workflow, flow) -> envelopes[, error]: retry the flow's parked
-- events in order (after a fix of the workflow code). When one fails
-- again the flow stays parked with that error, returned second.
function Router:resume(name, flow_id)
  check_open(self)
  check_not_in_handler("resume")
  check_parked(self, name, flow_id)
  return retry(self, name, flow_id)
end

--- r:skip(workflow, flow) -> envelopes[, error]: drop the first parked
-- event (journaled as skipped), then resume the rest.
function Router:skip(name, flow_id)
  check_open(self)
  check_not_in_handler("skip")
  check_parked(self, name, flow_id)
  local ok, err = append(self, RECORD_SKIP, encode({ workflow = name, flow = flow_id }))
  if not ok then return nil, err end
  after_journaling(self, pcall(unpark_front, self, name, flow_id))
  return retry(self, name, flow_id)
end

--- r:dead_letters() -> the events the router set aside (with
-- on_unroutable = "dead_letter", and events left parked by a flow that
-- completed): { id, event, error, time } (copies), oldest first. 'id' is
-- stable (across restarts and compaction); 'time' is the router's clock
-- when the letter was made.
function Router:dead_letters()
  check_open(self)
  local list = {}  -- each letter copied alone: the list's own level must not count
  for i, letter in ipairs(self.dead.list) do list[i] = copy(letter) end  -- toward the codec's depth
  return list
end

local function check_letter(self, id)
  local letter = math.type(id) == "integer" and self.dead:find(id)
  if not letter then fail("no dead letter with id %s", tostring(id)) end
  return letter
end

--- r:retry_dead_letter(id) -> envelopes, or nil, message (journal): hand
-- the letter's event to the router again (after a fix: a workflow added, a
-- flow started). The letter goes in the same journal record as the event.
-- If the event still cannot be routed, or a handler fails (unless the
-- router parks), this raises and the letter stays.
function Router:retry_dead_letter(id)
  check_open(self)
  check_not_in_handler("retry_dead_letter")
  local event = check_letter(self, id).event
  local event_type = rawget(event, "event_type")
  local ok, targets, missed = pcall(targets_of, self, event, event_type)
  if ok and #targets == 0 then
    ok, targets = false, missed and (missed.late[1] or missed.version)
                         or string.format("no flow takes event type '%s' now", event_type)
  end
  if not ok then
    fail("dead letter %d still cannot be delivered: %s", id,
         (message(targets):gsub("^procman%.router: ", "")))
  end
  local late = missed and #missed.late > 0 and self.on_late == "dead_letter"
               and "procman.router: " .. table.concat(missed.late, "; ") or nil
  return deliver(self, event, targets, { dead_letter = id, late = late })
end

--- r:drop_dead_letter(id) -> true, or nil, message (journal): forget a
-- dead letter (journaled).
function Router:drop_dead_letter(id)
  check_open(self)
  check_not_in_handler("drop_dead_letter")
  check_letter(self, id)
  local ok, err = append(self, RECORD_DROP, encode({ id = id }))
  if not ok then return nil, err end
  after_journaling(self, pcall(self.dead.remove, self.dead, id))
  return true
end

-- A command leaves the router only once the record that made it is in
-- the journal file, so that no crash of the process can forget a command
-- that was sent (docs/durable.md): write the journal's buffer. true, or
-- nil, message.
local function before_leaving(self)
  if not self.journal then return true end
  local written, err = self.journal:write()
  if not written then return nil, "procman.router: " .. err end
  return true
end

--- r:pending() -> the envelopes not yet acked, in emission order (copies),
-- or nil, message if the journal cannot write what it holds in its buffer.
function Router:pending()
  check_open(self)
  local ready, err = before_leaving(self)
  if not ready then return nil, err end
  return self.outbox:list()
end

-- The journal record of an ack (the engine writes the codec's bytes for
-- it directly). A router in memory journals nothing: no bytes.
local function ack_record(self, id)
  if not self.journal then return nil end
  local engine = self.engine
  if engine then return engine:ack_record(id) end
  return encode({ id = id })
end

-- Ack a pending command (journaled): true, or nil, message. (Once per
-- command dispatched: a router in memory goes straight to the outbox.)
local function ack(self, id)
  if self.journal then
    local ok, err = append(self, RECORD_ACK, ack_record(self, id))
    if not ok then return nil, err end
  end
  local ok, err = pcall(forget, self.outbox, id)
  if not ok then after_journaling(self, ok, err) end
  return true
end

--- r:ack(id) -> true, or nil, message if the journal cannot take it.
function Router:ack(id)
  check_open(self)
  check_not_in_handler("ack")
  -- an open router without hooks: the outbox journals the record and
  -- forgets the command itself (false: not its case, the way below)
  local acked, err = self.outbox:ack(id, self)
  if acked ~= false then return acked, err end
  if type(id) ~= "string" or not self.outbox:has(id) then
    fail("no pending command with id %s", tostring(id))
  end
  return ack(self, id)
end

--- r:dispatch(fn) -> count[, error]: fn(command, envelope) for each
-- envelope pending when called, in order, acking each that returns; stops
-- at the first error. Each envelope is decoded when its turn comes (not
-- all of them first), and one that fn acked or the router lost meanwhile
-- is passed over: fn sees each command once, while it is still pending.
function Router:dispatch(fn)
  check_open(self)
  check_not_in_handler("dispatch")
  if type(fn) ~= "function" then fail("dispatch needs a function(command, envelope)") end
  local ready, refused = before_leaving(self)
  if not ready then return 0, refused end
  -- the outbox acks each command itself while the router is open and has
  -- no hooks (the record as ack() writes it); else through this function
  return self.outbox:dispatch(fn, function(id, pending)
    if self.closed then check_open(self) end  -- fn closed it
    if pending then return ack(self, id) end  -- (fn may have acked it itself)
    return true
  end, self)
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
  return final and fold.final_status(final)
end

--- r:stats() -> counts.
function Router:stats()
  check_open(self)
  local live = 0
  for _, spec in ipairs(self.specs) do
    for _ in pairs(self.live[spec.name]) do live = live + 1 end
  end
  return { live = live, completed = self.finished_count, pending = self.outbox:size(),
           parked = self.parked_count, timers = self.schedule:size(), dead_letters = self.dead:count(),
           journal_bytes = self.journal and self.journal:size() or 0,
           recovered = self.recovered, dropped = self.dropped, seq = self.seq }
end

--- r:compact() -> true, or nil, message: rewrite the journal as snapshots
-- of the live flows, the completed set and the pending outbox, so that
-- recovery time depends on live state, not on all of history. Written to a
-- temporary file in the same directory, synced, renamed over the journal.
-- A failure before the rename leaves everything as it was; one after it
-- closes the router (reopening the journal gives the same state).
function Router:compact()
  check_open(self)
  check_not_in_handler("compact")
  if not self.journal then fail("compact needs a journal") end
  return compaction.compact(self)
end

--- r:flush() -> true, or nil, message: make every record durable.
function Router:flush()
  check_open(self)
  if self.journal then
    local ok, err = self.journal:sync()
    if not ok then return nil, "procman.router: " .. err end
    if self.hooks then report_fsync(self, self.hooks) end
  end
  return true
end

--- r:hook(name, fn) -> the hook set before: set (or, with nil, unset) one
-- of the hooks listed in procman.hooks.
function Router:hook(name, fn)
  check_open(self)
  hooks.check(name, fn, "procman.router")
  local before = self.user_hooks[name]
  self.user_hooks[name] = fn
  self.hooks = hooks.compose(self.collector and self.collector.hooks, self.user_hooks)
  return before
end

-- The router's state, for metrics.gauges.
local function gauge_state(self)
  local state = { workflows = {}, live = {}, parked = {}, parked_events = {}, completed = {},
                  pending = self.outbox:size(), timers = self.schedule:size(),
                  next_due = self.schedule:next_due(), dead_letters = self.dead:count(),
                  oldest_dead_letter = metrics.oldest_time(self.dead.list),
                  journal_bytes = self.journal and self.journal:size() or nil, seq = self.seq }
  for _, spec in ipairs(self.specs) do
    local name, live, parked, held, done = spec.name, 0, 0, 0, self.finished_of[spec.name]
    for _ in pairs(self.live[name]) do live = live + 1 end
    for _, p in pairs(self.parked_of[name]) do parked, held = parked + 1, held + #p.events end
    state.workflows[#state.workflows + 1] = name
    state.live[name], state.parked[name], state.parked_events[name], state.completed[name] =
      live, parked, held, done
  end
  table.sort(state.workflows)
  return state
end

--- r:metrics() -> Prometheus text exposition: gauges of the state, and
-- (with metrics = true) counters and histograms of activity since the
-- router opened. See docs/operations.md.
function Router:metrics()
  check_open(self)
  local families = metrics.gauges(gauge_state(self))
  if self.collector then
    local more = self.collector:families(gauge_state(self).workflows)
    table.move(more, 1, #more, #families + 1, families)
  end
  return metrics.render(families)
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
return function(given)
  local opts = check_options(given)
  local specs, by_name, versions = check_workflows(opts.workflows)
  local self = setmetatable({
    specs = specs, by_name = by_name, versions = versions, older = {}, types_of = {}, known_types = {},
    live = {}, finished = {}, finished_count = 0, finished_of = {},
    outbox = outbox.new(),
    parked_of = {}, parked_count = 0, dead = dead_letters.new(),
    seq = 0, recovered = 0, dropped = 0, closed = false,
    clock = opts.clock or os.time,
    on_error = opts.on_error or "raise",
    on_unroutable = opts.on_unroutable or "raise",
    on_unknown = opts.on_unknown or "ignore",
    -- before on_late, on_unroutable = "dead_letter" kept late events too
    on_late = opts.on_late or (opts.on_unroutable == "dead_letter" and "dead_letter" or "raise"),
    on_divergence = opts.on_divergence == "raise" and "error" or opts.on_divergence or "error",
    warn = opts.warn or function(msg) warn(msg) end,
    journal_path = opts.journal, sync = opts.sync, user_hooks = opts.hooks or {},
    owns = false,  -- a PostgreSQL worker sets it; a field, so r:handle reads it without __index
  }, meta)
  local names = {}
  for i, spec in ipairs(specs) do
    local name = spec.name
    self.live[name], self.finished[name], self.parked_of[name] = {}, {}, {}
    self.finished_of[name] = 0
    self.older[name], self.types_of[name] = {}, {}
    for _, version in pairs(versions[name]) do
      for event_type in pairs(version.on) do
        self.types_of[name][event_type], self.known_types[event_type] = true, true
      end
    end
    names[i] = name
  end
  self.schedule = schedule.new(names)
  if opts.journal then
    local ok, err = open_journal(self, opts)
    if not ok then
      self.closed = true
      return nil, err
    end
    self.syncs_reported = self.journal:syncs()
  end
  self.collector = opts.metrics and metrics.collector() or nil
  self.hooks = hooks.compose(self.collector and self.collector.hooks, self.user_hooks)  -- after recovery
  -- The events it covers take their step in C, on these same tables (the
  -- journal it reads from self, since compaction replaces it).
  self.engine = core.engine {
    router = self, specs = specs, live = self.live, finished = self.finished, parked_of = self.parked_of,
    finished_of = self.finished_of, older = self.older, types_of = self.types_of,
    timers = self.schedule.by_flow, outbox = self.outbox, patches = patches, undo = core.undo,
    complete = function(name, flow_id, pm) complete(self, name, flow_id, pm) end,
  }
  return self
end
