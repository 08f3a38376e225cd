--- procman.pg.db: connections, transactions and set-based statements, for
-- procman.pg's modules.
local core = require "procman.pg.core"

local M = {}

-- Statements sent by this process (each one round trip): make bench-pg
-- divides it by the events handled.
M.statements = 0

-- A failed statement: raised as a table so that callers can tell a lost
-- connection (reconnect) from an error of the data (isolate the event);
-- tostring gives the message.
local Error = { __name = "procman.pg.error" }
Error.__index = Error
Error.__tostring = function(e) return e.message end

--- Is 'err' (anything raised) the loss of the connection?
function M.is_connection_loss(err, conn)
  if conn ~= nil and conn.alive and not conn:alive() then return true end
  local state = type(err) == "table" and err.sqlstate or ""
  return state:sub(1, 2) == "08" or state:sub(1, 3) == "57P"
end

--- A connection from a conninfo string or a connection; and whether it was
-- opened here (the caller closes it then).
function M.connection(c, who)
  if type(c) == "string" then
    local conn, err = core.connect(c)
    if not conn then error(err, 0) end
    return conn, true
  end
  if getmetatable(c) == nil or type(c.exec) ~= "function" then
    error(string.format("procman.pg: %s needs a conninfo string or a connection, got %s", who, type(c)), 3)
  end
  return c, false
end

--- Run fn(conn, ...) in a transaction: commit if it returns, roll back and
-- re-raise if it raises. Returns what fn returned.
function M.transaction(conn, fn, ...)
  M.statements = M.statements + 2  -- BEGIN, COMMIT
  local ok, err, state = conn:script("BEGIN")
  if not ok then error(setmetatable({ message = err, sqlstate = state }, Error), 0) end
  local results = table.pack(pcall(fn, conn, ...))
  if not results[1] then
    if conn:alive() then conn:script("ROLLBACK") end
    error(results[2], 0)
  end
  ok, err, state = conn:script("COMMIT")
  if not ok then error(setmetatable({ message = err, sqlstate = state }, Error), 0) end
  return table.unpack(results, 2, results.n)
end

--- conn:exec that raises on failure (an error object with the message and
-- the SQLSTATE).
function M.exec(conn, sql, ...)
  M.statements = M.statements + 1
  local rows, count_or_err, state = conn:exec(sql, ...)
  if rows == nil then error(setmetatable({ message = count_or_err, sqlstate = state }, Error), 0) end
  return rows, count_or_err
end

--- Call connect() until it returns true, pausing r.initial seconds, then
-- twice as long each time up to r.max; report(text) after each failure.
-- nil, message after r.attempts failures in a row (never without it), or
-- when stop() says so. Workers and dispatchers reconnect through it.
function M.with_backoff(who, r, connect, report, stop)
  local delay, attempt = r.initial or 0.05, 0
  while true do
    attempt = attempt + 1
    local ok, err = connect()
    if ok then return true end
    report(string.format("connect attempt %d failed: %s", attempt, err))
    if r.attempts and attempt >= r.attempts then
      return nil, string.format("%s: gave up reconnecting after %d attempts: %s", who, attempt, err)
    end
    if stop and stop() then return nil, who .. ": stopped while reconnecting" end
    core.sleep(delay)
    delay = math.min(delay * 2, r.max or 5)
  end
end

-- Rows per statement of a set-based write: well under libpq's 65535
-- parameters for the widest row.
local CHUNK = 1000

--- A statement over rows: sql_of(values) gets "($1::t, $2::t), (...)" for
-- the rows (arrays of the parameters, one per type), sent in chunks.
-- Returns the rows the statements returned, concatenated.
function M.exec_rows(conn, types, rows, sql_of)
  local out = {}
  for first = 1, #rows, CHUNK do
    local values, args, k = {}, {}, 0
    for r = first, math.min(first + CHUNK - 1, #rows) do
      local row, slots = rows[r], {}
      for c, t in ipairs(types) do
        k = k + 1
        slots[c] = string.format("$%d::%s", k, t)
        args[k] = row[c]
      end
      values[#values + 1] = "(" .. table.concat(slots, ", ") .. ")"
    end
    local result = M.exec(conn, sql_of(table.concat(values, ", ")), table.unpack(args, 1, k))
    table.move(result, 1, #result, #out + 1, out)
  end
  return out
end

return M
