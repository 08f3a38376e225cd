-- procman-pg: procman's flows over PostgreSQL (partitioned workers, a shared
-- event store, a transactional outbox). Its own rock, so that the procman
-- rock keeps no dependency on libpq. From a checkout, after procman:
--   luarocks --lua-version=5.4 make procman-pg-0.1.0-1.rockspec
rockspec_format = "3.0"
package = "procman-pg"
version = "0.1.0-1"
source = {
  url = "git+file://.",
}
description = {
  summary = "procman's durable process managers over PostgreSQL, for many workers",
  detailed = [[
Partitioned workers over a shared PostgreSQL event store: lock-free appends
read in (transaction id, position) order, advisory-lock ownership with
failover, one transaction per batch for flow state, outbox, timers, parked
events and checkpoints, failure isolation, reconnects, and dispatchers
sharing the outbox with SKIP LOCKED.
]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.4, < 5.5",
  "procman",
}
external_dependencies = {
  PQ = { header = "postgresql/libpq-fe.h" },  -- Debian: libpq-dev
}
build = {
  type = "builtin",
  modules = {
    ["procman.pg.core"] = {
      sources = { "pg/csrc/pg.c" },
      libraries = { "pq" },
      incdirs = { "$(PQ_INCDIR)/postgresql" },
      libdirs = { "$(PQ_LIBDIR)" },
    },
    ["procman.pg"] = "pg/lua/procman/pg/init.lua",
    ["procman.pg.db"] = "pg/lua/procman/pg/db.lua",
    ["procman.pg.schema"] = "pg/lua/procman/pg/schema.lua",
    ["procman.pg.producer"] = "pg/lua/procman/pg/producer.lua",
    ["procman.pg.dispatcher"] = "pg/lua/procman/pg/dispatcher.lua",
    ["procman.pg.worker"] = "pg/lua/procman/pg/worker.lua",
    ["procman.pg.unit"] = "pg/lua/procman/pg/unit.lua",
    ["procman.pg.routes"] = "pg/lua/procman/pg/routes.lua",
    ["procman.pg.policies"] = "pg/lua/procman/pg/policies.lua",
    ["procman.pg.store"] = "pg/lua/procman/pg/store.lua",
    ["procman.pg.partitions"] = "pg/lua/procman/pg/partitions.lua",
    ["procman.pg.read"] = "pg/lua/procman/pg/read.lua",
    ["procman.pg.view"] = "pg/lua/procman/pg/view.lua",
  },
}
