--- procman inspect FILE [--workflow W] [--flow ID] [--status S] [--json]
--
-- Reads a journal without the workflow code and without its lock (a
-- router may be running on it):
--   no option     a summary: flows by workflow and status, pending
--                 commands, parked flows, timers, dead letters (each
--                 with its id, time, event type, reason and event), size
--   --workflow W  W's flows, with status and version (--status filters)
--   --flow ID     that flow's timeline: for each version, the event, the
--                 commands, the status after it
--   --metrics     the state's gauges in Prometheus text format (as
--                 r:metrics() gives them), e.g. for node_exporter's
--                 textfile collector
local pretty = require "procman.pretty"
local journal_view = require "procman.journal_view"
local source = require "procman.cli.source"  -- a journal file or a PostgreSQL conninfo
local json = require "procman.cli.json"
local operations = require "procman.operations"
local metrics = require "procman.metrics"

-- Integer ids in their order, then strings in theirs: the integer 7 and
-- the string "7" are two keys, never equal in the sort.
local function before(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then return ta < tb end
  return a < b
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, before)
  return keys
end

-- A live flow in its workflow's counts by version ("v1") and by patch.
local function count_live(w, f)
  local v = "v" .. f.workflow_version
  w.live_by_version[v] = (w.live_by_version[v] or 0) + 1
  for _, id in ipairs(f.patches or {}) do w.live_patches[id] = (w.live_patches[id] or 0) + 1 end
end

-- Counts by workflow, live/completed, status, version (live flows) and
-- patches taken (live flows).
local function summary(view)
  local s = { journal = view.path, bytes = view.bytes, records = view.records, seq = view.seq,
              dropped = view.dropped, damaged_at = view.damaged_at, workflows = {},
              pending = #journal_view.pending(view), parked = json.array(journal_view.parked(view)),
              timers = json.array(journal_view.timers(view)),
              dead_letters = json.array(journal_view.dead_letters(view)) }
  for _, name in ipairs(view.workflows) do
    local w = { live = 0, completed = 0, live_by_status = {}, completed_by_status = {},
                live_by_version = {}, live_patches = {} }
    for _, f in pairs(view.flows[name]) do
      local kind = f.completed and "completed" or "live"
      w[kind] = w[kind] + 1
      local by = w[kind .. "_by_status"]
      by[f.status] = (by[f.status] or 0) + 1
      if not f.completed then count_live(w, f) end
    end
    s.workflows[name] = w
  end
  return s
end

