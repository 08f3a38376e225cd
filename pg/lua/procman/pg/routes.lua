--- procman.pg.routes: which partition an event is for, known to producers.
--
-- A flow belongs to partition hash(workflow, flow id) mod N. So that each
-- worker reads only its partitions' events (an index on (partition, xid,
-- position)), an append stores the partition of the flows the event may
-- go to. The producer has no workflow code: workers register, in
-- procman_routes, each workflow's correlation field. An event stores no
-- partition (NULL: every worker reads it) when its flows are in several
-- partitions, when a workflow's correlate is a function (it cannot be
-- registered), or when the producer appended under another generation of
-- the routes than the current one.
--
-- Each change of the routes draws a new generation and keeps the old ones
-- (history). The append statement compares the producer's generation with
-- the current one, so a producer that has not yet seen a new workflow
-- stores NULL, loses nothing, and learns the new routes from the answer.
-- One race is left: an append whose statement started before the change
-- committed stores a partition under the old generation. Workers read the
-- events of every old generation as well (an index on (route_gen, xid,
-- position): one probe per old generation, which finds almost nothing).
local procman = require "procman"
local db = require "procman.pg.db"

local M = {}

local cache = setmetatable({}, { __mode = "k" })  -- conn -> routes

--- The partition of a flow: FNV-1a of "workflow/" and the flow id's
-- encoding (typed: 7 and "7" are different flows), mod n. The same in
-- every worker, producer, process and machine.
function M.partition(name, flow_id, n)
  local h = 2166136261
  local s = name .. "/" .. procman.encode(flow_id)
  for i = 1, #s do h = ((h ~ s:byte(i)) * 16777619) & 0xffffffff end
  return h % n
end

local function valid_id(id)
  return math.type(id) == "integer" or (type(id) == "string" and id ~= "")
end

--- The routes a connection appends with (loaded once, reloaded after forget).
function M.of(conn)
  local r = cache[conn]
  if r then return r end
  local rows = db.exec(conn, "SELECT gen, routes FROM procman_routes")
  local row = rows[1] or { gen = 0 }
  r = row.routes and procman.decode(row.routes) or {}
  r.gen = row.gen
  cache[conn] = r
  return r
end

function M.forget(conn)
  cache[conn] = nil
end

--- The partition of an event, or nil: every worker reads it (several
-- partitions, a function correlate, no routes yet).
function M.partition_of(r, event)
  if r.all or r.fields == nil or #r.fields == 0 then return nil end
  local found
  for _, f in ipairs(r.fields) do
    local id = rawget(event, f.field)
    if valid_id(id) then
      local p = M.partition(f.workflow, id, r.partitions)
      if found ~= nil and found ~= p then return nil end
      found = p
    end
  end
  return found or 0  -- no flow id: partition 0 keeps the dead letter
end

local function merged(old, specs, n)
  local r = { partitions = n, all = old.all, fields = {} }
  local seen = {}
  for _, f in ipairs(old.fields or {}) do
    r.fields[#r.fields + 1] = f
    seen[f.workflow .. "\0" .. f.field] = true
  end
  for _, spec in ipairs(specs) do
    if type(spec.correlate) ~= "string" then
      r.all = true
    elseif not seen[spec.name .. "\0" .. spec.correlate] then
      r.fields[#r.fields + 1] = { workflow = spec.name, field = spec.correlate }
      seen[spec.name .. "\0" .. spec.correlate] = true
    end
  end
  local changed = r.all ~= old.all or #r.fields ~= #(old.fields or {}) or old.partitions ~= n
  return r, changed
end

--- Register a worker's workflows (routes only grow); the generation.
function M.register(conn, specs, n)
  return db.transaction(conn, function(c)
    local row = db.exec(c, "SELECT gen, routes FROM procman_routes FOR UPDATE")[1]
    local old = row.routes and procman.decode(row.routes) or {}
    local r, changed = merged(old, specs, n)
    if not changed then return row.gen end
    -- a random generation: never one a producer may have cached from an
    -- earlier store (tables dropped and created again)
    local rows = db.exec(c, "UPDATE procman_routes SET routes = $1::bytea, history = history || gen, "
                            .. "gen = floor(random() * 4611686018427387904)::bigint + 1 RETURNING gen",
                         require("procman.pg.core").bytes(procman.encode(r)))
    return rows[1].gen
  end)
end

return M
