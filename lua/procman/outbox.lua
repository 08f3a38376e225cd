--- procman.outbox: the router's commands waiting for a gateway, in emission
-- order, with stable ids, until acked.
--
-- A queue from 'head' to 'tail' plus an index by id; acked envelopes are
-- dropped from the front as soon as nothing before them is pending. (Not
-- '#queue': with the front cleared the length of the table is not defined.)
local records = require "procman.records"
local copy = require("procman.core").copy

local Outbox = {}
Outbox.__index = Outbox

local M = {}

function M.new()
  return setmetatable({ queue = {}, head = 1, tail = 0, by_id = {}, count = 0 }, Outbox)
end

--- outbox:add(envelope): keep an envelope { id, workflow, flow, command }.
function Outbox:add(envelope)
  self.tail = self.tail + 1
  self.queue[self.tail] = envelope
  self.by_id[envelope.id] = envelope
  self.count = self.count + 1
end

--- outbox:emit(name, flow_id, version, commands[, out]): the envelopes of a
-- flow's commands after the event that took it to 'version'. The outbox
-- keeps its own copy of each command: a handler that kept the table cannot
-- change a pending command later, nor make a live outbox differ from a
-- recovered one. Copies of the envelopes are appended to 'out'.
function Outbox:emit(name, flow_id, version, commands, out)
  for i, command in ipairs(commands) do
    local envelope = { id = records.command_id(name, flow_id, version, i), workflow = name,
                       flow = flow_id, command = copy(command) }
    self:add(envelope)
    if out then out[#out + 1] = copy(envelope) end
  end
end

--- outbox:has(id) -> is a command with this id pending?
function Outbox:has(id)
  return self.by_id[id] ~= nil
end

--- outbox:forget(id): the command was acked.
function Outbox:forget(id)
  self.by_id[id] = nil
  self.count = self.count - 1
  local q, head = self.queue, self.head
  while head <= self.tail and self.by_id[q[head].id] == nil do
    q[head] = nil
    head = head + 1
  end
  if head > self.tail then self.queue, head, self.tail = {}, 1, 0 end
  self.head = head
end

--- outbox:list() -> copies of the pending envelopes, in emission order.
function Outbox:list()
  local out = {}
  for i = self.head, self.tail do
    local e = self.queue[i]
    if self.by_id[e.id] then out[#out + 1] = copy(e) end
  end
  return out
end

return M
