--- procman.pg.db: connections and transactions, for procman.pg's modules.
local core = require "procman.pg.core"

local M = {}

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
  local ok, err = conn:script("BEGIN")
  if not ok then error(err, 0) end
  local results = table.pack(pcall(fn, conn, ...))
  if not results[1] then
    conn:script("ROLLBACK")
    error(results[2], 0)
  end
  ok, err = conn:script("COMMIT")
  if not ok then error(err, 0) end
  return table.unpack(results, 2, results.n)
end

--- conn:exec that raises on failure (with the SQL's error).
function M.exec(conn, sql, ...)
  local rows, count_or_err = conn:exec(sql, ...)
  if rows == nil then error(count_or_err, 0) end
  return rows, count_or_err
end

return M
