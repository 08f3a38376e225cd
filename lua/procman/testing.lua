--- procman.testing: given / when / then for workflows.
--
-- Law: never test internal state. A scenario feeds a flow events and
-- checks only what comes out: the commands (timer directives included, as
-- the handler returned them) or the error.
--
--   local given = require("procman.testing").given
--   given(batch, { { event_type = "batch_created", files = { "a" }, file_timeout = 60 } })
--     :when { event_type = "file_processed", file = { id = "a", status = "error" } }
--     :expect { { command_type = "process_file", file = "a", attempt = 2 }, ... }
--     :after(60)                       -- a fake clock: fires the timers due by then
--     :expect { ... }
--
-- A failed expectation raises with a readable diff of the expected and
-- actual commands, at the line of that expectation; under busted it counts
-- as a failure, not an error (procman.expectation). Time starts at 0 (or
-- opts.now) and moves only with :after(seconds).
local core = require "procman.core"
local pretty = require "procman.pretty"
local timers = require "procman.timers"
local workflow = require "procman.workflow"
local message = require "procman.message"
local expectation = require "procman.expectation"

local M = {}

local Scenario = {}
Scenario.__index = Scenario
Scenario.__name = "procman.testing scenario"

local function fail(fmt, ...)
  error("procman.testing: " .. string.format(fmt, ...), 3)
end

-- The flow id: opts.flow, else the correlation field of the first event
-- the flow handles, else "test".
local function flow_id_for(spec, first, opts)
  if opts.flow ~= nil then return opts.flow end
  local c = spec.correlate
  if first ~= nil and type(c) == "string" and first[c] ~= nil then return first[c] end
  if first ~= nil and type(c) == "function" then
    local ok, id = pcall(c, first)
    if ok and id ~= nil then return id end
  end
  return "test"
end

-- Handle one event: the commands, with the flow's timers updated from the
-- directives among them. Raises what the flow raises.
local function handle(self, event)
  if self.pm == nil then
    if type(event) ~= "table" then error("the event must be a table, got " .. type(event), 0) end
    self.pm = core.new(self.spec, flow_id_for(self.spec, event, self.opts))
  end
  local commands = self.pm:handle(event)
  local _, directives = timers.split(commands)
  self.seq = self.seq + 1
  if directives then self.timers = timers.apply(self.timers, directives, self.now, self.seq) end
  return commands
end

-- Run fn(self) and keep what it produced as the outcome to check.
local function outcome(self, fn, ...)
  local ok, result = pcall(fn, self, ...)
  if ok then
    self.commands, self.error = result, nil
  else
    self.commands, self.error = nil, message(result)
  end
  return self
end

--- given(wf, events[, opts]) -> a scenario: a new flow of 'wf' that has
-- handled 'events'. opts: flow (the flow id; default the correlation field
-- of the first event it handles, else "test"), now (the clock's start;
-- default 0).
function M.given(wf, events, opts)
  local spec = workflow.spec(wf)
  if spec == nil then fail("given needs a workflow, got %s", type(wf)) end
  events, opts = events or {}, opts or {}
  if type(events) ~= "table" then fail("given needs an array of events, got %s", type(events)) end
  local self = setmetatable({ spec = spec, opts = opts, seq = 0, now = opts.now or 0,
                              sites = expectation.sites() }, Scenario)
  for i, event in ipairs(events) do
    local ok, err = pcall(handle, self, event)
    if not ok then fail("given event #%d (%s) failed: %s", i, tostring(event.event_type), message(err)) end
  end
  self.commands = {}
  return self
end

--- scenario:when(event) -> scenario: the flow handles 'event'.
function Scenario:when(event)
  return outcome(self, handle, event)
end

-- Fire every timer due by self.now, in due order (see procman.router's tick).
local function fire_due(self)
  local due = timers.due(self.timers, self.now, {})
  table.sort(due, timers.before)
  local out = {}
  for _, t in ipairs(due) do
    self.timers = timers.remove(self.timers, t.seq, t.index)
    for _, c in ipairs(handle(self, t.event)) do out[#out + 1] = c end
  end
  return out
end

--- scenario:after(seconds) -> scenario: time moves on; the events of the
-- timers due by then are handled, and their commands are the outcome.
function Scenario:after(seconds)
  if type(seconds) ~= "number" or seconds ~= seconds or seconds < 0 then
    fail("after needs a number of seconds >= 0, got %s", tostring(seconds))
  end
  self.now = self.now + seconds
  return outcome(self, fire_due)
end

local function lines(commands)
  local out = {}
  for i, c in ipairs(commands) do
    out[i] = pretty.format(c, { width = 1e9 })
  end
  return out
end

-- A readable diff of two command lists, by position.
local function diff(expected, actual)
  local e, a = lines(expected), lines(actual)
  local out = { string.format("commands differ (expected %d, got %d):", #e, #a) }
  for i = 1, math.max(#e, #a) do
    if e[i] == a[i] then
      out[#out + 1] = string.format("    [%d] %s", i, e[i])
    else
      if e[i] then out[#out + 1] = string.format("  - [%d] %s", i, e[i]) end
      if a[i] then out[#out + 1] = string.format("  + [%d] %s", i, a[i]) end
    end
  end
  out[#out + 1] = "(- expected, + actual)"
  return table.concat(out, "\n")
end

--- scenario:expect(commands) -> scenario: the last outcome was exactly
-- these commands (in order; directives included).
function Scenario:expect(expected)
  local site = self.sites:here()
  if type(expected) ~= "table" then fail("expect needs an array of commands, got %s", type(expected)) end
  if self.error then
    expectation.fail(site, string.format("expected commands, but the flow raised: %s\nexpected:\n%s",
                                         self.error, table.concat(lines(expected), "\n")))
  end
  if core.encode(expected) ~= core.encode(self.commands) then
    expectation.fail(site, diff(expected, self.commands))
  end
  return self
end

--- scenario:expect_error(text) -> scenario: the last outcome was an error
-- whose message contains 'text' (plain text, not a pattern).
function Scenario:expect_error(text)
  local site = self.sites:here()
  if type(text) ~= "string" then fail("expect_error needs the text of the error, got %s", type(text)) end
  if not self.error then
    expectation.fail(site, string.format("expected an error containing %q, but the flow returned:\n%s",
                                         text, table.concat(lines(self.commands), "\n")))
  end
  if not self.error:find(text, 1, true) then
    expectation.fail(site, string.format("expected an error containing %q, got: %s", text, self.error))
  end
  return self
end

--- scenario:flow() -> the procman.pm under test (for what the commands do
-- not show: its status, whether it is done), or nil before any event.
function Scenario:flow()
  return self.pm
end

return M
