--- procman.records: the router's journal records, for the router and for
-- tools that read a journal without the workflow code (procman inspect,
-- diagram, verify). docs/journal-format.md describes each payload.
local M = {
  EVENT = 1,      -- { seq, event, flows = { entry, ... }, now, fired }
  ACK = 2,        -- { id }
  FLOW = 3,       -- compaction: { workflow, flow, state, version, status, seen }
  OUTBOX = 4,     -- compaction: an envelope { id, workflow, flow, command }
  COMPLETED = 5,  -- compaction: { workflow, flow, status }
  SEQ = 6,        -- compaction: { seq, next_dead_letter }
  SKIP = 7,       -- { workflow, flow }
  TIMER = 8,      -- compaction: { workflow, flow, key, due, event, seq, index }
  PARKED = 9,     -- compaction: { workflow, flow, error, events }
  DEAD = 10,      -- { id, event, error, time }
  DROP = 11,      -- a dead letter dropped: { id }
}

-- The status before a flow's first event, in transitions (procman
-- diagram, inspect).
M.START = "[*]"

--- The id of a flow's i-th command after the event that took it to
-- 'version': deterministic, so receivers can deduplicate.
function M.command_id(workflow, flow_id, version, i)
  return M.command_prefix(workflow, flow_id, version) .. i
end

--- The ids of a flow's commands after one event are this prefix and i:
-- made once for all of them.
function M.command_prefix(workflow, flow_id, version)
  return string.format("%s/%s/%d/", workflow, tostring(flow_id), version)
end

--- Order for listings of flows: by workflow, then flow id (as text, since
-- ids are strings or integers).
function M.by_flow(a, b)
  if a.workflow ~= b.workflow then return a.workflow < b.workflow end
  return tostring(a.flow) < tostring(b.flow)
end

--- A parked flow as r:parked() and procman inspect list it.
function M.parked_entry(workflow, flow_id, error, events)
  return { workflow = workflow, flow = flow_id, error = error, event = events[1], held = #events }
end

return M
