--- procman.pg.schema: the tables procman keeps in PostgreSQL, and their
-- migrations. docs/postgres.md explains each table.
local M = {}

-- Each migration takes the schema from version i-1 to i, in one
-- transaction. Add new ones at the end; never change an old one.
M.migrations = {
  [[
  CREATE TABLE procman_events (
    position    bigserial PRIMARY KEY,
    event_id    text NOT NULL UNIQUE,
    event_type  text NOT NULL,
    payload     bytea NOT NULL,
    appended_at timestamptz NOT NULL DEFAULT now()
  );
  CREATE TABLE procman_flows (
    workflow    text NOT NULL,
    flow_id     text NOT NULL,
    flow_key    bytea NOT NULL,
    partition   integer NOT NULL,
    status      text,
    version     bigint NOT NULL,
    done        boolean NOT NULL DEFAULT false,
    state       bytea NOT NULL,
    seen        bytea NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow, flow_id)
  );
  CREATE INDEX procman_flows_status ON procman_flows (workflow, status);
  CREATE TABLE procman_outbox (
    seq         bigserial,
    command_id  text PRIMARY KEY,
    workflow    text NOT NULL,
    flow_id     text NOT NULL,
    envelope    bytea NOT NULL,
    position    bigint,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    dispatched  boolean NOT NULL DEFAULT false,
    dispatched_at timestamptz
  );
  CREATE INDEX procman_outbox_pending ON procman_outbox (seq) WHERE NOT dispatched;
  CREATE TABLE procman_timers (
    workflow    text NOT NULL,
    flow_id     text NOT NULL,
    partition   integer NOT NULL,
    seq         bigint NOT NULL,
    index       integer NOT NULL,
    key         text,
    due         double precision NOT NULL,
    event       bytea NOT NULL,
    PRIMARY KEY (workflow, flow_id, seq, index)
  );
  CREATE INDEX procman_timers_due ON procman_timers (partition, due);
  CREATE TABLE procman_checkpoints (
    partition   integer PRIMARY KEY,
    position    bigint NOT NULL
  );
  CREATE TABLE procman_dead_letters (
    id          bigserial PRIMARY KEY,
    position    bigint,
    workflow    text,
    flow_id     text,
    error       text NOT NULL,
    event       bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
  );
  CREATE TABLE procman_config (
    key         text PRIMARY KEY,
    value       text NOT NULL
  );
  ]],
}

return M
