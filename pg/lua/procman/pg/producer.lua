--- procman.pg.producer: appending events to the shared event store.
--
-- The pitfall of event stores on a sequence: positions are handed out at
-- insert, but transactions commit in their own order, so a reader that
-- reads "position > the last one I saw" can see position 10 before 9 is
-- committed, move past 9, and never see it. Appends here take no lock:
-- each event row carries the id of the transaction that wrote it (xid8),
-- readers order by (xid, position) and read only rows whose transaction is
-- older than the oldest one still running (pg_snapshot_xmin of the current
-- snapshot). A transaction that commits late has an xid at or above that
-- bound until it ends, so no reader moves past it; docs/postgres.md has
-- the argument in full.
--
-- Event ids: an id names one event in the whole store (typed: 7 and "7"
-- are different ids). A redelivery (same id, same event) appends nothing
-- and returns false; the same id with a different event is refused with
-- nil, message.
local procman = require "procman"
local db = require "procman.pg.db"
local pgcore = require "procman.pg.core"
local routes = require "procman.pg.routes"

local M = {}

M.CHANNEL = "procman_events"  -- NOTIFYed by every append at its commit: idle workers wake

local function check_event(event, where)
  if type(event) ~= "table" then
    error(string.format("procman.pg.append: %s must be a table, got %s", where, type(event)), 3)
  end
  local event_type, event_id = rawget(event, "event_type"), rawget(event, "event_id")
  if type(event_type) ~= "string" or event_type == "" then
    error(string.format("procman.pg.append: %s.event_type must be a non-empty string, got %s", where,
                        type(event_type)), 3)
  end
  if not (math.type(event_id) == "integer" or (type(event_id) == "string" and event_id ~= "")) then
    error(string.format("procman.pg.append: %s.event_id must be a non-empty string or an integer (the "
                        .. "store deduplicates on it), got %s", where, type(event_id)), 3)
  end
  local ok, payload = pcall(procman.encode, event)
  if not ok then error(string.format("procman.pg.append: %s is not data: %s", where, payload), 3) end
  return { key = procman.encode(event_id), event_type = event_type, payload = payload, id = event_id,
           where = where }
end

-- One statement for the whole list: insert what is new (nothing at all if
-- an id is stored with a different event), and for each event say whether
-- it was added (position), was there already the same (same = true), or
-- was there with different bytes (same = false).
local function insert_sql(n, gen, notify)
  local values = {}
  for i = 1, n do
    local b = (i - 1) * 4
    values[i] = string.format("(%d, $%d::bytea, $%d::bytea, $%d::bytea, $%d::int)", i, b + 1, b + 2, b + 3,
                              b + 4)
  end
  -- the partition only under the current routes (routes.lua: else NULL, for every worker)
  return "WITH input (i, event_key, event_type, payload, partition) AS (VALUES "
    .. table.concat(values, ", ")
    .. "), known AS (SELECT input.i, events.payload = input.payload AS same FROM input "
    .. "JOIN procman_events events ON events.key_hash = sha256(input.event_key)), "
    .. "added AS (INSERT INTO procman_events (event_key, event_type, payload, partition, route_gen) "
    .. "SELECT event_key, event_type, payload, CASE WHEN (SELECT gen FROM procman_routes) = " .. gen
    .. " THEN partition END, " .. gen .. " FROM input "
    .. "WHERE NOT EXISTS (SELECT 1 FROM known WHERE NOT same) ORDER BY i "
    .. "ON CONFLICT (key_hash) DO NOTHING RETURNING position, event_key), "
    .. "notified AS (SELECT pg_notify('" .. M.CHANNEL .. "', '') FROM added WHERE " .. tostring(notify)
    .. " LIMIT 1) SELECT input.i, added.position, known.same, (SELECT count(*) FROM notified) AS notified, "
    .. "(SELECT gen FROM procman_routes) AS gen FROM input "
    .. "LEFT JOIN added ON added.event_key = input.event_key "
    .. "LEFT JOIN known ON known.i = input.i ORDER BY input.i"
