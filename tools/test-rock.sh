#!/bin/sh
# Install the rocks (procman, then procman-lineedit and procman-pg) with
# LuaRocks into an empty tree, then use them from there (and only from
# there): require the modules, run the seed session, run the installed
# command. The rocks' dependencies on argparse and lua-cjson are met by
# Debian's packages, which LuaRocks does not know: --deps-mode=none.
set -eu
tree=$(mktemp -d /tmp/procman-rock.XXXXXX)
trap 'rm -rf "$tree"' EXIT
for rockspec in procman-[0-9]*.rockspec procman-lineedit-*.rockspec procman-pg-*.rockspec; do
  luarocks --lua-version=5.4 make --deps-mode=none --tree "$tree" "$rockspec" >"$tree.log" 2>&1 ||
    { cat "$tree.log"; rm -f "$tree.log"; exit 1; }
done
rm -f "$tree.log"
TREE="$tree" LUA_PATH_5_4="$tree/share/lua/5.4/?.lua;$tree/share/lua/5.4/?/init.lua" \
LUA_CPATH_5_4="$tree/lib/lua/5.4/?.so" \
lua5.4 -e '
  local procman = require "procman"
  local batch = require "procman.workflows.batch"
  assert(package.searchpath("procman.core", package.cpath):find(os.getenv("TREE"), 1, true))
  local pm = batch:new("batch1")
  assert(#pm:handle{ event_type = "batch_created", files = { "f1", "f2", "f3" } } == 3)
  for _, f in ipairs({ "f1", "f2", "f3" }) do
    pm:handle{ event_type = "file_processed", file = { id = f, status = "success" } }
  end
  assert(pm:status() == "success" and procman.decode(procman.encode({ 1 }))[1] == 1)
  assert(require("procman.core").journal_faults == nil, "the shipped core has no fault injection")
  assert(type(require("procman.terminal").line_reader) == "function")
  assert(type(require("procman.cli").main) == "function")
  assert(package.searchpath("procman.lineedit", package.cpath):find(os.getenv("TREE"), 1, true))
  assert(type(require("procman.lineedit").new) == "function")
  local pg = require "procman.pg"
  assert(package.searchpath("procman.pg.core", package.cpath):find(os.getenv("TREE"), 1, true))
  assert(type(pg.worker) == "function" and type(pg.migrate) == "function")
'
# the command from the tree; argparse from the system (lua-argparse)
version=$(LUA_PATH_5_4="$tree/share/lua/5.4/?.lua;$tree/share/lua/5.4/?/init.lua;;" \
  LUA_CPATH_5_4="$tree/lib/lua/5.4/?.so" "$tree/bin/procman" --version)
echo "test-rock: luarocks make into an empty tree: ok ($version, its command from the tree)"
