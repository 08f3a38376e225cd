--- procman verify FILE WORKFLOW_FILE...: replay a journal through workflow
-- code (say, the code about to be deployed) and report every divergence:
-- an event whose handler now returns other commands, leaves another
-- status, or fails. Status 1 if there is any. Read-only; no lock.
--
-- Each flow is replayed on its own, so one diverging flow does not hide
-- the others; a flow whose handler fails is not followed further.
local core = require "procman.core"
local pretty = require "procman.pretty"
local records = require "procman.records"
local workflow = require "procman.workflow"

local encode, decode = core.encode, core.decode

local function specs_of(workflows)
  local specs = {}
  for _, wf in ipairs(workflows) do specs[wf.name] = workflow.spec(wf) end
  return specs
end

local function where(e, version, rec, offset)
  return string.format("%s/%s v%d (sequence %d, byte %d)", e.workflow, tostring(e.flow), version,
                       rec.seq, offset)
end

-- Replay one applied entry; a problem (text) or nil.
local function check_entry(state, e, rec, offset)
  local by_id = state.flows[e.workflow]
  local pm = by_id[e.flow]
  if pm == false then return nil end  -- failed earlier: not followed
  pm = pm or core.new(state.specs[e.workflow], e.flow)
  by_id[e.flow] = pm
  local ok, now = pcall(pm.handle, pm, rec.event)
  state.checked = state.checked + 1
  if not ok then
    by_id[e.flow] = false
    return string.format("%s: '%s' fails now: %s", where(e, pm:version() + 1, rec, offset),
                         rec.event.event_type, tostring(now))
  end
  if encode(now) ~= encode(e.commands) then
    return string.format("%s: '%s' returns other commands\n  journal: %s\n  now:     %s",
                         where(e, pm:version(), rec, offset), rec.event.event_type,
                         pretty.format(e.commands, { width = 1e9 }), pretty.format(now, { width = 1e9 }))
  end
  if e.status ~= nil and pm:status() ~= e.status then
    return string.format("%s: '%s' leaves the flow %s, the journal says %s",
                         where(e, pm:version(), rec, offset), rec.event.event_type,
                         tostring(pm:status()), e.status)
  end
  return nil
end

local function check_record(state, kind, rec, offset)
  local out = {}
  if kind == records.EVENT then
    for _, e in ipairs(rec.flows) do
      if e.commands and state.specs[e.workflow] then
        out[#out + 1] = check_entry(state, e, rec, offset)
      elseif e.commands and not state.missing[e.workflow] then
        state.missing[e.workflow] = true
        out[#out + 1] = string.format("the journal has flows of workflow %q, which was not given",
                                      e.workflow)
      end
    end
  elseif kind == records.FLOW and state.specs[rec.workflow] then
    state.flows[rec.workflow][rec.flow] = core.restore(state.specs[rec.workflow], rec.flow, rec.state,
                                                       rec.version, rec.seen)
  end
  return out
end

return function(args, cli)
  local specs = specs_of(cli.load_workflows(args.workflows))
  local next_record, info = core.journal_scan(args.journal)
  if not next_record then cli.fail(1, "%s", info) end
  local state = { specs = specs, flows = {}, missing = {}, checked = 0 }
  for name in pairs(specs) do state.flows[name] = {} end
  local problems = {}
  for offset, kind, payload in next_record do
    for _, p in ipairs(check_record(state, kind, decode(payload), offset)) do problems[#problems + 1] = p end
  end
  local out = cli.io.stdout
  for _, p in ipairs(problems) do out:write(p, "\n") end
  out:write(string.format("%s: %d events replayed, %d divergences\n", args.journal, state.checked, #problems))
  return #problems > 0 and 1 or 0
end
