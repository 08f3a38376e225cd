--- Child processes for the procman.pg specs (and bench/pg_bench.lua).
--   lua5.4 spec/support/pg_child.lua producer CONNINFO FIRST LAST SEED
--   lua5.4 spec/support/pg_child.lua worker CONNINFO PARTITIONS
--   lua5.4 spec/support/pg_child.lua dispatcher CONNINFO OUTFILE
--   lua5.4 spec/support/pg_child.lua append CONNINFO EVENT_ID
--   lua5.4 spec/support/pg_child.lua numbered CONNINFO PREFIX COUNT   (a producer that retries
--                                                          through a lost connection)
package.path = "lua/?.lua;lua/?/init.lua;cli/lua/?.lua;workflows/lua/?.lua;pg/lua/?.lua;pg/lua/?/init.lua;./?.lua;" .. package.path
package.cpath = "build/?.so;" .. package.cpath

local pg = require "procman.pg"
local pgcore = require "procman.pg.core"
local batch = require "procman.workflows.batch"
local order = require "procman.workflows.order"

local events_of = require "spec.support.pg_workload"

local role, conninfo = arg[1], arg[2]

-- Append, reconnecting (with a pause) for as long as the database is away.
local conn
local function append(e)
  while true do
    if conn == nil or not conn:alive() then
      if conn then conn:close() end
      conn = pg.connect(conninfo)
    end
    if conn then
      local ok, position, err = pcall(pg.append, conn, e)
      if ok and position ~= nil then return position end
      if ok then error(err) end  -- refused: an id reused, a bug of the workload
      -- not the connection (it still answers): do not hide it. (libpq may
      -- report a connection alive right after the server closed it.)
      if conn:alive() and conn:exec("SELECT 1") then error(position) end
    end
    pgcore.sleep(0.05)
  end
end

if role == "producer" then
  local first, last, seed = tonumber(arg[3]), tonumber(arg[4]), tonumber(arg[5])
  for i = first, last do
    for k, e in ipairs(events_of(i, seed)) do
      append(e)
      if k == 1 and i % 7 == 0 then append(e) end  -- a producer retrying: a duplicate
    end
  end
elseif role == "worker" then
  local w = pg.worker { conninfo = conninfo, workflows = { batch, order }, partitions = tonumber(arg[3]),
                        reconnect = { initial = 0.05, max = 0.5 } }
  assert(w:run { idle = 0.02, on_error = function(err) io.stderr:write(err, "\n") end })
elseif role == "dispatcher" then
  conn = assert(pg.connect(conninfo))
  local out = assert(io.open(arg[3], "w"))
  while true do
    local n = pg.dispatch(conn, function(_, envelope) out:write(envelope.id, "\n") end, 20)
    out:flush()
    if n == 0 then break end
  end
  out:close()
elseif role == "append" then
  conn = assert(pg.connect(conninfo))
  print(pg.append(conn, { event_type = "batch_created", batch_id = arg[3], event_id = arg[3], files = {} }))
elseif role == "numbered" then
  for i = 1, tonumber(arg[4]) do
    append { event_type = "tick", n = i, source = arg[3], event_id = arg[3] .. "-" .. i }
  end
end
if conn then conn:close() end
