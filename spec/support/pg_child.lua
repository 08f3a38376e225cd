--- Child processes for spec/pg_spec.lua (and bench/pg_bench.lua).
--   lua5.4 spec/support/pg_child.lua producer CONNINFO FIRST LAST SEED
--   lua5.4 spec/support/pg_child.lua worker CONNINFO PARTITIONS
--   lua5.4 spec/support/pg_child.lua dispatcher CONNINFO OUTFILE
--   lua5.4 spec/support/pg_child.lua append CONNINFO EVENT_ID
package.path = "lua/?.lua;lua/?/init.lua;pg/lua/?.lua;pg/lua/?/init.lua;./?.lua;" .. package.path
package.cpath = "build/?.so;" .. package.cpath

local pg = require "procman.pg"
local batch = require "procman.workflows.batch"
local order = require "procman.workflows.order"

local events_of = require "spec.support.pg_workload"

local role, conninfo = arg[1], arg[2]

local conn = assert(pg.connect(conninfo))

if role == "producer" then
  local first, last, seed = tonumber(arg[3]), tonumber(arg[4]), tonumber(arg[5])
  for i = first, last do
    for k, e in ipairs(events_of(i, seed)) do
      pg.append(conn, e)
      if k == 1 and i % 7 == 0 then pg.append(conn, e) end  -- a producer retrying: a duplicate
    end
  end
elseif role == "worker" then
  local w = pg.worker { conninfo = conninfo, workflows = { batch, order }, partitions = tonumber(arg[3]) }
  w:run { idle = 0.02, on_error = function(err) io.stderr:write(err, "\n") end }
elseif role == "dispatcher" then
  local out = assert(io.open(arg[3], "w"))
  while true do
    local n = pg.dispatch(conn, function(_, envelope) out:write(envelope.id, "\n") end, 20)
    out:flush()
    if n == 0 then break end
  end
  out:close()
elseif role == "append" then
  print(pg.append(conn, { event_type = "batch_created", batch_id = arg[3], event_id = arg[3], files = {} }))
end
conn:close()
