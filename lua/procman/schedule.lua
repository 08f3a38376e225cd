--- procman.schedule: a router's timers, by flow and by due time.
--
-- The timers of each flow are a list (procman.timers keeps one: set by
-- directives, replaced by key, removed when fired). The schedule holds
-- those lists by workflow and flow, and beside them a due index: a binary
-- min-heap of { due, seq, index, rank, name, flow }, so that r:tick finds
-- what is due without looking at every waiting flow (a tick with nothing
-- due costs O(1), not O(timers)).
--
-- The lists are the truth; the heap is only an index into them. Removing a
-- timer (cancelled, replaced by key, its flow completed) leaves its heap
-- entry behind, and an entry whose timer is gone is dropped when it comes
-- to the top. So that cancelled timers cannot pile up (a batch cancels a
-- timeout per file), the heap is rebuilt from the lists once it holds more
-- than twice as many entries as there are timers: amortized O(1) a push.
-- While a tick has timers out of the index, or should memory run out while
-- it is rebuilt, the index is marked unsure and rebuilt before it is used
-- again: a timer never falls out of it.
local timers = require "procman.timers"
local copy = require("procman.core").copy

local Schedule = {}
Schedule.__index = Schedule

local M = {}

-- Heap order: due time, then the order the timers were set in, then the
-- workflow's place in the router (one event may set timers in two flows).
local function before(a, b)
  if a.due ~= b.due then return a.due < b.due end
  if a.seq ~= b.seq then return a.seq < b.seq end
  if a.index ~= b.index then return a.index < b.index end
  return a.rank < b.rank
end

local function sift_up(heap, i)
  local entry = heap[i]
  while i > 1 do
    local parent = i // 2
    if not before(entry, heap[parent]) then break end
    heap[i] = heap[parent]
    i = parent
  end
  heap[i] = entry
end

local function sift_down(heap, i)
  local n, entry = #heap, heap[i]
  while true do
    local child = 2 * i
    if child > n then break end
    if child < n and before(heap[child + 1], heap[child]) then child = child + 1 end
    if not before(heap[child], entry) then break end
    heap[i] = heap[child]
    i = child
  end
  heap[i] = entry
end

local function pop(heap)
  local top, n = heap[1], #heap
  heap[1] = heap[n]
  heap[n] = nil
  if n > 2 then sift_down(heap, 1) end
  return top
end

