--- procman.cli.source: what procman inspect and procman diagram read: a
-- journal file, or a PostgreSQL store named by a conninfo ("host=... dbname=..."
-- or postgres://...), through procman.pg.view (the procman-pg rock).
local journal_view = require "procman.journal_view"

local M = {}

local function is_conninfo(s)
  return s:match("^postgres://") or s:match("^postgresql://") or s:match("^%s*[%w_]+%s*=")
end

--- read(path_or_conninfo[, opts]) -> a view (procman.journal_view's shape), or nil, message.
function M.read(where, opts)
  if not is_conninfo(where) then return journal_view.read(where, opts) end
  local ok, pg_view = pcall(require, "procman.pg.view")
  if not ok then
    return nil, where .. " looks like a PostgreSQL conninfo, but procman.pg is not installed "
                .. "(luarocks install procman-pg)"
  end
  return pg_view.read(where)
end

return M
