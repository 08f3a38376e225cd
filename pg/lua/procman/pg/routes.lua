--- procman.pg.routes: which partitions an event is for, known to producers.
--
-- A flow belongs to partition hash(workflow, flow id) mod N. So that each
-- worker reads only its partitions' events, an append stores the
-- partitions of the flows the event may go to. The producer has no
-- workflow code: workers register, in procman_routes, each workflow's
-- correlation field (a function correlate cannot be registered: then
-- events carry no partitions and every worker reads them all). Each change
-- of the routes draws a new generation; an event appended under an older
-- generation than the current one is read by every worker (its partitions
-- may miss a workflow registered meanwhile), so a producer that has not
-- yet seen a new workflow loses nothing, and learns the new routes from
-- its next append's answer.
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

--- The partitions of an event (sorted), or nil: every worker reads it.
function M.partitions(r, event)
  if r.all or r.fields == nil or #r.fields == 0 then return nil end
  local set, list = {}, {}
  for _, f in ipairs(r.fields) do
    local id = rawget(event, f.field)
    if valid_id(id) then set[M.partition(f.workflow, id, r.partitions)] = true end
  end
  for p in pairs(set) do list[#list + 1] = p end
  if #list == 0 then list[1] = 0 end  -- no flow id: partition 0 keeps the dead letter
  table.sort(list)
  return list
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
    local rows = db.exec(c, "UPDATE procman_routes SET routes = $1::bytea, "
                            .. "gen = floor(random() * 4611686018427387904)::bigint + 1 RETURNING gen",
                         require("procman.pg.core").bytes(procman.encode(r)))
    return rows[1].gen
  end)
end

return M
