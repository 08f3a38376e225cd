--- procman.pg.unit: one unit of a worker's work (a batch of events, a
-- tick, a resume or a skip), taken by the router's own step.
--
-- A unit runs a procman.router without a journal file, whose state (the
-- one procman.fold defines: live, finished, parked_of, older, schedule,
-- outbox, dead) it fills on demand from what the worker loaded from the
-- store: each flow the first time the router asks about it. Two narrow
-- internal hooks make it a worker's router:
--   r.owns(name, flow_id)  is this flow the worker's for the event being
--                          handled (a partition it owns, after that
--                          partition's checkpoint)? Only then does the
--                          router route to it; asking fills the flow in.
--   r.journal              the PostgreSQL log port: it takes the records
--                          the step produces (append(kind, bytes)); their
--                          flows are what changed, their entries the
--                          transitions procman diagram counts.
-- Routing, dedup, parking, resume and skip, dead letters, timers, command
-- ids, statuses, policies and hooks are therefore the router's by
-- construction. What is the worker's own: the router raises where it has
-- a caller (on_error = "raise", a refused timer directive...); a worker
-- has none, so such an event becomes one dead letter with the router's
-- message (as a caller that keeps what it cannot handle would do), and a
-- timer whose event raises goes with it.
--
-- Once the step is done, unit:writes() reads the router's state for the
-- flows the records named and gives procman.pg.store what to write: the
-- flows, their timers and parked events, outbox rows, dead letters and
-- transitions.
local procman = require "procman"
local hooks = require "procman.hooks"
local fold = require "procman.fold"
local records = require "procman.records"
local message = require "procman.message"
local routes = require "procman.pg.routes"

local encode, decode = procman.encode, procman.decode

local M = {}
local Unit = {}
Unit.__index = Unit

--- Record sequence numbers (a timer's identity and order, as in the
-- router): an event's record gets its position * SEQ_SPAN; a tick's or a
-- resume's records get v * SEQ_SPAN + 1, + 2, ... where v is a number of
-- the store's position sequence that no event has. So they are unique
-- across workers and runs, and order as the router orders: by the time
-- the worker took them.
M.SEQ_SPAN = 1 << 20

local NO_MEMORY = "not enough memory"  -- never a reason to dead-letter
local NO_JOURNAL = { journal_append = true, journal_fsync = true }

local function key_of(name, flow_id)
  return name .. "\0" .. encode(flow_id)
end
M.key_of = key_of

-- The router's hooks, queued (w.hooks runs them once the unit committed).
local function collector(calls)
  local h = {}
  for _, name in ipairs(hooks.NAMES) do
    if not NO_JOURNAL[name] then
      h[name] = function(...) calls[#calls + 1] = table.pack(name, ...) end
    end
  end
  return h
end

-- The log port: what a journal file would take, kept for the writes.
local function log_port(unit)
  return {
    append = function(_, kind, bytes) unit:logged(kind, bytes) return 0 end,
    syncs = function() return 0 end,
    write = function() return true end,
    sync = function() return true end,
    size = function() return 0 end,
    close = function() return true end,
  }
end

--- new(w, lookup) -> a unit for worker w (its options, workflows and
-- partitions); lookup(k) -> the loaded entry of the flow with key k (see
-- procman.pg.store.load), or nil when the store has none.
function M.new(w, lookup)
  local unit = setmetatable({ w = w, lookup = lookup, filled = {}, changed = {}, changed_list = {}, pms = {},
                              status = {}, outbox = {}, dead = {}, transitions = {}, handled = 0, parked = 0,
                              resumed = 0, calls = w.hooks and {} or nil, dead_seen = 0 }, Unit)
  local r = procman.router {
    workflows = w.workflow_list, on_error = w.on_error == "park" and "park" or "raise",
    on_unroutable = "dead_letter", on_unknown = w.on_unknown, on_late = w.on_late, clock = w.clock,
    hooks = unit.calls and collector(unit.calls), warn = function(text) w:report(text) end,
  }
  r.journal = log_port(unit)
  r.owns = function(name, flow_id) return unit:owns(name, flow_id) end
  for _, spec in ipairs(r.specs) do  -- the flows the router starts, completed or not
    local name, pms = spec.name, {}
    unit.pms[name] = pms
    setmetatable(r.live[name], { __newindex = function(t, id, pm)
      rawset(t, id, pm)
      pms[id] = pm
    end })
  end
  unit.r = r
  return unit
end

-- ---------------------------------------------------------------------
-- Filling the router from the store's flows
-- ---------------------------------------------------------------------

-- Put a loaded flow (entry) into the router's state, as procman.fold's
-- records would have left it.
local function fill(r, entry)
  local name, id = entry.spec.name, entry.flow
  if entry.done then
    r.finished[name][id] = fold.final(entry.status)  -- no ids: the store appends each event once
    r.finished_count = r.finished_count + 1
    r.finished_of[name] = r.finished_of[name] + 1
    return
  end
  if entry.pm then rawset(r.live[name], id, entry.pm) end
  if entry.spec.version ~= r.by_name[name].version then
    r.older[name][id] = r.versions[name][entry.spec.version]
  end
  if entry.parked then
    r.parked_of[name][id] = { events = table.move(entry.parked.events, 1, #entry.parked.events, 1, {}),
                              error = entry.parked.error, workflow_version = entry.spec.version }
    r.parked_count = r.parked_count + 1
  end
  for _, t in ipairs(entry.timers or {}) do
    r.schedule:restore(name, id, { key = t.key, due = t.due, event = t.event, seq = t.seq, index = t.index })
  end
end

--- unit:ensure(name, flow_id[, k]) -> the loaded entry or nil: fill the
-- flow in, the first time.
function Unit:ensure(name, flow_id, k)
  k = k or key_of(name, flow_id)
  local entry = self.filled[k]
  if entry == nil then
    entry = self.lookup(k, name, flow_id) or false
    self.filled[k] = entry
    if entry then fill(self.r, entry) end
  end
  return entry or nil
end

-- The router's owns hook: a flow of a partition the worker owns, whose
-- checkpoint is before the event being handled (self.at).
function Unit:owns(name, flow_id)
  local w, at = self.w, self.at
  if at == nil then return false end
  local cp = w.owned[routes.partition(name, flow_id, w.partitions)]
  if cp == nil or not (cp.xid < at.xid or (cp.xid == at.xid and cp.position < at.position)) then
    return false
  end
  self:ensure(name, flow_id)
  return true
end

-- ---------------------------------------------------------------------
-- What the step produced
-- ---------------------------------------------------------------------

function Unit:touch(name, flow_id)
  local k = key_of(name, flow_id)
  if not self.changed[k] then
    self.changed[k] = true
    self.changed_list[#self.changed_list + 1] = { name = name, flow = flow_id, k = k }
  end
  return k
end

-- The status a flow had before its next event: the store's, or START.
function Unit:status_before(k)
  local s = self.status[k]
  if s ~= nil then return s end
  local entry = self.filled[k]
  if entry and entry.db_version and entry.db_version > 0 then return tostring(entry.status) end
  return records.START
end

-- Count the edge (status before, event type, status after).
function Unit:transition(name, k, event_type, status)
  local after = tostring(status)
  local edge = encode { self:status_before(k), event_type, after }
  self.status[k] = after
  local tk = name .. "\0" .. edge
  local t = self.transitions[tk]
  if t == nil then
    t = { workflow = name, edge = edge, count = 0 }
    self.transitions[tk] = t
  end
  t.count = t.count + 1
end

--- unit:logged(kind, bytes): the log port took a record.
function Unit:logged(kind, bytes)
  if kind == records.SKIP then
    local rec = decode(bytes)
    self:touch(rec.workflow, rec.flow)
  elseif kind == records.EVENT then
    local rec = decode(bytes)
    if rec.fired then self:touch(rec.fired.workflow, rec.fired.flow) end
    local event_type = rawget(rec.event, "event_type")
    for _, f in ipairs(rec.flows) do
      local k = self:touch(f.workflow, f.flow)
      if f.commands then
        self.handled = self.handled + 1
        if f.resumed then self.resumed = self.resumed + 1 end
        self:transition(f.workflow, k, event_type, f.status)
      elseif f.parked then
        self.parked = self.parked + 1
      end
    end
  end
end

-- A dead letter, as pg.dead_letters lists it (its id comes at commit).
function Unit:dead_letter(position, name, flow_id, err, event)
  local letter = { position = position, workflow = name, flow = flow_id, error = message(err), event = event }
  self.dead[#self.dead + 1] = { letter = letter, position = position, workflow = name,
                                key = flow_id ~= nil and encode(flow_id) or nil, error = letter.error,
                                event = encode(event) }
  return letter
end

-- The router's new dead letters, at 'position': the store's rows, and
-- their hook calls pointed at them.
function Unit:take_letters(position)
  local list = self.r.dead.list
  for i = self.dead_seen + 1, #list do
    local made = list[i]
    local letter = self:dead_letter(position, nil, nil, made.error, made.event)
    if self.calls then
      for _, call in ipairs(self.calls) do
        if call[1] == "dead_letter" and call[2] == made then call[2] = letter end
      end
    end
  end
  self.dead_seen = #list
end

function Unit:emitted(envelopes, position)
  for _, e in ipairs(envelopes or {}) do
    self.outbox[#self.outbox + 1] = {
      id = e.id, workflow = e.workflow, key = encode(e.flow), position = position,
      envelope = encode { id = e.id, workflow = e.workflow, flow = e.flow, command = e.command } }
  end
end

-- A raise from the router: the event's fault (a dead letter), unless the
-- router can no longer be trusted (it closed, memory ran out): then the
-- unit fails and nothing of it is written.
local function fatal(self, err)
  local text = message(err)
  if self.r.closed or text:find(NO_MEMORY, 1, true) then error(err, 0) end
  return text
end

-- ---------------------------------------------------------------------
-- The steps
-- ---------------------------------------------------------------------

--- unit:handle(ev): the router handles the event read at ev (xid,
-- position, event); a raise becomes its dead letter.
function Unit:handle(ev)
  local r = self.r
  self.at = ev
  r.seq = ev.position * M.SEQ_SPAN - 1
  local ok, out, err = pcall(r.handle, r, ev.event)
  self.at = nil
  if not ok then  -- the flow, when the event could go to one only
    local why, one = fatal(self, out), #ev.mine == 1 and ev.mine[1] or nil
    local letter = self:dead_letter(ev.position, one and one.spec.name, one and one.flow, why, ev.event)
    if self.calls then self.calls[#self.calls + 1] = table.pack("dead_letter", letter) end
  elseif out == nil then
    error(err, 0)  -- (the log port takes every record)
  else
    self:emitted(out, ev.position)
  end
  self:take_letters(ev.position)
end

--- unit:sequence(v): records from here on are numbered v * SEQ_SPAN + 1, ...
function Unit:sequence(v)
  self.r.seq = v * M.SEQ_SPAN
end

-- The next due timer, or nil.
local function next_due(r, now)
  local due = r.schedule:take_due(now, 1)
  r.schedule:put_back(due)
  return due[1]
end

--- unit:tick(now, n): fire at most n due timers of the flows filled in, in
-- the router's order; one whose event raises goes, its event a dead letter.
function Unit:tick(now, n)
  local r = self.r
  for _ = 1, n do
    local d = next_due(r, now)
    if d == nil then break end
    local ok, out = pcall(r.tick, r, now, 1)
    if ok then
      self:emitted(out, nil)
    else
      local why = fatal(self, out)
      r.schedule:remove(d.name, d.flow, d.timer.seq, d.timer.index)
      self:touch(d.name, d.flow)
      local letter = self:dead_letter(nil, d.name, d.flow, why, d.timer.event)
      if self.calls then self.calls[#self.calls + 1] = table.pack("dead_letter", letter) end
    end
    self:take_letters(nil)
  end
end

--- unit:drop_timer(name, flow_id, seq, index, why): the store refused the
-- timer's firing: it goes, its event a dead letter with the reason.
function Unit:drop_timer(name, flow_id, seq, index, why)
  local r = self.r
  self:ensure(name, flow_id)
  local t = r.schedule:find(name, flow_id, seq, index)
  if t == nil then return end
  r.schedule:remove(name, flow_id, seq, index)
  self:touch(name, flow_id)
  local letter = self:dead_letter(nil, name, flow_id, why, t.event)
  if self.calls then self.calls[#self.calls + 1] = table.pack("dead_letter", letter) end
end

--- unit:resume(name, flow_id, skip) -> events applied[, error]: r:resume
-- or r:skip.
function Unit:resume(name, flow_id, skip)
  local r = self.r
  local ok, out, why = pcall(skip and r.skip or r.resume, r, name, flow_id)
  if not ok then error(out, 0) end
  if out == nil then error(why, 0) end
  self:emitted(out, nil)
  self:take_letters(nil)
  return self.resumed, why
end

-- ---------------------------------------------------------------------
-- The writes
-- ---------------------------------------------------------------------

-- A changed flow as procman.pg.store writes it.
local function store_entry(self, c, timers_of)
  local r, name, id = self.r, c.name, c.flow
  local loaded = self.filled[c.k] or nil
  local final = r.finished[name][id]
  local pm = r.live[name][id] or (loaded and loaded.pm) or self.pms[name][id]
  local spec = r.older[name][id] or r.by_name[name]
  local timers, parked = timers_of[c.k], r.parked_of[name][id]
  -- timers and parked events are rewritten when the flow has some, or had
  -- (nothing to delete otherwise: a statement less per table and batch)
  local e = { spec = spec, flow = id, key = encode(id), db_version = loaded and loaded.db_version,
              partition = loaded and loaded.partition or routes.partition(name, id, self.w.partitions),
              timers = timers, parked = parked,
              timers_changed = (timers ~= nil and #timers > 0) or (loaded and loaded.timers ~= nil
                                                                   and #loaded.timers > 0) or false,
              parked_changed = parked ~= nil or (loaded and loaded.parked ~= nil) or false }
  -- a row when the flow moved (not for one parked on its first event, nor
  -- one that only parked or held: its state may not even be rebuilt now)
  if pm and pm:version() > (e.db_version or 0) then
    e.pm, e.status = pm, pm:status()
  end
  if final then e.done, e.status = true, fold.final_status(final) end
  return e
end

--- unit:writes() -> what procman.pg.store.write takes: changed (flows),
-- outbox, dead, transitions (the checkpoint is the worker's).
function Unit:writes()
  local r, timers_of, names = self.r, {}, {}
  for _, c in ipairs(self.changed_list) do names[c.name] = true end
  for name in pairs(names) do
    for id, list in r.schedule:flows(name) do
      local k = key_of(name, id)
      if self.changed[k] then timers_of[k] = list end
    end
  end
  local changed = {}
  for i, c in ipairs(self.changed_list) do changed[i] = store_entry(self, c, timers_of) end
  return { changed = changed, outbox = self.outbox, dead = self.dead, transitions = self.transitions }
end

--- Unit.cached(changed) -> key -> the entry for the worker's cache of
-- each changed flow (after the commit), or false: the flows that are
-- live, not parked, and whose row was written are kept; the others are
-- read again from the store when needed (a completed flow, or a parked
-- one, whose flow may not even rebuild its state now).
function Unit.cached(changed)
  local out = {}
  for _, e in ipairs(changed) do
    local k = key_of(e.spec.name, e.flow)
    if e.pm and not e.done and not e.parked then
      local timers = {}
      for j, t in ipairs(e.timers or {}) do
        timers[j] = { key = t.key, due = t.due, event = t.event, seq = t.seq, index = t.index }
      end
      out[k] = { spec = e.spec, flow = e.flow, key = e.key, partition = e.partition, status = e.status,
                 pm = e.pm, db_version = e.pm:version(), timers = timers }
    else
      out[k] = false
    end
  end
  return out
end

return M
