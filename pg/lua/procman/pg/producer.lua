--- procman.pg.producer: appending events to the shared event store.
--
-- The pitfall of event stores on a sequence: positions are handed out at
-- insert, but transactions commit in their own order, so a reader that
-- reads "position > the last one I saw" can see position 10 before 9 is
-- committed, move past 9, and never see it. Here every append takes one
-- transaction-scoped advisory lock before it gets its position, and holds
-- it until its transaction ends: positions become visible in order, and
-- readers can never skip one. The price is that appends are serialized
-- (one commit at a time): docs/postgres.md has the figures.
local procman = require "procman"
local db = require "procman.pg.db"
local pgcore = require "procman.pg.core"

local M = {}

M.APPEND_LOCK = 5164020  -- the advisory lock that puts appends in order
M.CHANNEL = "procman_events"  -- NOTIFYed by every append at its commit: idle workers wake

--- pg.append(conn, event) -> position, or false when an event with that
-- event_id was appended already (at-least-once producers may retry).
-- The event must have a non-empty string event_type and an event_id
-- (string or integer): the store deduplicates on it.
function M.append(conn, event)
  if type(event) ~= "table" then
    error("procman.pg.append: event must be a table, got " .. type(event), 2)
  end
  local event_type, event_id = rawget(event, "event_type"), rawget(event, "event_id")
  if type(event_type) ~= "string" or event_type == "" then
    error("procman.pg.append: event.event_type must be a non-empty string, got " .. type(event_type), 2)
  end
  if not (math.type(event_id) == "integer" or (type(event_id) == "string" and event_id ~= "")) then
    error("procman.pg.append: event.event_id must be a non-empty string or an integer (the store "
          .. "deduplicates on it), got " .. type(event_id), 2)
  end
  local ok, payload = pcall(procman.encode, event)
  if not ok then error("procman.pg.append: event is not data: " .. payload, 2) end
  -- (a notification is sent at the commit, once per transaction and channel)
  local rows = db.exec(conn, "WITH serial AS (SELECT pg_advisory_xact_lock($4)), "
                             .. "added AS (INSERT INTO procman_events (event_id, event_type, payload) "
                             .. "SELECT $1, $2, $3::bytea FROM serial ON CONFLICT (event_id) DO NOTHING "
                             .. "RETURNING position) "
                             .. "SELECT position, pg_notify($5, '') FROM added",
                       tostring(event_id), event_type, pgcore.bytes(payload), M.APPEND_LOCK, M.CHANNEL)
  return rows[1] and rows[1].position or false
end

return M
