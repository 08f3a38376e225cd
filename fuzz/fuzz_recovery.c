/*
** fuzz_recovery.c - libFuzzer harness for recovery's scan in C
** (fold_scan.c) and its check of canonical bytes (canonical.c).
**
** Any bytes, twice:
**  - as one MessagePack value: when canonical_value() takes them, they
**    decode, and encoding the value gives exactly these bytes (what the
**    scan relies on to copy a command's bytes into its envelope);
**  - as a journal file (opened with repair), recovered by a router with
**    the scan and by one with the Lua fold alone: both refuse it with the
**    same message, or both give the same state (flows, completed flows,
**    the outbox's bytes, the sequence counter, dead letters, timers).
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lauxlib.h"
#include "lualib.h"
#include "buffer.h"
#include "canonical.h"
#include "codec.h"

#ifndef PROCMAN_LUA_PATH
#error "build with -DPROCMAN_LUA_PATH=\"<checkout>/lua/?.lua;...\" (the Makefile's LIB_PATH)"
#endif

LUAMOD_API int luaopen_procman_core(lua_State *L);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const RECOVER =
  "local path = ...\n"
  "local procman = require 'procman'\n"
  "local core = require 'procman.core'\n"
  "local fold_scan = require 'procman.fold_scan'\n"
  "local batch = require 'procman.workflows.batch'\n"
  "local function state(scan)\n"
  "  fold_scan.enabled = scan\n"
  "  local ok, r = pcall(procman.router, { workflows = { batch }, journal = path, repair = true,\n"
  "                                       on_error = 'park', warn = function() end })\n"
  "  fold_scan.enabled = true\n"
  "  if not ok then return 'error: ' .. tostring(r) end\n"
  "  if not r then return 'nil' end\n"
  "  local flows = {}\n"
  "  for pm in r:flows() do\n"
  "    flows[#flows + 1] = core.encode { tostring(pm), pm:version(), pm:status(), pm:state() }\n"
  "  end\n"
  "  table.sort(flows)\n"
  "  local finished = {}\n"
  "  for id, final in pairs(r.finished.batch) do\n"
  "    local fold = require 'procman.fold'\n"
  "    finished[#finished + 1] = core.encode { id, fold.final_status(final), #fold.completed_ids(final) }\n"
  "  end\n"
  "  table.sort(finished)\n"
  "  local out = core.encode { flows, finished, r.finished_count, r.outbox:encoded(), r.seq,\n"
  "                            r.dead.next_id, r:dead_letters(), r:timers(), r:parked(), r.recovered }\n"
  "  r:close()\n"
  "  return out\n"
  "end\n"
  "local with, without = state(true), state(false)\n"
  "if with ~= without then\n"
  "  error(string.format('the scan gives %q, the Lua fold %q', with, without))\n"
  "end\n";

static lua_State *the_state = NULL;
static char the_path[64];

static void close_state(void) {
  lua_close(the_state);
  remove(the_path);
}

static lua_State *state(void) {
  if (the_state == NULL) {
    lua_State *L = the_state = luaL_newstate();
    luaL_openlibs(L);
    snprintf(the_path, sizeof the_path, "%s/procman-fuzz-recovery-%ld",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp", (long)getpid());
    atexit(close_state);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_procman_core);
    lua_setfield(L, -2, "procman.core");
    lua_pop(L, 1);
    if (luaL_dostring(L, "package.path = '" PROCMAN_LUA_PATH "'") != LUA_OK ||
        luaL_loadstring(L, RECOVER) != LUA_OK)
      abort();
    lua_setglobal(L, "recover");
  }
  return the_state;
}

/* Canonical bytes decode, and encode back to themselves. */
static void check_canonical(lua_State *L, const uint8_t *data, size_t size) {
  size_t pos = 0, dpos = 0, again = 0;
  uint32_t *ends = malloc((size ? size : 1) * sizeof(uint32_t));
  int ok;
  if (ends == NULL)
    abort();
  ok = canonical_value(data, size, &pos, ends);
  /* the same answer without the index; the index gives the value's end */
  if (ok != canonical_value(data, size, &again, NULL) || (ok && (again != pos || ends[0] != pos)))
    abort();
  free(ends);
  if (!ok)
    return;
  if (pos == 0 || pos > size || !codec_decode(L, (const char *)data, pos, &dpos) || dpos != pos)
    abort();
  buffer_new(L, 0);
  if (!codec_encode(L, -2, -1, "value"))
    abort();
  if (buffer_at(L, -1)->len != pos || memcmp(buffer_at(L, -1)->data, data, pos) != 0)
    abort();
  lua_settop(L, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_State *L = state();
  FILE *f;
  check_canonical(L, data, size);
  f = fopen(the_path, "wb");
  if (f == NULL || fwrite(data, 1, size, f) != size || fclose(f) != 0) {
    perror(the_path);
    abort();
  }
  lua_getglobal(L, "recover");
  lua_pushstring(L, the_path);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
    abort();
  }
  remove(the_path);
  lua_settop(L, 0);
  return 0;
}