--- schedule.new(names) -> an empty schedule for the workflows 'names'
-- (in the router's order).
function M.new(names)
  local self = setmetatable({ by_flow = {}, rank = {}, heap = {}, count = 0, unsure = false }, Schedule)
  for i, name in ipairs(names) do
    self.by_flow[name], self.rank[name] = {}, i
  end
  return self
end

--- schedule:add(name): a workflow of its own, ranked after the others
-- (the tools learn a journal's workflows as they read it).
function Schedule:add(name)
  if self.by_flow[name] ~= nil then return end
  local n = 0
  for _ in pairs(self.rank) do n = n + 1 end
  self.by_flow[name], self.rank[name] = {}, n + 1
end

local function push(self, name, flow_id, t)
  local heap = self.heap
  heap[#heap + 1] = { due = t.due, seq = t.seq, index = t.index, rank = self.rank[name],
                      name = name, flow = flow_id }
  sift_up(heap, #heap)
end

-- Index every timer of the lists afresh.
local function rebuild(self)
  self.unsure, self.heap = true, {}
  for name, flows in pairs(self.by_flow) do
    for flow_id, list in pairs(flows) do
      for _, t in ipairs(list) do push(self, name, flow_id, t) end
    end
  end
  self.unsure = false
end

-- Rebuild when stale entries outnumber timers.
local function tidy(self)
  if #self.heap > 2 * self.count + 1024 then rebuild(self) end
end

local function replace(self, name, flow_id, old_count, list)
  self.by_flow[name][flow_id] = list
  self.count = self.count - old_count + (list and #list or 0)
end

--- schedule:flows(name) -> pairs over { flow_id = list } of a workflow.
function Schedule:flows(name)
  return pairs(self.by_flow[name])
end

--- schedule:size() -> how many timers wait.
function Schedule:size()
  return self.count
end

--- schedule:set(name, flow_id, directives, now, seq): apply a flow's
-- directives (procman.timers.apply), indexing the timers they set.
function Schedule:set(name, flow_id, directives, now, seq)
  local list = self.by_flow[name][flow_id]
  local old_count = list and #list or 0
  list = timers.apply(list, directives, now, seq)
  replace(self, name, flow_id, old_count, list)
  for _, t in ipairs(list or {}) do
    if t.seq == seq then push(self, name, flow_id, t) end
  end
  tidy(self)
end

--- schedule:restore(name, flow_id, timer): a timer read back from a
-- compacted journal.
function Schedule:restore(name, flow_id, t)
  local list = self.by_flow[name][flow_id] or {}
  local old_count = #list
  list[#list + 1] = t
  replace(self, name, flow_id, old_count, list)
  push(self, name, flow_id, t)
  tidy(self)
end

--- schedule:remove(name, flow_id, seq, index): the timer set by (seq,
-- index) is gone (it fired).
function Schedule:remove(name, flow_id, seq, index)
  local list = self.by_flow[name][flow_id]
  local old_count = list and #list or 0
  replace(self, name, flow_id, old_count, (timers.remove(list, seq, index)))
end

--- schedule:drop(name, flow_id): a completed flow's timers are gone.
function Schedule:drop(name, flow_id)
  local list = self.by_flow[name][flow_id]
  replace(self, name, flow_id, list and #list or 0, nil)
end

--- schedule:find(name, flow_id, seq, index) -> the timer, or nil.
function Schedule:find(name, flow_id, seq, index)
  return timers.find(self.by_flow[name][flow_id], seq, index)
end

--- schedule:take_due(now[, max]) -> the timers due at 'now', in order, at
-- most 'max': an array of { name, flow, timer, entry }. They leave the
-- index (not their lists): give them back with put_back once fired or not.
-- Until then the index is unsure: should anything fail before put_back
-- (memory, say), the next take_due rebuilds it from the lists.
function Schedule:take_due(now, max)
  if self.unsure then rebuild(self) end
  self.unsure = true  -- the taken timers are out of the index until put_back
  local heap, taken, seen = self.heap, {}, {}
  while heap[1] ~= nil and heap[1].due <= now and (max == nil or #taken < max) do
    local entry = pop(heap)
    local t = self:find(entry.name, entry.flow, entry.seq, entry.index)
    if t and not seen[t] then  -- (a rebuild while a tick fired may have indexed one twice)
      seen[t] = true
      taken[#taken + 1] = { name = entry.name, flow = entry.flow, timer = t, entry = entry }
    end
  end
  return taken
end

--- schedule:put_back(taken): index again the taken timers that did not
-- fire (a tick stopped by an error, or a journal that failed).
function Schedule:put_back(taken)
  local heap = self.heap
  for _, d in ipairs(taken) do
    local e = d.entry
    if self:find(e.name, e.flow, e.seq, e.index) then
      heap[#heap + 1] = e
      sift_up(heap, #heap)
    end
  end
  self.unsure = false
end

--- schedule:next_due() -> the due time of the earliest timer, or nil.
-- Entries of timers that are gone are dropped from the top on the way.
function Schedule:next_due()
  if self.unsure then rebuild(self) end
  local heap = self.heap
  while heap[1] ~= nil do
    local top = heap[1]
    if self:find(top.name, top.flow, top.seq, top.index) then return top.due end
    pop(heap)
  end
  return nil
end

--- schedule:list([name[, flow_id]]) -> copies of the pending timers, by
-- due time: { workflow, flow, key, due, event }.
function Schedule:list(name, flow_id)
  local list = {}
  for workflow, flows in pairs(self.by_flow) do
    if name == nil or workflow == name then
      for id, flow_timers in pairs(flows) do
        if flow_id == nil or id == flow_id then
          for _, t in ipairs(flow_timers) do
            list[#list + 1] = { workflow = workflow, flow = id, key = t.key, due = t.due,
                                event = copy(t.event), seq = t.seq, index = t.index,
                                rank = self.rank[workflow] }
          end
        end
      end
    end
  end
  table.sort(list, before)
  for _, t in ipairs(list) do t.seq, t.index, t.rank = nil, nil, nil end
  return list
end

return M
