--- procman verify FILE WORKFLOW_FILE...: replay a journal through workflow
-- code (say, the code about to be deployed) and report every divergence:
-- an event whose handler now returns other commands, leaves another
-- status, or fails. Status 1 if there is any. Read-only; no lock.
--
-- Each flow is replayed on its own, so one diverging flow does not hide
-- the others; a flow whose handler fails is not followed further.
--
-- Versions (docs/operations.md): a flow is replayed with the code of the
-- version it started on when that version is given, else with the highest
-- given version of its workflow: "procman verify FILE order_v2.lua" says
-- which flows would diverge if they ran on v2. Journaled patches
-- (procman.patched) answer as they did. The flows still live at the end of
-- the journal are named at the end: those are the ones a deploy concerns.
local core = require "procman.core"
local pretty = require "procman.pretty"
local records = require "procman.records"
local workflow = require "procman.workflow"
local patches = require "procman.patches"
local replay_plan = require "procman.replay_plan"
local operations = require "procman.operations"

local encode, decode = core.encode, core.decode

-- name -> version -> spec, and name -> the highest version's spec.
local function specs_of(workflows)
  local versions, newest = {}, {}
  for _, wf in ipairs(workflows) do
    local spec = workflow.spec(wf)
    versions[spec.name] = versions[spec.name] or {}
    versions[spec.name][spec.version] = spec
    if newest[spec.name] == nil or spec.version > newest[spec.name].version then newest[spec.name] = spec end
  end
  return versions, newest
end

-- The code a flow is checked with: its own version's, else the newest given.
local function spec_for(state, e)
  local version = replay_plan.version(state.plan, e.workflow, e.flow)
  return state.versions[e.workflow][version] or state.specs[e.workflow]
end

local function is_live(state, e)
  return not replay_plan.completes(state.plan, e.workflow, e.flow)
end

local function label(e)
  return operations.flow_label(e.workflow, e.flow)
end

local function where(e, version, rec, offset)
  return string.format("%s v%d (sequence %d, byte %d)", label(e), version, rec.seq, offset)
end

-- Replay one applied entry; a problem (text) or nil.
local function check_entry(state, e, rec, offset)
  local by_id = state.flows[e.workflow]
  local pm = by_id[e.flow]
  if pm == false then return nil end  -- failed earlier: not followed
  local spec = spec_for(state, e)
  pm = pm or core.new(spec, e.flow)
  by_id[e.flow] = pm
  local ok, now = patches.replay(pm, rec.event, e.patches)
  state.checked = state.checked + 1
  if ok and e.patches then patches.rebase(pm, e.patches) end
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
      local wanted = e.commands and (is_live(state, e) or not state.live_only)
      if wanted and state.specs[e.workflow] then
        local problem = check_entry(state, e, rec, offset)
        if problem and is_live(state, e) then state.diverging[label(e)] = true end
        out[#out + 1] = problem
      elseif wanted and not state.missing[e.workflow] then
        state.missing[e.workflow] = true
        out[#out + 1] = string.format("the journal has flows of workflow %q, which was not given",
                                      e.workflow)
      end
    end
  elseif kind == records.FLOW and state.specs[rec.workflow] then
    local pm = core.restore(spec_for(state, rec), rec.flow, rec.state, rec.version, rec.seen)
    patches.take(pm, rec.patches)
    state.flows[rec.workflow][rec.flow] = pm
  end
  return out
end

local function scan(cli, path)
  local next_record, info = core.journal_scan(path)
  if not next_record then cli.fail(1, "%s", info) end
  return next_record, info
end

-- A damaged range hides events from the check: a problem, not a pass.
local function damage(info)
  if not info.damaged_at then return nil end
  return string.format("damaged at byte %d: the records up to byte %d were skipped, not checked",
                       info.damaged_at, info.resume_at)
end

return function(args, cli)
  local versions, specs = specs_of(cli.load_workflows(args.workflows))
  local state = { specs = specs, versions = versions, flows = {}, missing = {}, checked = 0,
                  plan = replay_plan.read(scan(cli, args.journal), decode), live_only = args.live,
                  diverging = {} }
  for name in pairs(specs) do state.flows[name] = {} end
  local next_record, info = scan(cli, args.journal)
  local problems = { damage(info) }  -- first: it explains what follows
  for offset, kind, payload in next_record do
    for _, p in ipairs(check_record(state, kind, decode(payload), offset)) do problems[#problems + 1] = p end
  end
  local out = cli.io.stdout
  for _, p in ipairs(problems) do out:write(p, "\n") end
  local live = {}
  for flow in pairs(state.diverging) do live[#live + 1] = flow end
  table.sort(live)
  if #live > 0 then
    out:write(string.format("live flows that diverge: %s\n", table.concat(live, ", ")))
  end
  out:write(string.format("%s: %d events replayed, %d divergences\n", args.journal, state.checked, #problems))
  return #problems > 0 and 1 or 0
end
