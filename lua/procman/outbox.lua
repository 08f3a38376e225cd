--- procman.outbox: the router's commands waiting for a gateway, in emission
-- order, with stable ids, until acked.
--
-- An outbox is a userdata (csrc/outbox.c): one buffer of encoded envelopes
-- { id, workflow, flow, command } end to end and a slot per command, so a
-- pending command costs its bytes and a slot (no Lua object), and nothing
-- can change it after it was emitted. Its methods in C:
--   outbox:push(bytes, id)       keep an encoded envelope
--   outbox:has(id), outbox:forget(id)   (the index by id is made when a
--                                lookup first needs it: a dispatch finds
--                                each command by its place)
--   outbox:dispatch(fn, after[, router]) -> count[, error]
--   outbox:ack(id, router) -> true | nil, message | false   (r:ack's own
--                                work for an open router without hooks)
--   outbox:list()                copies of the pending envelopes, in order
--   outbox:encoded()             their bytes (compaction journals them)
--   outbox:size()                commands pending
--   outbox:defer(), outbox:undefer(), outbox:deferring(),
--   outbox:push_deferred(envelope)   (recovery: see defer below)
-- This module adds emit and add, and says what each does.
local core = require "procman.core"
local records = require "procman.records"

local encode, encode_copy = core.encode, core.encode_copy
local command_prefix = records.command_prefix

local Outbox = core.outbox_methods

local M = {}

--- outbox.new() -> an empty outbox.
M.new = core.outbox_new

--- outbox:add(envelope[, bytes]): keep an envelope { id, workflow, flow,
-- command } (a copy: its bytes; 'bytes' when they are at hand already, as
-- in a journal's outbox record).
function Outbox:add(envelope, bytes)
  self:push(bytes or encode(envelope), envelope.id)
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
  local prefix, deferred = command_prefix(name, flow_id, version), self:deferring()
  for i = 1, rawlen(commands) do
    local command = rawget(commands, i)
    local id = prefix .. i
    local envelope = { id = id, workflow = name, flow = flow_id, command = command }
    if out then
      local bytes, copy = encode_copy(envelope)
      self:push(bytes, id)
      out[#out + 1] = copy
    elseif deferred then
      self:push_deferred(envelope)  -- encoded by undefer, unless acked before
    else
      self:push(encode(envelope), id)
    end
  end
end

--- outbox:defer(): until outbox:undefer(), envelopes emitted without 'out'
-- are kept as they are, not encoded (recovery: most were acked later in
-- the journal, and an acked envelope need never be encoded). Only emit,
-- has, forget and add may be used meanwhile.
--- outbox:undefer(): encode the deferred envelopes still pending (in
-- order, beside the others: out of memory, the outbox is as it was).

--- outbox:forget(id): the command was acked (an unknown id raises and
-- changes nothing). An outbox left empty gives back its storage and its
-- index, so memory after a dispatch is that of the flows, not of past
-- commands.

--- outbox:dispatch(fn, after[, router]) -> count[, error]: for each envelope
-- pending when called, in order, fn(command, envelope) (a copy, decoded at
-- its turn), then its ack: the outbox's own while 'router' is open and has
-- no hooks (the ack record into router.journal, if any, then forget), else
-- after(id, pending) (pending: fn did not ack it meanwhile), which returns
-- true to go on, or nil, message to stop there. Stops at fn's first error.
-- The envelopes are found by their places, not through a list of ids: one
-- that fn acked is passed over, and one that fn emitted (it handled an
-- event) goes after the last and waits for the next call.

return M