end

local function reuse_message(item)
  return string.format("procman.pg.append: %s: event_id %s is stored already with a different event "
                       .. "(an event id names one event; nothing was appended)", item.where,
                       type(item.id) == "string" and string.format("%q", item.id) or tostring(item.id))
end

-- Events a concurrent transaction appended under the same ids while this
-- statement ran (it waited for them, then did nothing): same or not?
local function settle_races(conn, items, results)
  for i, item in ipairs(items) do
    if results[i] == nil then
      local rows = db.exec(conn, "SELECT payload = $2::bytea AS same FROM procman_events "
                                 .. "WHERE key_hash = sha256($1::bytea)", pgcore.bytes(item.key),
                           pgcore.bytes(item.payload))
      if rows[1] and rows[1].same then results[i] = false end
    end
  end
end

local function append_items(conn, items)
  local r = routes.of(conn)
  local args = {}
  for i, item in ipairs(items) do
    local b = (i - 1) * 4
    args[b + 1], args[b + 2], args[b + 3] = pgcore.bytes(item.key), pgcore.bytes(item.event_type),
                                             pgcore.bytes(item.payload)
    args[b + 4] = routes.partition_of(r, item.event)
  end
  -- Inside the caller's transaction the NOTIFY goes with it (sent at its
  -- commit). Otherwise it is a statement of its own after the append's
  -- commit: PostgreSQL serializes the commits of notifying transactions
  -- (a global lock held through the WAL flush), which would put appends
  -- in single file again; a NOTIFY alone writes no WAL and waits for no
  -- flush.
  local own = not conn:in_transaction()
  local rows = db.exec(conn, insert_sql(#items, r.gen, not own), table.unpack(args, 1, #items * 4))
  local added = false
  for _, row in ipairs(rows) do added = added or row.position ~= nil end
  if own and added then db.exec(conn, "SELECT pg_notify('" .. M.CHANNEL .. "', '')") end
  local results = {}
  for _, row in ipairs(rows) do
    if row.same == false then return nil, reuse_message(items[row.i]) end
    if row.position then results[row.i] = row.position elseif row.same then results[row.i] = false end
  end
  if rows[1] and rows[1].gen ~= r.gen then routes.forget(conn) end  -- the workflows changed: reload
  settle_races(conn, items, results)
  for i = 1, #items do
    if results[i] == nil then return nil, reuse_message(items[i]) end
  end
  return results
end

--- pg.append(conn, event) -> position; false when this very event was
-- appended already (producers may retry); nil, message when its event_id
-- is stored with a different event.
function M.append(conn, event)
  local item = check_event(event, "event")
  item.event = event
  local results, err = append_items(conn, { item })
  if not results then return nil, err end
  return results[1]
end

--- pg.append_all(conn, events) -> { position or false, ... } in one round
-- trip; nil, message (and nothing appended) when an event_id is stored
-- with a different event.
function M.append_all(conn, events)
  if type(events) ~= "table" then
    error("procman.pg.append_all: events must be an array of events, got " .. type(events), 2)
  end
  if #events == 0 then return {} end
  if #events > 10000 then error("procman.pg.append_all: at most 10000 events at a time", 2) end
  local items, first, repeats = {}, {}, {}
  for i, event in ipairs(events) do
    local item = check_event(event, string.format("events[%d]", i))
    item.event = event
    local j = first[item.key]
    if j == nil then
      first[item.key] = #items + 1
      items[#items + 1] = item
    elseif items[j].payload ~= item.payload then
      return nil, (reuse_message(item):gsub("is stored already", "is in this batch already"))
    else
      repeats[i] = true  -- the same event twice: the second is a redelivery
    end
  end
  local results, err = append_items(conn, items)
  if not results then return nil, err end
  local out, k = {}, 0
  for i = 1, #events do
    if repeats[i] then out[i] = false else k = k + 1; out[i] = results[k] end
  end
  return out
end

return M
