--- procman.pg.schema: the tables procman keeps in PostgreSQL.
-- docs/postgres.md explains each table and the rules behind the columns.
--
-- Exact ids: a flow id or an event id is stored as its MessagePack
-- encoding (bytea), so 7 and "7" are different keys (as in the router),
-- NUL and non-UTF-8 bytes survive, and nothing is cut or refused for its
-- encoding. Keys of any length: the unique indexes are on sha256 of the
-- key (32 bytes), never on the key itself (a btree row is at most ~2.7 KB).
-- Text that comes from events or errors (event types, statuses, error
-- messages) is stored as bytea too; the read API (procman.pg.read) turns
-- it back into Lua strings.
--
-- Due times: 'due' (double precision) is what SQL compares; 'due_exact'
-- (the number's MessagePack encoding) is what is read back, so an integer
-- due time stays an integer and a float a float, as in the router.
local db = require "procman.pg.db"

local M = {}

-- The schema version this procman writes and reads. A store at another
-- version is refused (pg.migrate, pg.worker), never misread.
M.VERSION = 4

M.ddl = [[
  CREATE TABLE procman_events (
    position    bigserial PRIMARY KEY,
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    event_key   bytea NOT NULL,
    key_hash    bytea NOT NULL GENERATED ALWAYS AS (sha256(event_key)) STORED UNIQUE,
    event_type  bytea NOT NULL,
    payload     bytea NOT NULL,
    partition   integer,
    route_gen   bigint NOT NULL DEFAULT 0,
    appended_at timestamptz NOT NULL DEFAULT now()
  );
  CREATE INDEX procman_events_order ON procman_events (xid, position);
  CREATE INDEX procman_events_partition ON procman_events (partition, xid, position);
  CREATE INDEX procman_events_route_gen ON procman_events (route_gen, xid, position)
    WHERE partition IS NOT NULL;
  CREATE TABLE procman_flows (
    workflow    text NOT NULL,
    flow_key    bytea NOT NULL,
    key_hash    bytea NOT NULL GENERATED ALWAYS AS (sha256(flow_key)) STORED,
    partition   integer NOT NULL,
    status      bytea,
    version     bigint NOT NULL,
    done        boolean NOT NULL DEFAULT false,
    state       bytea NOT NULL,
    workflow_version integer NOT NULL DEFAULT 1,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow, key_hash)
  );
  CREATE INDEX procman_flows_status ON procman_flows (workflow, status);
  CREATE TABLE procman_parked (
    workflow    text NOT NULL,
    flow_key    bytea NOT NULL,
    key_hash    bytea NOT NULL GENERATED ALWAYS AS (sha256(flow_key)) STORED,
    n           integer NOT NULL,
    partition   integer NOT NULL,
    error       bytea,
    event       bytea NOT NULL,
    workflow_version integer NOT NULL DEFAULT 1,  -- of a flow parked on its first event (no flow row)
    PRIMARY KEY (workflow, key_hash, n)
  );
  CREATE INDEX procman_parked_partition ON procman_parked (partition);
  CREATE TABLE procman_outbox (
    seq         bigserial PRIMARY KEY,
    command_id  bytea NOT NULL,
    id_hash     bytea NOT NULL GENERATED ALWAYS AS (sha256(command_id)) STORED,
    workflow    text NOT NULL,
    flow_key    bytea NOT NULL,
    envelope    bytea NOT NULL,
    position    bigint,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    dispatched  boolean NOT NULL DEFAULT false,
    dispatched_at timestamptz
  );
  CREATE INDEX procman_outbox_pending ON procman_outbox (seq) WHERE NOT dispatched;
  CREATE INDEX procman_outbox_id ON procman_outbox (id_hash);
  CREATE TABLE procman_timers (
    workflow    text NOT NULL,
    flow_key    bytea NOT NULL,
    key_hash    bytea NOT NULL GENERATED ALWAYS AS (sha256(flow_key)) STORED,
    partition   integer NOT NULL,
    seq         bigint NOT NULL,
    index       integer NOT NULL,
    key         bytea,
    due         double precision NOT NULL,
    due_exact   bytea NOT NULL,
    event       bytea NOT NULL,
    PRIMARY KEY (workflow, key_hash, seq, index)
  );
  CREATE INDEX procman_timers_due ON procman_timers (partition, due);
  CREATE TABLE procman_checkpoints (
    partition   integer PRIMARY KEY,
    xid         bigint NOT NULL,
    position    bigint NOT NULL
  );
  CREATE TABLE procman_dead_letters (
    id          bigserial PRIMARY KEY,
    position    bigint,
    workflow    text,
    flow_key    bytea,
    error       bytea NOT NULL,
    event       bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
  );
  CREATE TABLE procman_transitions (
    workflow    text NOT NULL,
    edge        bytea NOT NULL,
    edge_hash   bytea NOT NULL GENERATED ALWAYS AS (sha256(edge)) STORED,
    count       bigint NOT NULL,
    PRIMARY KEY (workflow, edge_hash)
  );
  CREATE TABLE procman_routes (
    one         boolean PRIMARY KEY DEFAULT true CHECK (one),
    gen         bigint NOT NULL,
    history     bigint[] NOT NULL DEFAULT '{}',
    routes      bytea
  );
  INSERT INTO procman_routes (gen) VALUES (0);
  CREATE TABLE procman_config (
    key         text PRIMARY KEY,
    value       bytea NOT NULL
  );
]]

--- The schema version of the store behind conn; nil without procman tables.
function M.stored_version(c)
  local rows = db.exec(c, "SELECT to_regclass('procman_schema') IS NOT NULL AS has")
  if not rows[1].has then return nil end
  rows = db.exec(c, "SELECT version FROM procman_schema")
  return rows[1] and rows[1].version or 0
end

function M.refuse(version)
  error(string.format("procman.pg: the store has schema version %d, this procman reads version %d only "
                      .. "(no migration before 1.0): run the old procman until its flows are done, then "
                      .. "drop the procman_* tables or use a new database", version, M.VERSION), 0)
end

--- Raise unless the store is at this procman's schema version.
function M.check(conn)
  local v = M.stored_version(conn)
  if v == nil or v == 0 then error("procman.pg: the store has no procman tables: run pg.migrate first", 0) end
  if v ~= M.VERSION then M.refuse(v) end
end

return M
