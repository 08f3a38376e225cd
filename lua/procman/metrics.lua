--- procman.metrics: Prometheus text exposition (version 0.0.4) of a
-- router's state and activity, and of a journal at rest.
--
-- Two kinds of figures:
-- - gauges of the state, computed when asked (they cost nothing between
--   scrapes): flows live, parked and completed by workflow, parked events,
--   pending commands, timers, dead letters, journal size;
-- - counters and histograms of activity since the router opened, kept by
--   a collector that listens on the router's hooks (procman.hooks): only
--   with procman.router{ metrics = true }.
-- Names start with procman_, per-workflow figures have a workflow label;
-- label values and help text are escaped as the format says.
local M = {}

-- Histogram buckets (upper bounds, seconds).
local HANDLE_BUCKETS = { 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                         0.1, 0.25, 0.5, 1, 2.5 }
local FSYNC_BUCKETS = { 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                        0.5, 1, 2.5, 10 }
local LATENESS_BUCKETS = { 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600 }

-- ---------------------------------------------------------------------
-- The text format
-- ---------------------------------------------------------------------

local function escape_label(v)
  return (tostring(v):gsub('[\\"\n]', { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

local function escape_help(s)
  return (s:gsub("[\\\n]", { ["\\"] = "\\\\", ["\n"] = "\\n" }))
end

local function number(v)
  if v == math.huge then return "+Inf" end
  if v == -math.huge then return "-Inf" end
  if v ~= v then return "NaN" end
  if math.type(v) == "integer" then return tostring(v) end
  local short = string.format("%.15g", v)  -- 0.0005, not 0.00050000000000000001
  return tonumber(short) == v and short or string.format("%.17g", v)
end

-- '{a="x",b="y"}' for labels given as a flat list { "a", "x", "b", "y" }.
local function label_text(labels)
  if labels == nil or #labels == 0 then return "" end
  local parts = {}
  for i = 1, #labels, 2 do
    parts[#parts + 1] = string.format('%s="%s"', labels[i], escape_label(labels[i + 1]))
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function with_le(labels, le)
  local out = table.move(labels or {}, 1, #(labels or {}), 1, {})
  out[#out + 1], out[#out + 2] = "le", le
  return out
end

local function histogram_lines(lines, name, s)
  local cumulative = 0
  for i, bound in ipairs(s.buckets) do
    cumulative = cumulative + s.counts[i]
    lines[#lines + 1] = name .. "_bucket" .. label_text(with_le(s.labels, number(bound))) .. " "
                        .. number(cumulative)
  end
  lines[#lines + 1] = name .. "_bucket" .. label_text(with_le(s.labels, "+Inf")) .. " " .. number(s.count)
  lines[#lines + 1] = name .. "_sum" .. label_text(s.labels) .. " " .. number(s.sum)
  lines[#lines + 1] = name .. "_count" .. label_text(s.labels) .. " " .. number(s.count)
end

--- render(families) -> the exposition text. A family is { name, help,
-- type = "counter"|"gauge"|"histogram", samples = { { labels, value } or
-- histogram samples } }; families without samples are left out.
function M.render(families)
  local lines = {}
  for _, f in ipairs(families) do
    if #f.samples > 0 then
      lines[#lines + 1] = "# HELP " .. f.name .. " " .. escape_help(f.help)
      lines[#lines + 1] = "# TYPE " .. f.name .. " " .. f.type
      for _, s in ipairs(f.samples) do
        if f.type == "histogram" then
          histogram_lines(lines, f.name, s)
        else
          lines[#lines + 1] = f.name .. label_text(s.labels) .. " " .. number(s.value)
        end
      end
    end
  end
  return table.concat(lines, "\n") .. (#lines > 0 and "\n" or "")
end

-- ---------------------------------------------------------------------
-- Gauges of the state
-- ---------------------------------------------------------------------

local function by_workflow(name, help, counts, workflows)
  local f = { name = name, help = help, type = "gauge", samples = {} }
  for _, w in ipairs(workflows) do
    f.samples[#f.samples + 1] = { labels = { "workflow", w }, value = counts[w] or 0 }
  end
  return f
end

local function single(name, help, value)
  return { name = name, help = help, type = "gauge", samples = value ~= nil and { { value = value } } or {} }
end

--- gauges(state) -> families. state = { workflows = { names, sorted },
-- live, parked, parked_events, completed (each { [workflow] = n }),
-- pending, timers, next_due, dead_letters, oldest_dead_letter,
-- journal_bytes, seq }: a router's (router_state) or a journal's
-- (procman inspect --metrics).
function M.gauges(state)
  local w = state.workflows
  return {
    by_workflow("procman_flows_live", "Live flows (parked ones included).", state.live, w),
    by_workflow("procman_flows_parked",
                "Parked flows: a handler failed, their events wait for resume or skip.", state.parked, w),
    by_workflow("procman_parked_events", "Events held by parked flows (the failed ones included).",
                state.parked_events, w),
    by_workflow("procman_flows_completed", "Completed flows the router remembers.", state.completed, w),
    single("procman_outbox_pending", "Commands in the outbox not yet acked by a gateway.", state.pending),
    single("procman_timers_pending", "Timers set and not yet fired.", state.timers),
    single("procman_timer_next_due_timestamp_seconds",
           "When the earliest pending timer is due (the router's clock); in the past: overdue, nobody ticks.",
           state.next_due),
    single("procman_dead_letters", "Dead letters waiting for retry or drop.", state.dead_letters),
    single("procman_dead_letter_oldest_timestamp_seconds", "When the oldest dead letter was made.",
           state.oldest_dead_letter),
    single("procman_journal_bytes", "Size of the journal file.", state.journal_bytes),
    single("procman_journal_sequence", "Sequence number of the last event record.", state.seq),
  }
end

--- The oldest time among dead letters (nil if none has one).
function M.oldest_time(letters)
  local oldest
  for _, d in ipairs(letters) do
    if type(d.time) == "number" and (oldest == nil or d.time < oldest) then oldest = d.time end
  end
  return oldest
end

-- ---------------------------------------------------------------------
-- The collector: counters and histograms, fed by hooks
-- ---------------------------------------------------------------------

local Collector = {}
Collector.__index = Collector

-- A labelled family kept as { [key] = sample }, key the label values.
local function family(name, help, type, buckets)
  return { name = name, help = help, type = type, buckets = buckets, by_key = {}, order = {} }
end

-- (At most two label values, a and b: the key is built without a table,
-- as this runs for every event.)
local function sample(f, a, b)
  local key = b == nil and (a or "") or a .. "\0" .. b
  local s = f.by_key[key]
  if s == nil then
    local labels, names = {}, f.label_names
    for i, v in ipairs { a, b } do labels[#labels + 1], labels[#labels + 2] = names[i], v end
    s = { labels = labels, value = 0 }
    if f.buckets then
      s.buckets, s.counts, s.sum, s.count = f.buckets, {}, 0, 0
      for i = 1, #f.buckets do s.counts[i] = 0 end
    end
    f.by_key[key] = s
    f.order[#f.order + 1] = s
  end
  return s
end

local function observe(s, v)
  s.sum, s.count = s.sum + v, s.count + 1
  local buckets = s.buckets
  for i = 1, #buckets do
    if v <= buckets[i] then
      s.counts[i] = s.counts[i] + 1
      return
    end
  end
end

local function counter(name, help, label_names)
  local f = family(name, help, "counter")
  f.label_names = label_names
  return f
end

local function histogram(name, help, buckets, label_names)
  local f = family(name, help, "histogram", buckets)
  f.label_names = label_names
  return f
end

local WF = { "workflow" }

--- collector() -> an object with .hooks (for the router) and :families().
function M.collector()
  local c = setmetatable({
    handled = counter("procman_events_handled_total", "Events applied by flows.", WF),
    handle_seconds = histogram("procman_event_handle_seconds",
                               "Time to handle an event: handlers, journal append (and fsync), outbox.",
                               HANDLE_BUCKETS, WF),
    commands = counter("procman_commands_emitted_total", "Commands put in the outbox.", WF),
    started = counter("procman_flows_started_total", "Flows started.", WF),
    completed = counter("procman_flows_completed_total", "Flows completed, by final status.",
                        { "workflow", "status" }),
    parked = counter("procman_flows_parked_total", "Times a flow was parked by a failing handler.", WF),
    resumed = counter("procman_flows_resumed_total", "Parked flows resumed with nothing left parked.", WF),
    fired = counter("procman_timers_fired_total", "Timers fired.", WF),
    lateness = histogram("procman_timer_lateness_seconds", "How long after its due time a timer fired.",
                         LATENESS_BUCKETS, WF),
    dead = counter("procman_dead_letters_total", "Dead letters made.", {}),
    ignored = counter("procman_events_ignored_total",
                      "Events (or late parts of events) dropped by on_unknown or on_late = ignore.",
                      { "kind" }),
    appends = counter("procman_journal_appends_total", "Records appended to the journal.", {}),
    bytes = counter("procman_journal_appended_bytes_total", "Bytes appended to the journal.", {}),
    fsync = histogram("procman_journal_fsync_seconds", "Time of each fdatasync of the journal.",
                      FSYNC_BUCKETS, {}),
  }, Collector)
  local function add(f, n, a, b)
    local s = sample(f, a, b)
    s.value = s.value + n
  end
  c.hooks = {
    event_handled = function(workflow, _, _, seconds)
      add(c.handled, 1, workflow)
      observe(sample(c.handle_seconds, workflow), seconds)
    end,
    command_emitted = function(envelope) add(c.commands, 1, envelope.workflow) end,
    flow_started = function(workflow) add(c.started, 1, workflow) end,
    flow_completed = function(workflow, _, status) add(c.completed, 1, workflow, tostring(status)) end,
    flow_parked = function(workflow) add(c.parked, 1, workflow) end,
    flow_resumed = function(workflow) add(c.resumed, 1, workflow) end,
    timer_fired = function(workflow, _, _, lateness)
      add(c.fired, 1, workflow)
      observe(sample(c.lateness, workflow), math.max(0, lateness))
    end,
    dead_letter = function() add(c.dead, 1) end,
    event_ignored = function(kind) add(c.ignored, 1, kind) end,
    journal_append = function(_, bytes)
      add(c.appends, 1)
      add(c.bytes, bytes)
    end,
    journal_fsync = function(seconds) observe(sample(c.fsync), seconds) end,
  }
  return c
end

local ORDER = { "handled", "handle_seconds", "commands", "started", "completed", "parked", "resumed",
                "fired", "lateness", "dead", "ignored", "appends", "bytes", "fsync" }

--- collector:families(workflows) -> the counters and histograms. Counters
-- of each workflow are there from the start (at 0), so that rate() and
-- alerts see them before the first event.
function Collector:families(workflows)
  for _, w in ipairs(workflows) do
    for _, key in ipairs { "handled", "handle_seconds", "commands", "started", "parked", "resumed", "fired",
                           "lateness" } do
      sample(self[key], w)
    end
  end
  sample(self.fsync)
  sample(self.dead)
  sample(self.ignored, "unknown")
  sample(self.ignored, "late")
  sample(self.appends)
  sample(self.bytes)
  local out = {}
  for i, key in ipairs(ORDER) do
    local f = self[key]
    out[i] = { name = f.name, help = f.help, type = f.type, samples = f.order }
  end
  return out
end

return M
