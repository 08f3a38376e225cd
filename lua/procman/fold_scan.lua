--- procman.fold_scan: recovery's first pass over the common records, in C
-- (csrc/fold_scan.c), from the journal's bytes: no Lua table per record,
-- no command decoded and encoded again. It is procman.fold with counted
-- flows on events applied, acks, pending commands, live and completed
-- flows and the sequence counter; at the first record it does not take
-- (a timer, parking, a dead letter, a late part, bytes that are not
-- canonical...) it stops, and the Lua fold goes on from that record with
-- the state the scan hands over: the same state, as spec/fold_scan_spec.lua
-- checks against the Lua fold alone.
local core = require "procman.core"
local fold = require "procman.fold"

local M = {}

--- Off (tests): recovery folds every record in Lua, as the reference.
M.enabled = true

--- run(state, j) -> records, rest: fold a router's journal 'j' into its
-- empty state (counted flows noting their offsets), in C as far as it
-- goes. 'records' were folded; 'rest' is the offset of the first record
-- left to the Lua fold, nil for all of them, false for none.
function M.run(state, j)
  if not M.enabled then return 0, nil end
  local names = {}
  for name in pairs(state.live) do names[#names + 1] = name end
  local scan = core.fold_scan(j, names)
  state.finished_count = state.finished_count + scan:finished(state.finished, state.finished_of)
  scan:live(function(name, flow_id, workflow_version, version, status, ids, offsets)
    fold.restore_counted(state, name, flow_id, workflow_version, version, status, ids, offsets)
  end)
  local ids, envelopes = scan:pending()
  local envelope = {}
  for i = 1, #ids do
    envelope.id = ids[i]
    state.outbox:add(envelope, envelopes[i])
  end
  local set, seq = scan:seq()
  if set then state.seq = seq end
  for _, next_id in ipairs(scan:skips()) do state.dead:skip_to(next_id) end
  local records, stopped = scan:result()
  return records, stopped or false
end

return M
