--- procman.timers: time as injected events.
--
-- A handler never reads a clock. It asks for a future stimulus by returning
-- a directive among its commands:
--
--   return { procman.after(600, { event_type = "file_timed_out", file = f }, "timeout:" .. f) }
--
-- The directives are data (command tables whose command_type is reserved:
-- "procman.after", "procman.at", "procman.cancel"), so they are journaled
-- and compared on replay like any command. The runtime (the router, or
-- procman.testing) takes them out of the commands, keeps them as timers of
-- the flow, and injects each timer's event when time, advanced by the
-- caller, reaches it.
--
-- This module builds and checks directives, and keeps the timers of one
-- flow: an array of { key = k|nil, due = t, event = e, seq = s, index = i },
-- where (seq, index) names the directive that set the timer (the sequence
-- number of the event that returned it, its position in the commands), so
-- timers are ordered and identified the same way live and on replay.
local copy = require("procman.core").copy

local M = {}

local AFTER, AT, CANCEL = "procman.after", "procman.at", "procman.cancel"
local DIRECTIVE = { [AFTER] = true, [AT] = true, [CANCEL] = true }

local function finite(x)
  return type(x) == "number" and x == x and x ~= math.huge and x ~= -math.huge
end

local function describe(v)
  if type(v) == "string" then return string.format("%q", v) end
  return tostring(v)
end

-- Why a directive is malformed, or nil.
local function problem(d)
  local kind, key = d.command_type, d.key
  if key ~= nil and (type(key) ~= "string" or key == "") then
    return string.format("%s: key must be a non-empty string, got %s", kind, describe(key))
  end
  if kind == CANCEL then
    if key == nil then return "procman.cancel: needs the key of the timer to cancel" end
    return nil
  end
  if kind == AFTER and not (finite(d.seconds) and d.seconds >= 0) then
    return string.format("procman.after: seconds must be a finite number >= 0, got %s",
                         describe(d.seconds))
  end
  if kind == AT and not finite(d.at) then
    return string.format("procman.at: time must be a finite number, got %s", describe(d.at))
  end
  local e = d.event
  if type(e) ~= "table" or type(rawget(e, "event_type")) ~= "string" or e.event_type == "" then
    return string.format("%s: event must be a table with a non-empty string event_type", kind)
  end
  return nil
end

local function build(d)
  local why = problem(d)
  if why then error(why, 3) end
  return d
end

--- procman.after(seconds, event[, key]) -> a directive: inject 'event' into
-- this flow 'seconds' from now (now: the time being ticked, else the clock).
function M.after(seconds, event, key)
  return build { command_type = AFTER, seconds = seconds, event = event, key = key }
end

--- procman.at(time, event[, key]) -> a directive: inject 'event' at 'time'.
function M.at(time, event, key)
  return build { command_type = AT, at = time, event = event, key = key }
end

--- procman.cancel(key) -> a directive: drop this flow's timer 'key'.
function M.cancel(key)
  return build { command_type = CANCEL, key = key }
end

--- Is this command a timer directive?
function M.is_directive(command)
  return DIRECTIVE[rawget(command, "command_type")] == true
end

--- split(commands) -> plain commands, directives (nil when there are none),
-- or raises with what is wrong with a directive. Most handlers return no
-- directives: then 'commands' itself comes back. Raw access, as pm.c
-- checked the list: a metatable on it (__len, __index) means nothing.
function M.split(commands)
  local first, n = nil, rawlen(commands)
  for i = 1, n do
    if DIRECTIVE[rawget(rawget(commands, i), "command_type")] then first = i break end
  end
  if first == nil then return commands, nil end
  local plain, directives = {}, {}
  for i = 1, first - 1 do plain[i] = rawget(commands, i) end
  for i = first, n do
    local c = rawget(commands, i)
    if DIRECTIVE[rawget(c, "command_type")] then
      local why = problem(c)
      if why then error(string.format("commands[%d]: %s", i, why), 0) end
      directives[#directives + 1] = c
    else
      plain[#plain + 1] = c
    end
  end
  return plain, directives
end

--- Do these directives need the current time (an 'after' among them)?
function M.need_now(directives)
  for _, d in ipairs(directives) do
    if d.command_type == AFTER then return true end
  end
  return false
end

-- now + seconds, or nil when integers would wrap around (an integer
-- clock and procman.after(math.maxinteger, ...)): never a due time in the past.
local function after_due(now, seconds)
  if math.type(now) == "integer" and math.type(seconds) == "integer"
     and seconds > 0 and now > math.maxinteger - seconds then
    return nil
  end
  return now + seconds
end

--- check_due(directives, now) -> nil, or what is wrong: an 'after' whose
-- due time cannot be represented at 'now'.
function M.check_due(directives, now)
  for _, d in ipairs(directives) do
    if d.command_type == AFTER and after_due(now, d.seconds) == nil then
      return string.format("procman.after(%d): the due time overflows the integer clock (now %d)",
                           d.seconds, now)
    end
  end
  return nil
end

local function remove_key(list, key)
  for i = #list, 1, -1 do
    if list[i].key == key then table.remove(list, i) end
  end
end

--- apply(list, directives, now, seq) -> list: the flow's timers after the
-- directives, in order (a key replaces the earlier timer with that key).
-- Each timer keeps its own copy of the event.
-- 'list' may be nil (no timers yet); an empty result is nil.
function M.apply(list, directives, now, seq)
  list = list or {}
  for i, d in ipairs(directives) do
    if d.key ~= nil then remove_key(list, d.key) end
    if d.command_type ~= CANCEL then
      local due = d.command_type == AT and d.at or after_due(now, d.seconds)
      if due == nil then error(M.check_due({ d }, now), 0) end  -- callers check first (router)
      list[#list + 1] = { key = d.key, due = due, event = copy(d.event), seq = seq, index = i }
    end
  end
  if #list == 0 then return nil end
  return list
end

--- remove(list, seq, index) -> list without the timer set by (seq, index)
-- (nil when empty), and whether it was there.
function M.remove(list, seq, index)
  if list == nil then return nil, false end
  for i, t in ipairs(list) do
    if t.seq == seq and t.index == index then
      table.remove(list, i)
      if #list == 0 then return nil, true end
      return list, true
    end
  end
  return list, false
end

--- find(list, seq, index) -> the timer set by (seq, index), or nil.
function M.find(list, seq, index)
  for _, t in ipairs(list or {}) do
    if t.seq == seq and t.index == index then return t end
  end
  return nil
end

--- Timer order: due time, then the order they were set in.
function M.before(a, b)
  if a.due ~= b.due then return a.due < b.due end
  if a.seq ~= b.seq then return a.seq < b.seq end
  return a.index < b.index
end

--- due(list, now, out) -> out: the timers of 'list' due at 'now', appended
-- (not sorted: the caller sorts what it gathered from many flows).
function M.due(list, now, out)
  if list then
    for _, t in ipairs(list) do
      if t.due <= now then out[#out + 1] = t end
    end
  end
  return out
end

return M
