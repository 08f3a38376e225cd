-- procman: durable, event-sourced process managers for Lua 5.4.
-- Build and install from a checkout: luarocks --lua-version=5.4 make
rockspec_format = "3.0"
package = "procman"
version = "0.1.0-1"
source = {
  url = "git+file://.",  -- built from a checkout with `luarocks make`
}
description = {
  summary = "Durable, event-sourced process managers for Lua 5.4, with a C core",
  detailed = [[
A process manager owns one flow (a batch of files, an order): it takes
events, keeps the flow's state and returns commands for gateways to carry
out. procman gives each flow a C userdata whose handle(event) is atomic,
deduplicates redelivered events, and keeps the flow's state as the fold of
its events; a deterministic MessagePack codec; and the seed's batch
workflow.
]],
  license = "MIT",
  labels = { "event-sourcing", "process-manager", "saga", "workflow" },
}
-- argparse for the procman command, lua-cjson to read JSON lines (procman
-- run, inspect --json). Line editing for the REPL is a rock of its own
-- (procman-lineedit, libedit), so that this one builds with no library but
-- Lua. On Debian, where there is no rock server, the Makefile installs
-- lua-argparse and lua-cjson with apt and builds with --deps-mode=none.
dependencies = {
  "lua >= 5.4, < 5.5",
  "argparse >= 0.7",
  "lua-cjson >= 2.1",
}
build = {
  type = "builtin",
  modules = {
    ["procman.core"] = {
      sources = { "csrc/budget.c", "csrc/buffer.c", "csrc/canonical.c", "csrc/codec.c", "csrc/crc32c.c",
                  "csrc/engine.c", "csrc/fold_scan.c", "csrc/journal.c", "csrc/journal_lua.c", "csrc/lock_holder.c",
                  "csrc/outbox.c", "csrc/pattern.c", "csrc/pattern_lua.c", "csrc/pm.c",
                  "csrc/procman.c" },
      incdirs = { "csrc" },
    },
    -- the command's terminal helpers (csrc/faults.c is for test builds only)
    ["procman.terminal"] = {
      sources = { "csrc/terminal.c", "csrc/interrupt.c", "csrc/line_reader.c" },
      incdirs = { "csrc" },
    },
    ["procman"] = "lua/procman/init.lua",
    ["procman.workflow"] = "lua/procman/workflow.lua",
    ["procman.pretty"] = "lua/procman/pretty.lua",
    ["procman.repl"] = "cli/lua/procman/repl.lua",
    ["procman.repl_commands"] = "cli/lua/procman/repl_commands.lua",
    ["procman.journal_view"] = "lua/procman/journal_view.lua",
    ["procman.fold"] = "lua/procman/fold.lua",
    ["procman.fold_scan"] = "lua/procman/fold_scan.lua",
    ["procman.cli"] = "cli/lua/procman/cli.lua",
    ["procman.cli.json"] = "cli/lua/procman/cli/json.lua",
    ["procman.cli.repl"] = "cli/lua/procman/cli/repl.lua",
    ["procman.cli.run"] = "cli/lua/procman/cli/run.lua",
    ["procman.cli.inspect"] = "cli/lua/procman/cli/inspect.lua",
    ["procman.cli.verify"] = "cli/lua/procman/cli/verify.lua",
    ["procman.cli.compact"] = "cli/lua/procman/cli/compact.lua",
    ["procman.cli.diagram"] = "cli/lua/procman/cli/diagram.lua",
    ["procman.cli.parked"] = "cli/lua/procman/cli/parked.lua",
    ["procman.cli.dead_letters"] = "cli/lua/procman/cli/dead_letters.lua",
    ["procman.operations"] = "cli/lua/procman/operations.lua",
    ["procman.dead_letters"] = "lua/procman/dead_letters.lua",
    ["procman.hooks"] = "lua/procman/hooks.lua",
    ["procman.metrics"] = "lua/procman/metrics.lua",
    ["procman.cli.source"] = "cli/lua/procman/cli/source.lua",
    ["procman.router"] = "lua/procman/router.lua",
    ["procman.timers"] = "lua/procman/timers.lua",
    ["procman.message"] = "lua/procman/message.lua",
    ["procman.bounded"] = "lua/procman/bounded.lua",
    ["procman.schedule"] = "lua/procman/schedule.lua",
    ["procman.records"] = "lua/procman/records.lua",
    ["procman.patches"] = "lua/procman/patches.lua",
    ["procman.replay_plan"] = "lua/procman/replay_plan.lua",
    ["procman.outbox"] = "lua/procman/outbox.lua",
    ["procman.compaction"] = "lua/procman/compaction.lua",
    ["procman.sandbox"] = "lua/procman/sandbox.lua",
    ["procman.testing"] = "lua/procman/testing.lua",
    ["procman.expectation"] = "lua/procman/expectation.lua",
    ["procman.describe"] = "lua/procman/describe.lua",
    ["procman.workflows.batch"] = "workflows/lua/procman/workflows/batch.lua",
    ["procman.workflows.order"] = "workflows/lua/procman/workflows/order.lua",
  },
  install = {
    bin = { procman = "bin/procman" },
  },
}
test = {
  type = "busted",
  flags = { "--lua=lua5.4" },
}
