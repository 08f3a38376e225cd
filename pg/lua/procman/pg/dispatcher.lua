--- procman.pg.dispatcher: gateways taking commands from the outbox.
--
-- Several dispatchers (threads, processes, machines) share the outbox:
-- each claims a batch of rows with FOR UPDATE SKIP LOCKED, so no two take
-- the same command, calls fn for each, and marks them dispatched in the
-- same transaction. A dispatcher that dies mid-batch leaves its rows
-- undispatched (its transaction rolls back): they are sent again, with
-- the same command ids (at-least-once).
local procman = require "procman"
local db = require "procman.pg.db"

local M = {}

local function claim_and_send(conn, fn, limit)
  local rows = db.exec(conn, "SELECT command_id, envelope FROM procman_outbox WHERE NOT dispatched "
                             .. "ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED", limit)
  local sent, err = 0, nil
  for _, row in ipairs(rows) do
    local envelope = procman.decode(row.envelope)
    local ok, why = pcall(fn, envelope.command, envelope)
    if not ok then
      err = why
      break
    end
    db.exec(conn, "UPDATE procman_outbox SET dispatched = true, dispatched_at = clock_timestamp() "
                  .. "WHERE command_id = $1", row.command_id)
    sent = sent + 1
  end
  return sent, err
end

--- pg.dispatch(conn, fn[, limit]) -> count[, error]: fn(command, envelope)
-- for up to 'limit' (default 100) pending commands in outbox order, each
-- marked dispatched once fn returns; stops at the first error, which is
-- returned second (the commands before it stay dispatched).
function M.dispatch(conn, fn, limit)
  if type(fn) ~= "function" then error("procman.pg.dispatch: needs a function(command, envelope)", 2) end
  limit = limit or 100
  return db.transaction(conn, claim_and_send, fn, limit)
end

return M
