--- procman.operations: what an operator does with parked flows and dead
-- letters, as text. Shared by the commands (procman parked, resume, skip,
-- dead-letters, retry-dead-letter, drop-dead-letter) and the REPL's dot
-- commands (.parked, .resume, .skip, .dead, .retry, .drop), so both say
-- the same thing the same way.
local pretty = require "procman.pretty"

local M = {}

local ONE_LINE = { width = 1e9 }

--- A flow id as the commands print it: an integer as its digits, a
-- string as it is, but quoted when it would read as a number (the integer
-- 7 and the string "7" are two flows), is empty, or starts with a quote.
function M.flow_text(id)
  if type(id) == "string" and (tonumber(id) ~= nil or id == "" or id:sub(1, 1) == '"') then
    return '"' .. id .. '"'
  end
  return tostring(id)
end

--- A flow id from a command line, flow_text's inverse: a quoted text is
-- the string inside the quotes; digits are an integer; anything else is
-- the string itself.
function M.flow_id(text)
  local quoted = text:match('^"(.*)"$')
  if quoted then return quoted end
  return math.tointeger(tonumber(text)) or text
end

--- "workflow/flow", the flow as flow_text shows it.
function M.flow_label(workflow, flow_id)
  return workflow .. "/" .. M.flow_text(flow_id)
end
local flow_label = M.flow_label

--- A dead letter's time: the router's clock (os.time by default), shown
-- as UTC; anything else as it is.
function M.time_text(t)
  if math.type(t) == "integer" or (type(t) == "number" and t == math.floor(t)) then
    return os.date("!%Y-%m-%dT%H:%M:%SZ", math.tointeger(t))
  end
  return t == nil and "-" or tostring(t)
end

--- The parked flows (r:parked() or journal_view.parked()), one block each.
function M.parked_text(list)
  if #list == 0 then return "no parked flows" end
  local lines = {}
  for _, p in ipairs(list) do
    lines[#lines + 1] = string.format("%s  %d event%s held", flow_label(p.workflow, p.flow), p.held,
                                      p.held == 1 and "" or "s")
    lines[#lines + 1] = "  error: " .. tostring(p.error)
    lines[#lines + 1] = "  first: " .. pretty.format(p.event, ONE_LINE)
  end
  return table.concat(lines, "\n")
end

--- The dead letters (r:dead_letters() or journal_view.dead_letters()).
function M.dead_letters_text(list)
  if #list == 0 then return "no dead letters" end
  local lines = {}
  for _, d in ipairs(list) do
    lines[#lines + 1] = string.format("#%s  %s  %s", tostring(d.id or d.position), M.time_text(d.time),
                                      tostring(d.event.event_type))
    lines[#lines + 1] = "  reason: " .. tostring(d.error)
    lines[#lines + 1] = "  event:  " .. pretty.format(d.event, ONE_LINE)
  end
  return table.concat(lines, "\n")
end

--- resume(r, workflow, flow_id, skip) -> ok, text: r:resume (or r:skip).
-- ok is false when the flow is parked again (text says why); nil, message
-- when the journal failed.
function M.resume(r, workflow, flow_id, skip)
  local envelopes, err = (skip and r.skip or r.resume)(r, workflow, flow_id)
  if envelopes == nil then return nil, err end
  local did = skip and "skipped the first parked event of" or "resumed"
  local counts = string.format("%d command%s emitted, %d pending", #envelopes,
                               #envelopes == 1 and "" or "s", #r:pending())
  if err then
    return false, string.format("%s %s, which is parked again: %s (%s)", did,
                                flow_label(workflow, flow_id), err, counts)
  end
  return true, string.format("%s %s: %s", did, flow_label(workflow, flow_id), counts)
end

--- retry(r, id) -> text, or nil, message (journal): r:retry_dead_letter.
function M.retry(r, id)
  local envelopes, err = r:retry_dead_letter(id)
  if envelopes == nil then return nil, err end
  return string.format("retried dead letter #%d: %d command%s emitted, %d dead letters left", id,
                       #envelopes, #envelopes == 1 and "" or "s", #r:dead_letters())
end

--- drop(r, id) -> text, or nil, message (journal): r:drop_dead_letter.
function M.drop(r, id)
  local ok, err = r:drop_dead_letter(id)
  if not ok then return nil, err end
  return string.format("dropped dead letter #%d; %d left", id, #r:dead_letters())
end

return M