local function by_status_text(by)
  local parts = {}
  for _, status in ipairs(sorted_keys(by)) do
    parts[#parts + 1] = string.format("%s %d", status, by[status])
  end
  return #parts > 0 and " (" .. table.concat(parts, ", ") .. ")" or ""
end

local function summary_text(s)
  local head
  if s.bytes == nil then  -- a database (procman.pg.view) is not a file: its events, their last position
    head = string.format("%s: %d events, last position %d", s.journal, s.records, s.seq)
  else
    head = string.format("%s: %d bytes, %d records, sequence %d", s.journal, s.bytes, s.records, s.seq)
  end
  local lines = { head }
  if s.dropped > 0 then
    lines[#lines + 1] = string.format("torn tail: %d bytes (cut when a router opens it)", s.dropped)
  end
  if s.damaged_at then lines[#lines + 1] = string.format("damaged at byte %d (skipped)", s.damaged_at) end
  lines[#lines + 1] = "flows:"
  for _, name in ipairs(sorted_keys(s.workflows)) do
    local w = s.workflows[name]
    lines[#lines + 1] = string.format("  %-12s live %d%s; completed %d%s", name, w.live,
                                      by_status_text(w.live_by_status), w.completed,
                                      by_status_text(w.completed_by_status))
    if next(w.live_by_version) and (w.live_by_version.v1 or 0) < w.live then
      lines[#lines + 1] = "    live flows by version: " .. by_status_text(w.live_by_version):sub(3, -2)
    end
    for _, id in ipairs(sorted_keys(w.live_patches)) do
      lines[#lines + 1] = string.format("    patch %s: taken by %d of %d live flows", id,
                                        w.live_patches[id], w.live)
    end
  end
  lines[#lines + 1] = string.format("pending commands: %d", s.pending)
  lines[#lines + 1] = string.format("parked flows: %d", #s.parked)
  for _, p in ipairs(s.parked) do
    lines[#lines + 1] = string.format("  %s (%d events held): %s", operations.flow_label(p.workflow, p.flow),
                                      p.held, p.error)
  end
  local t = s.timers[1]
  local next_due = t and string.format(" (next due at %s: %s %s)", pretty.format(t.due),
                                       operations.flow_label(t.workflow, t.flow), t.event.event_type) or ""
  lines[#lines + 1] = string.format("timers: %d%s", #s.timers, next_due)
  lines[#lines + 1] = string.format("dead letters: %d", #s.dead_letters)
  for _, d in ipairs(s.dead_letters) do
    lines[#lines + 1] = string.format("  #%s %s %s: %s", tostring(d.id or d.position),
                                      operations.time_text(d.time),
                                      tostring(d.event.event_type), d.error)
    lines[#lines + 1] = "    " .. pretty.format(d.event, { width = 1e9 })
  end
  return table.concat(lines, "\n")
end

local function flows_of(view, args, cli)
  local by_id = view.flows[args.workflow]
  if by_id == nil then cli.fail(1, "%s has no flows of workflow %q", view.path, args.workflow) end
  local list = json.array {}
  for _, id in ipairs(sorted_keys(by_id)) do
    local f = by_id[id]
    if args.status == nil or f.status == args.status then
      list[#list + 1] = { flow = f.flow, status = f.status, version = f.version,
                          workflow_version = f.workflow_version,
                          patches = f.patches and json.array(f.patches),
                          state = f.completed and "completed" or f.parked and "parked" or "live" }
    end
  end
  if #list == 0 and args.status ~= nil then  -- a status no flow has, as for a workflow no flow has
    local statuses = {}
    for _, f in pairs(by_id) do statuses[f.status] = true end
    cli.fail(1, "%s has no flows of workflow %q with status %q (its flows' statuses: %s)", view.path,
             args.workflow, args.status, table.concat(sorted_keys(statuses), ", "))
  end
  return list
end

local function flows_text(list)
  local lines = { string.format("%-24s %-16s %8s %5s  %s", "flow", "status", "version", "code", "") }
  for _, f in ipairs(list) do
    lines[#lines + 1] = string.format("%-24s %-16s %8d %5s  %s", operations.flow_text(f.flow), f.status,
                                      f.version, "v" .. f.workflow_version, f.state)
  end
  return table.concat(lines, "\n")
end

-- The workflow a --flow belongs to: --workflow, or the only one that has it.
local function flow_workflow(view, args, cli, id)
  if args.workflow then return args.workflow end
  local found = {}
  for _, name in ipairs(view.workflows) do
    if view.flows[name][id] then found[#found + 1] = name end
  end
  if #found == 0 then cli.fail(1, "%s has no flow %s", view.path, operations.flow_text(id)) end
  if #found > 1 then cli.fail(1, "flow %s is in several workflows (%s): say which with --workflow",
                              operations.flow_text(id), table.concat(found, ", ")) end
  return found[1]
end

local function timeline_text(f)
  local code = f.workflow_version ~= 1 and string.format(", code v%d", f.workflow_version) or ""
  local where = f.completed and " (completed)" or f.parked and " (parked)" or ""
  local lines = { string.format("%s: %s, version %d%s%s", operations.flow_label(f.workflow, f.flow), f.status,
                                f.version, code, where) }
  for _, step in ipairs(f.timeline or {}) do
    lines[#lines + 1] = string.format("v%d  %s", step.version, pretty.block(step.event))
    lines[#lines + 1] = "    commands: " .. pretty.block(step.commands)
    lines[#lines + 1] = "    status: " .. step.status
  end
  if f.parked then
    lines[#lines + 1] = string.format("parked: %s (%d events held)", f.parked.error, #f.parked.events)
  end
  return table.concat(lines, "\n")
end

-- The journal's state, as metrics.gauges takes it.
local function gauge_state(view)
  local timers = journal_view.timers(view)
  local letters = journal_view.dead_letters(view)
  local state = { workflows = sorted_keys(view.flows), live = {}, parked = {}, parked_events = {},
                  completed = {}, pending = #journal_view.pending(view), timers = #timers,
                  next_due = timers[1] and timers[1].due, dead_letters = #letters,
                  oldest_dead_letter = metrics.oldest_time(letters), journal_bytes = view.bytes,
                  seq = view.seq }
  for _, name in ipairs(state.workflows) do
    local kinds = { live = 0, parked = 0, parked_events = 0, completed = 0 }
    for _, f in pairs(view.flows[name]) do
      local kind = f.completed and "completed" or "live"
      kinds[kind] = kinds[kind] + 1
      if f.parked then
        kinds.parked, kinds.parked_events = kinds.parked + 1, kinds.parked_events + #f.parked.events
      end
    end
    for kind, n in pairs(kinds) do state[kind][name] = n end
  end
  return state
end

-- --status filters a workflow's list of flows: without --workflow it
-- means the journal's only workflow, and says so when there are several.
local function status_workflow(view, args, cli)
  if args.status == nil or args.workflow then return args.workflow end
  if args.flow then cli.fail(2, "--status filters the list of a workflow's flows, not --flow's timeline") end
  if #view.workflows == 1 then return view.workflows[1] end
  cli.fail(2, "--status %s needs --workflow W to say whose flows (this journal has %s)", args.status,
           #view.workflows == 0 and "no flows" or "the workflows " .. table.concat(view.workflows, ", "))
end

return function(args, cli)
  local id = args.flow and cli.flow_id(args.flow)
  local view, err = source.read(args.journal)
  if not view then cli.fail(1, "%s", err) end
  if args.metrics then
    cli.io.stdout:write(metrics.render(metrics.gauges(gauge_state(view))))
    return 0
  end
  args.workflow = status_workflow(view, args, cli)
  local result, text
  if id ~= nil then
    local name = flow_workflow(view, args, cli, id)
    if view.flows[name] == nil or view.flows[name][id] == nil then
      cli.fail(1, "%s has no flow %s", view.path, operations.flow_label(name, id))
    end
    view = assert(source.read(args.journal, { timeline = { name, id } }))
    result = view.flows[name][id]
    text = timeline_text(result)
    result.timeline = json.array(result.timeline or {})
    result.timers = result.timers and json.array(result.timers)
  elseif args.workflow then
    result = flows_of(view, args, cli)
    text = flows_text(result)
  else
    result = summary(view)
    text = summary_text(result)
  end
  if args.json then
    text = assert(json.encode(result))
  end
  cli.io.stdout:write(text, "\n")
  return 0
end
