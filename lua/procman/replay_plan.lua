--- procman.replay_plan: what recovery must replay, read from the journal
-- before anything is replayed.
--
-- A flow that completes further on in the journal needs no code: its
-- events are not replayed nor compared (its statuses, commands and event
-- ids are in the records), so a deploy can drop the code of a version once
-- no live flow runs it, and a code change never "diverges" on history
-- that is over. A flow that is still live at the end needs the code of the
-- version it started on; the plan counts those by workflow and version, so
-- that a router that lacks one refuses the journal at once, saying which.
--
-- Versions are journaled on a flow's first entry (workflow_version, when
-- not 1) and in the snapshot records of compaction; an entry without one
-- is version 1 (journals written before versions existed).
local records = require "procman.records"

local M = {}

-- The records that say which flows there are, which version they run and
-- whether they complete.
local NEEDED = { [records.EVENT] = true, [records.FLOW] = true, [records.PARKED] = true,
                 [records.COMPLETED] = true }

-- plan.flows[name][flow_id]: the version a flow started on while it is
-- live, 0 once it completes (a number, not a table: the plan covers every
-- flow of the journal).
local function by_id_of(plan, name)
  local by_id = plan.flows[name]
  if by_id == nil then
    by_id = {}
    plan.flows[name] = by_id
  end
  return by_id
end

-- A flow seen for the first time starts on 'version'.
local function note(plan, name, flow_id, version)
  local by_id = by_id_of(plan, name)
  if by_id[flow_id] == nil then by_id[flow_id] = version or 1 end
  return by_id
end

local function fold(plan, kind, rec)
  if kind == records.EVENT then
    for _, e in ipairs(rec.flows) do
      local by_id = note(plan, e.workflow, e.flow, e.workflow_version)
      if e.done then by_id[e.flow] = 0 end
    end
  elseif kind == records.FLOW or kind == records.PARKED then
    note(plan, rec.workflow, rec.flow, rec.workflow_version)
  elseif kind == records.COMPLETED then
    by_id_of(plan, rec.workflow)[rec.flow] = 0
  end
end

--- read(next_record, decode) -> plan: next_record iterates (offset, kind,
-- payload) (j:records()), decode turns a payload into a record.
-- plan.live[name][version] = how many flows of that version are live at
-- the journal's end.
function M.read(next_record, decode)
  local plan = { flows = {}, live = {} }
  for _, kind, payload in next_record do
    if NEEDED[kind] then fold(plan, kind, decode(payload)) end  -- acks, outbox...: not decoded
  end
  for name, by_id in pairs(plan.flows) do
    local counts = {}
    for _, version in pairs(by_id) do
      if version > 0 then counts[version] = (counts[version] or 0) + 1 end
    end
    plan.live[name] = counts
  end
  return plan
end

--- Does the flow complete within the journal (or did it before it was
-- compacted)? Then recovery need not replay it.
function M.completes(plan, name, flow_id)
  local by_id = plan.flows[name]
  return by_id ~= nil and by_id[flow_id] == 0
end

--- The version a live flow started on, as the journal says.
function M.version(plan, name, flow_id)
  local by_id = plan.flows[name]
  local v = by_id and by_id[flow_id]
  return (v and v > 0) and v or 1
end

--- missing(plan, versions) -> nil, or a message naming the first workflow
-- and version that live flows need and 'versions' (name -> version ->
-- spec) lacks, with how many flows need it.
function M.missing(plan, versions)
  local names = {}
  for name in pairs(plan.live) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    local given = versions[name]
    local wanted = {}
    for version, count in pairs(plan.live[name]) do
      if given == nil or given[version] == nil then wanted[#wanted + 1] = { version, count } end
    end
    table.sort(wanted, function(a, b) return a[1] < b[1] end)
    local v = wanted[1]
    if v and given == nil then
      local total = 0
      for _, w in ipairs(wanted) do total = total + w[2] end
      return string.format("the journal has %d live flow%s of workflow %q, which this router was "
                           .. "not given", total, total == 1 and "" or "s", name)
    elseif v then
      local have = {}
      for version in pairs(given) do have[#have + 1] = version end
      table.sort(have)
      return string.format("the journal has %d live flow%s of workflow %q on version %d, which this "
                           .. "router was not given (it has version %s): give it that version's "
                           .. "code too until they complete (docs/operations.md)", v[2],
                           v[2] == 1 and "" or "s", name, v[1], table.concat(have, ", "))
    end
  end
  return nil
end

return M
