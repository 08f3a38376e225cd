--- procman.replay_plan: what recovery must replay, and whether the code
-- given can replay it, read from the journal's fold (procman.fold).
--
-- A flow that completes further on in the journal needs no code: its
-- events are not replayed nor compared (its statuses, commands and event
-- ids are in the records), so a deploy can drop the code of a version once
-- no live flow runs it, and a code change never "diverges" on history
-- that is over. A flow that is still live at the end needs the code of the
-- version it started on; live_versions counts those by workflow and
-- version, so that a router that lacks one refuses the journal before any
-- handler runs, saying which.
--
-- Versions are journaled on a flow's first entry (workflow_version, when
-- not 1) and in the snapshot records of compaction; an entry without one
-- is version 1 (journals written before versions existed).
local fold = require "procman.fold"

local M = {}

--- read(next_record, decode) -> plan: the journal folded (next_record
-- iterates (offset, kind, payload), as j:records(); records of other
-- types are skipped).
function M.read(next_record, decode)
  local plan = fold.new()
  plan.outbox:defer()  -- never listed: never encoded
  for offset, kind, payload in next_record do
    if fold.knows(kind) then fold.record(plan, kind, decode(payload), offset, payload) end
  end
  return plan
end

--- Does the flow complete within the journal (or did it before it was
-- compacted)? Then nothing need replay it.
function M.completes(plan, name, flow_id)
  local by_id = plan.finished[name]
  return by_id ~= nil and by_id[flow_id] ~= nil
end

--- The version a live flow started on, as the journal says (1 for others).
function M.version(plan, name, flow_id)
  if plan.live[name] == nil or M.completes(plan, name, flow_id) then return 1 end
  return fold.workflow_version(plan, name, flow_id)
end

--- live_versions(state) -> name -> version -> how many live (or parked)
-- flows of a folded state run that version.
function M.live_versions(state)
  local live = {}
  for name, by_id in pairs(state.live) do
    local counts = {}
    local function count(flow_id)
      local v = fold.workflow_version(state, name, flow_id)
      counts[v] = (counts[v] or 0) + 1
    end
    for flow_id in pairs(by_id) do count(flow_id) end
    for flow_id in pairs(state.parked_of[name]) do
      if by_id[flow_id] == nil then count(flow_id) end
    end
    live[name] = counts
  end
  return live
end

--- missing(live, versions) -> nil, or a message naming the first workflow
-- and version that live flows need (live: live_versions) and 'versions'
-- (name -> version -> spec) lacks, with how many flows need it.
function M.missing(live, versions)
  local names = {}
  for name in pairs(live) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    local given = versions[name]
    local wanted = {}
    for version, count in pairs(live[name]) do
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
