--- procman.pg.partitions: which partitions a worker owns, and from where.
--
-- A worker owns partitions through PostgreSQL advisory locks (session
-- locks: they go when the worker's connection goes, so a dead worker's
-- partitions are free for the others), each with a checkpoint: the
-- (transaction id, position) of the last event handled for it. Workers
-- share the partitions fairly: each takes at most its share,
-- ceil(N / live workers), counting live workers by their presence locks,
-- and gives back partitions above its share when workers join.
local db = require "procman.pg.db"

local M = {}

M.PARTITION_LOCK = 5164018  -- advisory lock class of partitions (key: the partition)
M.PRESENCE_LOCK = 5164019   -- advisory lock class of live workers (key: backend pid)

local function live_workers(conn)
  local rows = db.exec(conn, "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' "
                             .. "AND classid = $1 AND granted AND database = "
                             .. "(SELECT oid FROM pg_database WHERE datname = current_database())",
                       M.PRESENCE_LOCK)
  return math.max(rows[1].n, 1)
end

--- Say this session is a live worker (until it ends).
function M.present(conn)
  db.exec(conn, "SELECT pg_advisory_lock($1, pg_backend_pid())", M.PRESENCE_LOCK)
end

local function release(w, p)
  db.exec(w.conn, "SELECT pg_advisory_unlock($1, $2)", M.PARTITION_LOCK, p)
  w.owned[p] = nil
  w.owned_count = w.owned_count - 1
  w:forget_partition(p)
end

local function take(w, p)
  local rows = db.exec(w.conn, "SELECT pg_try_advisory_lock($1, $2) AS got", M.PARTITION_LOCK, p)
  if not rows[1].got then return end
  db.exec(w.conn, "INSERT INTO procman_checkpoints (partition, xid, position) VALUES ($1, 0, 0) "
                  .. "ON CONFLICT (partition) DO NOTHING", p)
  local cp = db.exec(w.conn, "SELECT xid, position FROM procman_checkpoints WHERE partition = $1", p)[1]
  w.owned[p] = { xid = cp.xid, position = cp.position }
  w.owned_count = w.owned_count + 1
  w:forget_partition(p)  -- its flows may have moved on under another owner
end

--- Take free partitions up to the worker's share, give back those above.
function M.claim(w)
  local share = -(-w.partitions // live_workers(w.conn))
  for p = w.partitions - 1, 0, -1 do
    if w.owned_count <= share then break end
    if w.owned[p] then release(w, p) end
  end
  for p = 0, w.partitions - 1 do
    if w.owned_count >= share then break end
    if not w.owned[p] then take(w, p) end
  end
  return w.owned_count
end

--- Is checkpoint a before b?
function M.before(a, b)
  return a.xid < b.xid or (a.xid == b.xid and a.position < b.position)
end

--- The lowest checkpoint of the owned partitions, or nil.
function M.lowest(w)
  local low
  for _, cp in pairs(w.owned) do
    if low == nil or M.before(cp, low) then low = cp end
  end
  return low
end

--- The owned partitions, sorted.
function M.list(w)
  local list = {}
  for p in pairs(w.owned) do list[#list + 1] = p end
  table.sort(list)
  return list
end

return M
