--- Helpers for specs: snapshots of a flow, to assert that a failed call
-- changed nothing.
local assert = require "luassert"

local flow = {}

--- Everything observable about a flow.
function flow.snapshot(pm)
  return {
    state = pm:state(),
    status = pm:status(),
    version = pm:version(),
    history = pm:history(),
    text = tostring(pm),
  }
end

--- Call pm:handle(event), expect an error matching 'pattern' (plain
-- text), and assert that the flow is exactly as it was. Returns the error.
function flow.refuses(pm, event, pattern)
  local before = flow.snapshot(pm)
  local ok, err = pcall(pm.handle, pm, event)
  assert(not ok, "expected pm:handle to fail with: " .. pattern)
  assert(type(err) == "string", "errors are strings, got " .. type(err))
  if not err:find(pattern, 1, true) then
    error(string.format("error %q does not contain %q", err, pattern), 2)
  end
  assert.same(before, flow.snapshot(pm))
  return err
end

--- The flow's raw state (what done() and status() see, before view):
-- the fold of its history (the events since its snapshot, if it has one)
-- through the workflow's handlers.
function flow.raw_state(wf, pm)
  local _, base = require("procman.core").origin(pm)
  local state = base or wf.init and wf.init(pm:id()) or {}
  for _, event in ipairs(pm:history()) do wf.on[event.event_type](state, event) end
  return state
end

return flow
