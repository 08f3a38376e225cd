--- procman.hooks: the names of the router's hooks, checked, and the
-- table the router calls them through. A router with no hooks (and no
-- metrics) has no such table, so its hot path pays one nil test.
--
--   event_handled(workflow, flow, event_type, seconds)  a flow applied an event
--   command_emitted(envelope)                            a command went to the outbox
--   flow_started(workflow, flow)
--   flow_completed(workflow, flow, status)
--   flow_parked(workflow, flow, error)                   (again, when a retry fails)
--   flow_resumed(workflow, flow)                         no parked event is left
--   timer_fired(workflow, flow, event_type, lateness)    seconds past its due time
--   dead_letter(letter)                                  { id, event, error, time }
--   event_ignored(kind, event_type, reason)              on_unknown/on_late said "ignore"
--                                                        (kind "unknown" or "late"), or the late
--                                                        part of an event live flows took
--   journal_append(record_type, bytes)                   bytes written, framing included
--   journal_fsync(seconds)                               one fdatasync of the journal
--
-- Hooks run after the change they report is journaled and applied, never
-- during recovery. A hook that raises is reported through the router's
-- warn and changes nothing. Arguments are the router's own values: a hook
-- must not change them.
local message = require "procman.message"

local M = {}

M.NAMES = { "event_handled", "command_emitted", "flow_started", "flow_completed", "flow_parked",
            "flow_resumed", "timer_fired", "dead_letter", "event_ignored", "journal_append",
            "journal_fsync" }

local KNOWN = {}
for _, name in ipairs(M.NAMES) do KNOWN[name] = true end

--- check(name, fn): raise unless name is a hook and fn a function (or nil).
function M.check(name, fn, who)
  if not KNOWN[name] then
    error(string.format("%s: unknown hook %s (hooks: %s)", who, tostring(name),
                        table.concat(M.NAMES, ", ")), 0)
  end
  if fn ~= nil and type(fn) ~= "function" then
    error(string.format("%s: hook %s must be a function, got %s", who, name, type(fn)), 0)
  end
end

--- check_all(given, who) -> a plain copy of a table of hooks.
function M.check_all(given, who)
  if type(given) ~= "table" then
    error(string.format("%s: hooks must be a table, got %s", who, type(given)), 0)
  end
  local out = {}
  for name, fn in next, given do
    M.check(name, fn, who)
    out[name] = fn
  end
  return out
end

--- call(owner, h, name, ...): call hook 'name' of h (owner.hooks, not
-- nil) with the arguments. One that raises is reported (owner.warn) and
-- changes nothing: what it reports is done already.
function M.call(owner, h, name, ...)
  local fn = h[name]
  if fn == nil then return end
  local ok, err = pcall(fn, ...)
  if not ok then
    owner.warn(string.format("procman.router: hook %s failed: %s", name, message(err)))
  end
end

--- compose(a, b) -> the hooks of both (a's first), or nil when neither
-- has any.
function M.compose(a, b)
  local out, any = {}, false
  for _, name in ipairs(M.NAMES) do
    local f, g = a and a[name], b and b[name]
    if f and g then
      out[name] = function(...) f(...) g(...) end
    else
      out[name] = f or g
    end
    any = any or out[name] ~= nil
  end
  return any and out or nil
end

return M
