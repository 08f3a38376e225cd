--- procman.pg: procman's flows over PostgreSQL, for many worker processes
-- on many machines. The embedded journal stays the default; this is the
-- same model, shared. docs/postgres.md is the manual.
--
--   local pg = require "procman.pg"
--   pg.migrate(conninfo)                                  -- create the tables
--   local conn = assert(pg.connect(conninfo))
--   pg.append(conn, event)                                -- producers; idempotent on event_id
--   pg.append_all(conn, { event, ... })                   -- several, one round trip
--   local w = pg.worker { conninfo = conninfo, workflows = { batch, order }, partitions = 16 }
--   while true do w:step() w:tick() end                   -- workers
--   pg.dispatch(conn, function(command, envelope) ... end) -- gateways
local core = require "procman.pg.core"
local schema = require "procman.pg.schema"
local db = require "procman.pg.db"

local M = {}

local function fail(fmt, ...)
  error("procman.pg: " .. string.format(fmt, ...), 3)
end

--- pg.connect(conninfo) -> connection, or nil, message.
function M.connect(conninfo)
  if type(conninfo) ~= "string" then fail("conninfo must be a string, got %s", type(conninfo)) end
  return core.connect(conninfo)
end

M.transaction = db.transaction

--- pg.migrate(conninfo | conn) -> the schema version: create the tables
-- in one transaction (concurrent migrations serialize on an advisory
-- lock). A store written by another schema version is refused, not misread.
function M.migrate(target)
  local conn, opened = db.connection(target, "migrate")
  local ok, err = pcall(db.transaction, conn, function(c)
    db.exec(c, "SELECT pg_advisory_xact_lock(5164017)")  -- one migration at a time
    local v = schema.stored_version(c)
    if v == schema.VERSION then return end
    if v ~= nil and v ~= 0 then schema.refuse(v) end
    assert(c:script("CREATE TABLE IF NOT EXISTS procman_schema (version integer NOT NULL)"))
    local done, why = c:script(schema.ddl)
    if not done then error("procman.pg: creating the tables failed: " .. why, 0) end
    db.exec(c, "DELETE FROM procman_schema")
    db.exec(c, "INSERT INTO procman_schema (version) VALUES ($1)", schema.VERSION)
  end)
  if opened then conn:close() end
  if not ok then error(err, 0) end
  return schema.VERSION
end

M.check_schema = schema.check

local producer = require "procman.pg.producer"
M.append, M.append_all = producer.append, producer.append_all
local dispatcher = require "procman.pg.dispatcher"
M.dispatch, M.dispatcher = dispatcher.dispatch, dispatcher.new
M.worker = require("procman.pg.worker").new

local read = require "procman.pg.read"
M.flow, M.flows, M.outbox, M.timers, M.parked, M.dead_letters =
  read.flow, read.flows, read.outbox, read.timers, read.parked, read.dead_letters

return M
