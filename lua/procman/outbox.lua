--- procman.outbox: the router's commands waiting for a gateway, in emission
-- order, with stable ids, until acked.
--
-- Each pending envelope { id, workflow, flow, command } is kept encoded (one
-- string, not four tables): a pending command costs its bytes, an id and
-- two array slots, and nothing can change it after it was emitted. A queue
-- from 'head' to 'tail' (the envelopes' bytes, with their ids beside them);
-- acked envelopes are dropped from the front as soon as nothing before
-- them is pending. (Not '#queue': with the front cleared the length of the
-- table is not defined.) The index by id, 'by_id', is made when a lookup
-- by id first needs it (has, forget) and kept until the outbox empties: a
-- dispatch finds each command by its place, so most commands are never
-- indexed (csrc/outbox.c).
local core = require "procman.core"
local records = require "procman.records"

-- decode_envelope: core.decode, faster for an envelope's known keys
local encode, encode_copy, decode = core.encode, core.encode_copy, core.decode_envelope
local command_prefix = records.command_prefix

local Outbox = {}
Outbox.__index = Outbox

local M = {}

function M.new()
  return setmetatable({ queue = {}, ids = {}, head = 1, tail = 0, count = 0 }, Outbox)
end

local function push(self, id, bytes)
  local tail = self.tail + 1
  self.queue[tail], self.ids[tail] = bytes, id
  local by_id = self.by_id
  if by_id then by_id[id] = tail end
  self.tail = tail
  self.count = self.count + 1
end

--- outbox:add(envelope[, bytes]): keep an envelope { id, workflow, flow,
-- command } (a copy: its bytes; 'bytes' when they are at hand already, as
-- in a journal's outbox record).
function Outbox:add(envelope, bytes)
  push(self, envelope.id, bytes or encode(envelope))
end

--- outbox:emit(name, flow_id, version, commands[, out]): the envelopes of a
-- flow's commands after the event that took it to 'version'. The outbox
-- keeps them encoded: a handler that kept a command table cannot change a
-- pending command later, nor make a live outbox differ from a recovered
-- one. Copies of the envelopes are appended to 'out' (made by the same
-- pass of the codec that encodes them).
function Outbox:emit(name, flow_id, version, commands, out)
  -- raw access, as pm.c checked the list: a metatable on it means nothing
  if rawget(commands, 1) == nil then return end
  local prefix, deferred = command_prefix(name, flow_id, version), self.deferred
  for i = 1, rawlen(commands) do
    local command = rawget(commands, i)
    local id = prefix .. i
    local envelope = { id = id, workflow = name, flow = flow_id, command = command }
    if out then
      local bytes, copy = encode_copy(envelope)
      push(self, id, bytes)
      out[#out + 1] = copy
    elseif deferred then
      push(self, id, envelope)  -- encoded by undefer, unless acked before
    else
      push(self, id, encode(envelope))
    end
  end
end

--- outbox:defer(): until outbox:undefer(), envelopes emitted without 'out'
-- are kept as they are, not encoded (recovery: most were acked later in
-- the journal, and an acked envelope need never be encoded). Only emit,
-- has, forget and add may be used meanwhile.
function Outbox:defer()
  self.deferred = true
end

--- outbox:undefer(): encode the deferred envelopes still pending.
function Outbox:undefer()
  local q = self.queue
  for i = self.head, self.tail do
    if type(q[i]) == "table" then q[i] = encode(q[i]) end
  end
  self.deferred = nil
end

--- outbox:has(id) -> is a command with this id pending? (core.outbox_has,
-- csrc/outbox.c: it makes the index the first time)
Outbox.has = core.outbox_has

--- outbox:forget(id): the command was acked. Its slot is cleared and the
-- front moves past every cleared slot; an outbox left empty gets new
-- tables (a Lua table never shrinks by removals alone), so memory after a
-- dispatch is that of the flows, not of past commands (core.outbox_forget,
-- csrc/outbox.c).
Outbox.forget = core.outbox_forget

--- outbox:list() -> copies of the pending envelopes, in emission order.
function Outbox:list()
  local out, q = {}, self.queue
  for i = self.head, self.tail do
    if q[i] then out[#out + 1] = decode(q[i]) end
  end
  return out
end

--- outbox:dispatch(fn, after[, router]) -> count[, error]: for each envelope
-- pending when called, in order, fn(command, envelope) (a copy, decoded at
-- its turn), then its ack: the outbox's own while 'router' is open and has
-- no hooks (the ack record into router.journal, if any, then forget), else
-- after(id, pending) (pending: fn did not ack it meanwhile), which returns
-- true to go on, or nil, message to stop there. Stops at fn's first error.
-- The envelopes are found by their places, not through a list of ids: one
-- that fn acked is passed over, and one that fn emitted (it handled an
-- event) goes after the last and waits for the next call
-- (core.outbox_dispatch, csrc/outbox.c).
Outbox.dispatch = core.outbox_dispatch

--- outbox:encoded() -> the pending envelopes' bytes, in emission order
-- (for compaction, which journals them as they are).
function Outbox:encoded()
  local out, q = {}, self.queue
  for i = self.head, self.tail do
    if q[i] then out[#out + 1] = q[i] end
  end
  return out
end

return M
