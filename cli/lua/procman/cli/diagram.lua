--- procman diagram FILE [--workflow W] [--format mermaid|dot]: a
-- workflow's observed state machine, drawn from a journal: statuses as
-- nodes, event types as edges labelled with how often each happened, the
-- start and (for completed flows) the end as the usual black dots.
-- Mermaid renders in Markdown viewers; dot renders with `dot -Tpng`.
local journal_view = require "procman.journal_view"
local source = require "procman.cli.source"  -- a journal file or a PostgreSQL conninfo

local START = journal_view.START

local function choose_workflow(view, args, cli)
  if args.workflow then
    if view.transitions[args.workflow] == nil then
      cli.fail(1, "%s has no events of workflow %q", view.path, args.workflow)
    end
    return args.workflow
  end
  if #view.workflows == 0 then cli.fail(1, "%s has no flows to draw", view.path) end
  if #view.workflows > 1 then
    cli.fail(1, "%s has several workflows (%s): say which with --workflow", view.path,
             table.concat(view.workflows, ", "))
  end
  return view.workflows[1]
end

-- The edges, sorted, plus one to the end per final status of completed flows.
local function edges_of(view, name)
  local edges = {}
  for _, e in pairs(view.transitions[name] or {}) do edges[#edges + 1] = e end
  local ends = {}
  for _, f in pairs(view.flows[name]) do
    if f.completed then ends[f.status] = (ends[f.status] or 0) + 1 end
  end
  for status, count in pairs(ends) do
    edges[#edges + 1] = { from = status, to = false, count = count }
  end
  table.sort(edges, function(a, b)
    if a.from ~= b.from then return a.from == START or (b.from ~= START and a.from < b.from) end
    local ta, tb = a.event_type or "", b.event_type or ""
    if ta ~= tb then return ta < tb end
    return tostring(a.to) < tostring(b.to)
  end)
  return edges
end

local function mermaid(name, edges)
  local ids, lines, n = {}, { "---", "title: " .. name, "---", "stateDiagram-v2" }, 0
  local function id(status)
    if status == START or status == false then return "[*]" end
    if ids[status] == nil then
      n = n + 1
      ids[status] = "s" .. n
      lines[#lines + 1] = string.format('    state "%s" as s%d', status:gsub('"', "'"), n)
    end
    return ids[status]
  end
  local body = {}
  for _, e in ipairs(edges) do
    local from, to = id(e.from), id(e.to)
    if e.event_type then
      local label = e.event_type:gsub("[:;]", "_")  -- Mermaid's separators
      body[#body + 1] = string.format("    %s --> %s : %s (%d)", from, to, label, e.count)
    else
      body[#body + 1] = string.format("    %s --> %s : completed (%d)", from, to, e.count)
    end
  end
  table.move(body, 1, #body, #lines + 1, lines)
  return table.concat(lines, "\n")
end

local function quote(s)
  return '"' .. s:gsub('[\\"]', "\\%0") .. '"'
end

local function dot(name, edges)
  local lines = {
    "digraph " .. quote(name) .. " {",
    "  rankdir=LR;",
    '  node [shape=box, style=rounded, fontname="Helvetica"];',
    '  edge [fontname="Helvetica", fontsize=10];',
    '  "__start" [shape=circle, label="", width=0.2, style=filled, fillcolor=black];',
    '  "__end" [shape=doublecircle, label="", width=0.15, style=filled, fillcolor=black];',
  }
  for _, e in ipairs(edges) do
    local from = e.from == START and '"__start"' or quote(e.from)
    local to = e.to == false and '"__end"' or quote(e.to)
    local label = e.event_type and string.format("%s (%d)", e.event_type, e.count)
                  or string.format("completed (%d)", e.count)
    lines[#lines + 1] = string.format("  %s -> %s [label=%s];", from, to, quote(label))
  end
  lines[#lines + 1] = "}"
  return table.concat(lines, "\n")
end

return function(args, cli)
  local view, err = source.read(args.journal)
  if not view then cli.fail(1, "%s", err) end
  local name = choose_workflow(view, args, cli)
  local edges = edges_of(view, name)
  local draw = args.format == "dot" and dot or mermaid
  cli.io.stdout:write(draw(name, edges), "\n")
  return 0
end
