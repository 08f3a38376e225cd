--- procman.pg.dispatcher: gateways taking commands from the outbox.
--
-- Several dispatchers (threads, processes, machines) share the outbox:
-- each claims a batch of rows with FOR UPDATE SKIP LOCKED, so no two take
-- the same command, calls fn for each, and marks them dispatched in the
-- same transaction. A dispatcher that dies mid-batch, or loses its
-- connection, leaves its rows undispatched (its transaction rolls back):
-- they are sent again, with the same command ids (at-least-once).
local procman = require "procman"
local db = require "procman.pg.db"
local pgcore = require "procman.pg.core"
local message = require "procman.message"

local M = {}

local function claim_and_send(conn, fn, limit)
  local rows = db.exec(conn, "SELECT seq, envelope FROM procman_outbox WHERE NOT dispatched "
                             .. "ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED", limit)
  local sent, err, done = 0, nil, {}
  for _, row in ipairs(rows) do
    local envelope = procman.decode(row.envelope)
    local ok, why = pcall(fn, envelope.command, envelope)
    if not ok then
      err = message(why)
      break
    end
    done[#done + 1] = row.seq
    sent = sent + 1
  end
  if sent > 0 then  -- one statement for the batch
    db.exec(conn, "UPDATE procman_outbox SET dispatched = true, dispatched_at = clock_timestamp() "
                  .. "WHERE seq = ANY($1::bigint[])", "{" .. table.concat(done, ",") .. "}")
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
  local ok, sent, err = pcall(db.transaction, conn, claim_and_send, fn, limit)
  if not ok then error(tostring(sent), 0) end
  return sent, err
end

local Dispatcher = {}
Dispatcher.__index = Dispatcher

--- pg.dispatcher { conninfo, send = fn(command, envelope), limit = 100,
--   warn = fn(message), reconnect = { initial = 0.05, max = 5, attempts } }
-- -> a dispatcher that reconnects with backoff when the database goes away.
function M.new(opts)
  if type(opts) ~= "table" or type(opts.conninfo) ~= "string" or type(opts.send) ~= "function" then
    error("procman.pg.dispatcher: needs { conninfo = string, send = function(command, envelope) }", 2)
  end
  local r = opts.reconnect or {}
  return setmetatable({ conninfo = opts.conninfo, send = opts.send, limit = opts.limit or 100,
                        warn = opts.warn, initial = r.initial or 0.05, max = r.max or 5,
                        attempts = r.attempts, reconnects = 0 }, Dispatcher)
end

function Dispatcher:report(text)
  if self.warn then self.warn(text) else warn("procman.pg.dispatcher: ", text) end
end

-- Connect, retrying with backoff; nil, message once it gives up.
function Dispatcher:connect()
  return db.with_backoff("procman.pg.dispatcher", self, function()
    local conn, err = pgcore.connect(self.conninfo)
    self.conn = conn
    return conn ~= nil, err
  end, function(text) self:report(text) end)
end

--- d:step() -> commands sent (0: none pending), or nil, message. A lost
-- connection is reopened (with backoff) before the next batch.
function Dispatcher:step()
  if self.conn == nil or not self.conn:alive() then
    if self.conn then
      self.conn:close()
      self.reconnects = self.reconnects + 1
    end
    self.conn = nil
    local ok, err = self:connect()
    if not ok then return nil, err end
  end
  local ok, sent, err = pcall(M.dispatch, self.conn, self.send, self.limit)
  if not ok then
    self:report(tostring(sent))
    return nil, tostring(sent)
  end
  if err then self:report(err) end
  return sent, err
end

function Dispatcher:close()
  if self.conn then self.conn:close() end
  self.conn = nil
end

return M
