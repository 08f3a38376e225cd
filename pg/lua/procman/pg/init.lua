--- procman.pg: procman's flows over PostgreSQL, for many worker processes
-- on many machines. The embedded journal stays the default; this is the
-- same model, shared. docs/postgres.md is the manual.
--
--   local pg = require "procman.pg"
--   pg.migrate(conninfo)                                  -- create or upgrade the tables
--   local conn = assert(pg.connect(conninfo))
--   pg.append(conn, event)                                -- producers; idempotent on event_id
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

--- pg.migrate(conninfo | conn) -> the schema version: create the tables,
-- or upgrade them, each migration in a transaction (concurrent migrations
-- serialize on an advisory lock).
function M.migrate(target)
  local conn, opened = db.connection(target, "migrate")
  local version = db.transaction(conn, function(c)
    db.exec(c, "SELECT pg_advisory_xact_lock(5164017)")  -- one migration at a time
    assert(c:script("CREATE TABLE IF NOT EXISTS procman_schema (version integer NOT NULL)"))
    local rows = db.exec(c, "SELECT version FROM procman_schema")
    local v = rows[1] and rows[1].version or 0
    if rows[1] == nil then db.exec(c, "INSERT INTO procman_schema (version) VALUES (0)") end
    for i = v + 1, #schema.migrations do
      local ok, err = c:script(schema.migrations[i])
      if not ok then error(string.format("procman.pg: migration %d failed: %s", i, err), 0) end
      db.exec(c, "UPDATE procman_schema SET version = $1", i)
    end
    return #schema.migrations
  end)
  if opened then conn:close() end
  return version
end

M.append = require("procman.pg.producer").append
M.dispatch = require("procman.pg.dispatcher").dispatch
M.worker = require("procman.pg.worker").new

return M
