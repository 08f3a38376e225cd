/*
** test_oom.c - the core under memory failure.
**
** A lua_State whose allocator fails at the k-th allocation, for every k
** until the call succeeds: encode and decode, pm:handle (with history and
** rollback), a router's handle with its journal, recovery of a journal, and
** compaction.  Each failed call must raise (a memory error, or the
** handler's own error) and leave everything as it was: a flow's state,
** status, version, history and remembered ids; a router's flows, outbox
** and journal bytes; the journal file.  The one exception is documented:
** a router that runs out of memory after its journal took the record
** closes itself, and reopening the journal must give the state with the
** event.  Run under ASan and valgrind by `make sanitize` and `make
** valgrind`, which also catch leaks.
**
** Each test keeps its journals in a directory of its own (temp_journal),
** removed by teardown, which fails the test if a journal was left there:
** names from os.tmpname() with '.pmj' appended could be journals other
** runs left in /tmp, and a router opened on one starts with their flows.
*/
#define _POSIX_C_SOURCE 200809L  /* mkdtemp */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dirent.h>
#include <unistd.h>

#include <cmocka.h>

#include "lauxlib.h"
#include "lualib.h"
#include "limited_alloc.h"

#ifndef PROCMAN_LUA_PATH
#error "build with -DPROCMAN_LUA_PATH=\"<checkout>/lua/?.lua;...\" (the Makefile's LIB_PATH)"
#endif

LUAMOD_API int luaopen_procman_core(lua_State *L);


typedef struct Fixture {
  lua_State *L;
  Limit limit;
  char dir[32];  /* the test's own directory, for its journals */
} Fixture;

static void run(lua_State *L, const char *code) {
  if (luaL_dostring(L, code) != LUA_OK)
    fail_msg("setup chunk failed: %s", lua_tostring(L, -1));
}

/* A flow of the batch workflow with some history, and helpers in Lua. */
static int setup(void **state) {
  Fixture *f = calloc(1, sizeof *f);
  if (f == NULL)
    return -1;
  strcpy(f->dir, "/tmp/procman-oom-XXXXXX");
  if (mkdtemp(f->dir) == NULL) {
    free(f);
    return -1;
  }
  f->L = lua_newstate(limited_alloc, &f->limit);
  if (f->L == NULL)
    return -1;
  luaL_openlibs(f->L);
  lua_pushstring(f->L, f->dir);
  lua_setglobal(f->L, "journal_dir");
  luaL_getsubtable(f->L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(f->L, luaopen_procman_core);
  lua_setfield(f->L, -2, "procman.core");
  lua_pop(f->L, 1);
  run(f->L, "package.path = '" PROCMAN_LUA_PATH "'");
  run(f->L,
      "procman = require 'procman'\n"
      "batch = require 'procman.workflows.batch'\n"
      "pm = batch:new('b1')\n"
      "pm:handle{ event_type = 'batch_created', files = { 'f1', 'f2', 'f3' } }\n"
      "pm:handle{ event_type = 'file_processed', event_id = 'e1', file = { id = 'f1', status = 'success' } }\n"
      "function snapshot()\n"
      "  return procman.encode{ pm:state(), pm:status(), pm:version(), pm:history() }\n"
      "end\n"
      "function ok_event()\n"
      "  return pm:handle{ event_type = 'file_processed', event_id = 'e2',\n"
      "                    file = { id = 'f2', status = 'error' } }\n"
      "end\n"
      "grower = procman.workflow{ name = 'grow', init = function() return { n = 0, items = {} } end,\n"
      "  on = { add = function(state, event)\n"
      "    state.n = state.n + 1                       -- a change first,\n"
      "    state.items[#state.items + 1] = { event.x }  -- then allocations\n"
      "    return { { command_type = 'added', n = state.n, copy = { event.x } } }\n"
      "  end } }\n"
      "g = grower:new('g1')\n"
      "g:handle{ event_type = 'add', x = 1 }\n"
      "function grow_snapshot()\n"
      "  return procman.encode{ g:state(), g:version(), g:history() }\n"
      "end\n"
      "function grow_event()\n"
      "  return g:handle{ event_type = 'add', event_id = 'a2', x = string.rep('x', 100) }\n"
      "end\n"
      "function bad_event()\n"
      "  return pm:handle{ event_type = 'file_processed', event_id = 'e3',\n"
      "                    file = { id = 'f9', status = 'error' } }\n"
      "end\n");
  run(f->L,
      "function file_bytes(path)\n"
      "  local file = assert(io.open(path, 'rb'))\n"
      "  local s = file:read('a')\n"
      "  file:close()\n"
      "  return s\n"
      "end\n"
      "journals = 0\n"
      "function temp_journal()  -- a new name in the test's own directory\n"
      "  journals = journals + 1\n"
      "  local p = journal_dir .. '/j' .. journals .. '.pmj'\n"
      "  assert(io.open(p) == nil, 'a journal is already at ' .. p)\n"
      "  return p\n"
      "end\n"
      "function open_router(path)\n"
      "  return assert(procman.router{ workflows = { batch }, journal = path, sync = 'none' })\n"
      "end\n"
      "function router_state(router)\n"
      "  local flows = {}\n"
      "  for flow in router:flows() do\n"
      "    flows[#flows + 1] = { tostring(flow), flow:state(), flow:version() }\n"
      "  end\n"
      "  table.sort(flows, function(a, b) return a[1] < b[1] end)\n"
      "  local done = {}  -- completed flows, with the ids they keep (bytes)\n"
      "  for flow_id, final in pairs(router.finished.batch) do\n"
      "    local fold = require 'procman.fold'\n"
      "    done[#done + 1] = flow_id .. '=' .. fold.final_status(final) .. ':' .. (fold.final_ids(final) or '')\n"
      "  end\n"
      "  table.sort(done)\n"
      "  local s = router:stats()\n"
      "  return procman.encode{ flows, router:pending(), s.seq, s.completed, done }\n"
      "end\n"
      "function fill(router, n)\n"
      "  for i = 1, n do  -- odd flows' events have ids: completed flows keep them\n"
      "    local odd = i % 2 == 1\n"
      "    router:handle{ event_type = 'batch_created', batch_id = 'b' .. i, files = { 'a', 'b' },\n"
      "                   event_id = odd and 'c' .. i or nil }\n"
      "    router:handle{ event_type = 'file_processed', batch_id = 'b' .. i,\n"
      "                   file = { id = 'a', status = 'success' }, event_id = odd and i or nil }\n"
      "  end\n"
      "  router:ack('batch/b1/1/1')\n"
      "end\n"
      "value = { 1, -2, 3.5, 'text', '\\255binary', true, { a = { b = { c = { 1, 2, 3 } } } },\n"
      "          [-1] = 'negative', [2^40] = 'large' }\n"
      "function codec_roundtrip()\n"
      "  local bytes = procman.encode(value)\n"
      "  assert(procman.encode(procman.decode(bytes)) == bytes)\n"
      "  assert(procman.encode(procman.copy(value)) == bytes)\n"
      "  return bytes\n"
      "end\n"
      "function nothing() return '' end\n"
      "function debug_diff(a, b)\n"
      "  local pretty = require 'procman.pretty'\n"
      "  local function show(x) local ok, v = pcall(procman.decode, x:sub(1, (x:find('procmanJ', 1, true) or 0) - 1)) return ok and pretty.format(v) or #x end\n"
      "  print('BEFORE', show(a)) print('AFTER', show(b))\n"
      "end\n");
  *state = f;
  return 0;
}

/* Remove the test's directory; a file left in it is a journal the test
** forgot to remove: an error (fixtures that leak fill /tmp). */
static int teardown(void **state) {
  Fixture *f = *state;
  int left = 0;
  char path[300];
  struct dirent *e;
  DIR *d;
  lua_close(f->L);
  d = opendir(f->dir);
  while (d != NULL && (e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    snprintf(path, sizeof path, "%s/%s", f->dir, e->d_name);
    print_error("left behind: %s\n", path);
    unlink(path);
    left++;
  }
  if (d != NULL)
    closedir(d);
  rmdir(f->dir);
  free(f);
  return left == 0 ? 0 : -1;
}

/* Push a flow's snapshot, made by global 'fn' (allocation unlimited). */
static void push_snapshot_by(Fixture *f, const char *fn) {
  f->limit.fail_at = 0;
  lua_getglobal(f->L, fn);
  if (lua_pcall(f->L, 0, 1, 0) != LUA_OK)
    fail_msg("snapshot failed: %s", lua_tostring(f->L, -1));
}

static void push_snapshot(Fixture *f) {
  push_snapshot_by(f, "snapshot");
}

/* Call global 'fn' with the k-th allocation failing; returns the status
** and leaves the result or error on the stack. */
static int call_failing_at(Fixture *f, const char *fn, long k) {
  int status;
  lua_getglobal(f->L, fn);
  f->limit.count = 0;
  f->limit.fail_at = k;
  status = lua_pcall(f->L, 0, 1, 0);
  f->limit.fail_at = 0;
  return status;
}

static void assert_same_top_two(lua_State *L) {
  size_t n1, n2;
  const char *a = lua_tolstring(L, -2, &n1);
  const char *b = lua_tolstring(L, -1, &n2);
  if (getenv("OOM_DEBUG") && (n1 != n2 || memcmp(a, b, n1) != 0)) {
    lua_getglobal(L, "debug_diff");
    lua_pushvalue(L, -3);
    lua_pushvalue(L, -3);
    lua_pcall(L, 2, 0, 0);
  }
  assert_int_equal(n1, n2);
  assert_memory_equal(a, b, n1);
}

/*
** Fail every allocation of a successful call of global 'call', in turn;
** after each failure the snapshot made by 'snap' must be unchanged.
** Returns how many failures were tried.
*/
static long fail_each_allocation(Fixture *f, const char *call, const char *snap) {
  lua_State *L = f->L;
  long k;
  lua_settop(L, 0);
  push_snapshot_by(f, snap);                         /* 1: before */
  for (k = 1; k < 100000; k++) {
    int status = call_failing_at(f, call, k);
    if (status == LUA_OK)
      break;
    /* a memory error, possibly wrapped by the flow's message */
    if (status != LUA_ERRMEM && strstr(luaL_tolstring(L, -1, NULL), "not enough memory") == NULL)
      fail_msg("%s, k=%ld: unexpected error: %s", call, k, lua_tostring(L, -1));
    lua_settop(L, 1);
    push_snapshot_by(f, snap);
    assert_same_top_two(L);
    lua_settop(L, 1);
  }
  lua_settop(L, 0);
  return k - 1;
}

static void test_handle_atomic_under_oom(void **state) {
  Fixture *f = *state;
  long tried = fail_each_allocation(f, "ok_event", "snapshot");
  print_message("pm:handle: %ld allocations failed in turn\n", tried);
  assert_true(tried > 1);
  run(f->L, "assert(pm:version() == 3 and pm:state().files.f2 == 'error' and pm:status() == 'error')\n"
            "assert(#ok_event() == 0 and pm:version() == 3)  -- e2 is remembered: a redelivery");
}

/* A handler that allocates after changing the state. */
static void test_handler_allocating_after_a_change(void **state) {
  Fixture *f = *state;
  assert_true(fail_each_allocation(f, "grow_event", "grow_snapshot") > 3);
  run(f->L, "assert(g:version() == 2 and g:state().n == 2 and #g:state().items == 2)");
}

/*
** A flow whose history has grown to its snapshot threshold: the next
** handle() first snapshots the state.  Failing each allocation of that
** call must leave the flow as it was, history included (the snapshot is
** taken whole or not at all); in the end the history starts again.
*/
static void test_snapshot_under_oom(void **state) {
  Fixture *f = *state;
  run(f->L,
      "local function wide() local w = {} for i = 1, 40 do w['k' .. i] = { i } end return w end\n"
      "local snap = procman.workflow{ name = 'snap',  -- a map too large for one pass: unsorted\n"
      "  init = function() return { n = 0, wide = wide() } end,\n"
      "  on = { add = function(state, event) state.n = state.n + 1; state.last = event.pad end,\n"
      "         bad = function(state) state.n = -1; error('refused') end } }\n"
      "sf = snap:new('s1')\n"
      "local function history_bytes()\n"
      "  local n = 0\n"
      "  for _, e in ipairs(sf:history()) do n = n + #procman.encode(e) end\n"
      "  return n\n"
      "end\n"
      "while history_bytes() < 4096 do sf:handle{ event_type = 'add', pad = string.rep('p', 100) } end\n"
      "snap_version = sf:version()\n"
      "function snap_snapshot() return procman.encode{ sf:state(), sf:version(), sf:history() } end\n"
      "function snap_event()\n"
      "  return sf:handle{ event_type = 'add', event_id = 's', pad = string.rep('q', 100) }\n"
      "end\n"
      "function snap_bad() return sf:handle{ event_type = 'bad' } end\n");
  assert_true(fail_each_allocation(f, "snap_event", "snap_snapshot") > 2);
  run(f->L, "assert(sf:version() == snap_version + 1 and #sf:history() == 1)\n"
            "assert(sf:state().n == snap_version + 1 and sf:state().last == string.rep('q', 100))\n"
            "before = snap_snapshot()\n"
            "assert(not pcall(snap_bad) and snap_snapshot() == before)  -- rebuilt from the snapshot\n");
}

/*
** A first event past 64 KB makes the log a Buffer at once, and a log of
** 64 KB or more grows ahead, at once, when it is nearly full
** (grow_log_ahead): failing each allocation of every handle() on the way
** must leave the flow as it was.
*/
static void test_log_growing_ahead_under_oom(void **state) {
  Fixture *f = *state;
  long i;
  run(f->L,
      "local big = procman.workflow{ name = 'big', init = function() return { n = 0 } end,\n"
      "  on = { add = function(state, event) state.n = state.n + 1; state.last = event.pad end } }\n"
      "bf = big:new('b1')\n"
      "local pad_p, pad_q = string.rep('p', 100000), string.rep('q', 4000)  -- made once:\n"
      "-- string.rep's buffer under a failed allocation raises Lua's own odd message\n"
      "function big_first()  -- past 64 KB: the scratch buffer becomes the log\n"
      "  return bf:handle{ event_type = 'add', pad = pad_p }\n"
      "end\n"
      "function big_snapshot() return procman.encode{ bf:state(), bf:version(), bf:history() } end\n"
      "function big_event()\n"
      "  return bf:handle{ event_type = 'add', pad = pad_q .. bf:version() }\n"
      "end\n");
  assert_true(fail_each_allocation(f, "big_first", "big_snapshot") > 0);
  for (i = 0; i < 30; i++)  /* past its 128 KB: one of them grows the log */
    assert_true(fail_each_allocation(f, "big_event", "big_snapshot") > 0);
  run(f->L, "assert(bf:version() == 31 and bf:state().n == 31 and #bf:history() == 31)\n"
            "assert(bf:history()[31].pad == string.rep('q', 4000) .. 30)");
}

/* A handler that refuses the event, with allocations failing meanwhile
** (in the handler, in the replay that undoes it, anywhere). */
static void test_refused_event_under_oom(void **state) {
  Fixture *f = *state;
  lua_State *L = f->L;
  long k;
  push_snapshot(f);                                  /* 1: before */
  for (k = 1; k < 400; k++) {
    int status = call_failing_at(f, "bad_event", k);
    const char *msg = luaL_tolstring(L, -1, NULL);
    assert_int_not_equal(status, LUA_OK);
    if (status != LUA_ERRMEM && strstr(msg, "not in this batch") == NULL &&
        strstr(msg, "not enough memory") == NULL)
      fail_msg("k=%ld: unexpected error: %s", k, msg);
    lua_settop(L, 1);
    push_snapshot(f);
    assert_same_top_two(L);
    lua_settop(L, 1);
  }
}

/* Encode, decode and copy: each either works or raises a memory error. */
static void test_codec_under_oom(void **state) {
  Fixture *f = *state;
  long tried = fail_each_allocation(f, "codec_roundtrip", "nothing");
  print_message("codec: %ld allocations failed in turn\n", tried);
  assert_true(tried > 3);
}

/* Whether global 'r' (a router) closed itself. */
static int router_closed(Fixture *f) {
  int closed;
  f->limit.fail_at = 0;
  run(f->L, "closed = tostring(r) == 'procman.router (closed)'");
  lua_getglobal(f->L, "closed");
  closed = lua_toboolean(f->L, -1);
  lua_pop(f->L, 1);
  return closed;
}

/*
** A router's handle with a journal, each allocation failing in turn: the
** router and its journal stay as they were, or (out of memory after the
** record was journaled) the router closes, and reopening the journal gives
** the router with the event.
*/
static void test_router_handle_under_oom(void **state) {
  Fixture *f = *state;
  lua_State *L = f->L;
  long k, closings = 0;
  run(L, "path = temp_journal()\n"
         "r = open_router(path)\n"
         "fill(r, 3)\n"
         "function router_snapshot() return router_state(r) .. file_bytes(path) end\n"
         "function router_event()\n"
         "  return r:handle{ event_type = 'file_processed', batch_id = 'b2', event_id = 'x',\n"
         "                   file = { id = 'b', status = 'success' } }\n"
         "end");
  for (k = 1; k < 100000; k++) {
    int status;
    lua_settop(L, 0);
    push_snapshot_by(f, "router_snapshot");                 /* 1: before */
    status = call_failing_at(f, "router_event", k);
    if (status == LUA_OK)
      break;
    if (strstr(luaL_tolstring(L, -1, NULL), "not enough memory") == NULL)
      fail_msg("k=%ld: unexpected error: %s", k, lua_tostring(L, -1));
    if (getenv("OOM_DEBUG")) printf("k=%ld err=%s\n", k, lua_tostring(L, -1));
    if (router_closed(f)) {
      closings++;
      run(L, "collectgarbage()\n"
             "r = open_router(path)\n"
             "assert(r:completed('batch', 'b2') == 'success', 'the journaled event is lost')");
      break;
    }
    lua_settop(L, 1);
    push_snapshot_by(f, "router_snapshot");
    assert_same_top_two(L);
  }
  run(L, "assert(r:completed('batch', 'b2') == 'success')\n"
         "r:close()\n"
         "os.remove(path)");
  print_message("router handle: %ld allocations failed in turn (%ld closed the router)\n", k - 1,
                closings);
  assert_true(k > 3 && k < 100000);
}

/*
** The journal's write buffer ("none", "batch") grows by doubling up to a
** chunk, in the state's memory.  With each growth failing in turn, every
** append still succeeds (a record with no room in the buffer is written at
** once, after what the buffer holds), and the file holds every record, in
** order.  Records of 300 to 12,000 bytes make it grow through each size
** and write several chunks.
*/
static void test_journal_buffer_under_oom(void **state) {
  Fixture *f = *state;
  lua_State *L = f->L;
  long k;
  run(L, "core = require 'procman.core'\n"
         "payloads = {}\n"
         "for i = 1, 40 do payloads[i] = string.rep(string.char(65 + i % 26), 300 * i) end\n"
         "function buffer_open()\n"
         "  jpath = temp_journal()\n"
         "  j = assert(core.journal_open(jpath, { sync = 'none' }))\n"
         "end\n"
         "function buffer_appends()\n"
         "  for i = 1, #payloads do assert(j:append(1 + i % 3, payloads[i])) end\n"
         "end\n"
         "function buffer_check()\n"
         "  assert(j:close())\n"
         "  local n, next_record, info = 0, core.journal_scan(jpath)\n"
         "  for _, kind, payload in next_record do\n"
         "    n = n + 1\n"
         "    assert(kind == 1 + n % 3 and payload == payloads[n], 'record ' .. n .. ' differs')\n"
         "  end\n"
         "  assert(n == #payloads and info.dropped == 0, n .. ' records of ' .. #payloads)\n"
         "  os.remove(jpath)\n"
         "end");
  for (k = 1; k < 100; k++) {
    int status;
    run(L, "buffer_open()");
    status = call_failing_at(f, "buffer_appends", k);
    if (status != LUA_OK)
      fail_msg("k=%ld: an append failed for want of memory: %s", k, lua_tostring(L, -1));
    lua_settop(L, 0);
    run(L, "buffer_check()");
    if (f->limit.count < k)  /* the k-th growth never came: all were tried */
      break;
  }
  print_message("journal buffer: %ld growths failed in turn, nothing lost\n", k - 1);
  assert_true(k > 4);
}

/*
** The engine's step (csrc/engine.c) alone, each allocation failing in
** turn, in memory and with a journal, on a fresh router each time: the
** step gives its envelopes, or leaves router, outbox and journal exactly
** as they were (it answers "not mine", which the router takes to its Lua
** path), or failed after the log took the record (the router closes: its
** journal must then hold the event).  "Exactly" includes the outbox's
** index by id (its third user value): an error after the step staged its
** envelopes must take their ids out again.  'event' is a Lua expression.
*/
static void engine_step_under_oom(Fixture *f, int journaled, const char *event) {
  lua_State *L = f->L;
  long k, after_log = 0;
  lua_pushboolean(L, journaled);
  lua_setglobal(L, "with_journal");
  lua_pushfstring(L, "function the_event() return %s end", event);
  run(L, lua_tostring(L, -1));
  lua_pop(L, 1);
  run(L, "function fresh()\n"
         "  if r then r:close() end\n"
         "  if path then os.remove(path) end\n"
         "  path = with_journal and temp_journal() or nil\n"
         "  r = path and open_router(path) or procman.router{ workflows = { batch } }\n"
         "  fill(r, 3)\n"
         "  after_log, ev = false, the_event()\n"
         "end\n"
         "function index_state()  -- the outbox's index by id: a step taken back leaves none\n"
         "  local entries = {}\n"
         "  for id, place in pairs(debug.getuservalue(r.outbox, 3) or {}) do\n"
         "    entries[#entries + 1] = id .. '=' .. tostring(place)\n"
         "  end\n"
         "  table.sort(entries)\n"
         "  return table.concat(entries, ' ')\n"
         "end\n"
         "function step_snapshot()\n"
         "  return router_state(r) .. index_state() .. (path and file_bytes(path) or '')\n"
         "end\n"
         "function step_event()\n"
         "  local out, err, logged = r.engine:step(ev)\n"
         "  if out == false then error('not enough memory (the step left the event)', 0) end\n"
         "  if out == nil then after_log = logged == true; error(err, 0) end\n"
         "  return out\n"
         "end");
  for (k = 1; k < 100000; k++) {
    int status;
    lua_settop(L, 0);
    f->limit.fail_at = 0;
    run(L, "fresh()");  /* closes and removes the last one */
    push_snapshot_by(f, "step_snapshot");                   /* 1: before */
    status = call_failing_at(f, "step_event", k);
    if (status == LUA_OK)
      break;
    if (strstr(luaL_tolstring(L, -1, NULL), "not enough memory") == NULL)
      fail_msg("k=%ld: unexpected error: %s", k, lua_tostring(L, -1));
    lua_getglobal(L, "after_log");
    if (lua_toboolean(L, -1)) {  /* as the router does: close, reopen the journal */
      after_log++;
      f->limit.fail_at = 0;
      run(L, "if path then\n"
             "  r:close(); r = open_router(path)\n"
             "  local before = router_state(r)\n"
             "  assert(not pcall(r.engine.step, r.engine, ev) or router_state(r) == before,\n"
             "         'the journaled event is lost')\n"
             "end");
      continue;
    }
    lua_settop(L, 1);
    push_snapshot_by(f, "step_snapshot");
    assert_same_top_two(L);
  }
  f->limit.fail_at = 0;
  run(L, "r:close(); if path then os.remove(path) end; r, path = nil, nil");
  print_message("engine step (%s, %s): %ld allocations failed in turn (%ld after the log)\n",
                journaled ? "journal" : "memory", event, k - 1, after_log);
  assert_true(k > 3 && k < 100000);
}

static void test_engine_step_under_oom(void **state) {
  static const char *const events[] = {  /* a new flow with commands; flows completing, */
    "{ event_type = 'batch_created', batch_id = 'b9', event_id = 'n', files = { 'a', 'b' } }",
    "{ event_type = 'file_processed', batch_id = 'b2', event_id = 'x', file = { id = 'b', status = 'success' } }",
    "{ event_type = 'file_processed', batch_id = 'b3', event_id = 'y', file = { id = 'b', status = 'success' } }",
    /* envelopes encoded straight into the outbox's buffer, which grows */
    "{ event_type = 'batch_created', batch_id = 'b8', files = { 'f1', 'f2', 'f3', 'f4', 'f5', 'f6', 'f7', 'f8' } }",
  };  /* the second keeping one event id, the third three */
  int i;
  for (i = 0; i < 4; i++) {
    engine_step_under_oom(*state, 0, events[i]);
    engine_step_under_oom(*state, 1, events[i]);
  }
}

/*
** A tick firing timers, each allocation failing in turn.  A tick is atomic
** per timer: the timers before the failing one stay fired.  Whatever
** failed, the router's memory follows its journal (or it closed), and the
** next tick fires exactly the timers left: no timer falls out of the
** router's due index, none fires twice.
*/
static void test_router_tick_under_oom(void **state) {
  Fixture *f = *state;
  lua_State *L = f->L;
  long k, closings = 0;
  run(L, "function open_ticking(p)\n"
         "  return assert(procman.router{ workflows = { batch }, journal = p, sync = 'none',\n"
         "                                clock = function() return 0 end })\n"
         "end\n"
         "function tick_setup()\n"
         "  path = temp_journal()\n"
         "  r = open_ticking(path)\n"
         "  for i = 1, 3 do\n"
         "    r:handle{ event_type = 'batch_created', batch_id = 't' .. i, files = { 'a', 'b' },\n"
         "              file_timeout = 10 * i, max_attempts = 2 }\n"
         "  end\n"
         "  r:handle{ event_type = 'file_processed', batch_id = 't1', file = { id = 'a', status = 'success' } }\n"
         "end\n"
         "function tick_state() return router_state(r) .. procman.encode(r:timers()) end\n"
         "function tick_all() return r:tick(100) end\n"
         "function tick_done()\n"
         "  r:close()\n"
         "  collectgarbage()\n"
         "  os.remove(path)\n"
         "end\n"
         "tick_setup()\n"
         "tick_all()\n"
         "expected = tick_state()\n"         "assert(#r:timers() > 0 and r:stats().seq > 5, 'the timeouts fired and set retries')\n"
         "tick_done()");
  for (k = 1; k < 100000; k++) {
    int status;
    run(L, "tick_setup()");
    status = call_failing_at(f, "tick_all", k);
    if (status == LUA_OK) {
      run(L, "assert(tick_state() == expected)\n"
             "tick_done()");
      break;
    }
    if (!router_closed(f) && strstr(luaL_tolstring(L, -1, NULL), "not enough memory") == NULL)
      fail_msg("k=%ld: unexpected error: %s", k, lua_tostring(L, -1));
    lua_settop(L, 0);
    if (router_closed(f)) {
      closings++;
      run(L, "collectgarbage()\n"
             "r = open_ticking(path)\n"
             "tick_all()\n"
             "assert(tick_state() == expected, 'a timer lost or fired twice across the closing')\n"
             "tick_done()");
      continue;
    }
    run(L, "local memory = tick_state()\n"
           "tick_all()\n"
           "assert(tick_state() == expected, 'the next tick did not fire exactly the timers left')\n"
           "r:close()\n"
           "collectgarbage()\n"
           "r = open_ticking(path)\n"
           "assert(tick_state() == expected, 'the journal differs from the router')\n"
           "tick_done()");
  }
  print_message("router tick: %ld allocations failed in turn (%ld closed the router)\n", k - 1,
                closings);
  assert_true(k > 10 && k < 100000);
}

/* Recovery of a journal, each allocation failing in turn: it works, or
** raises a memory error and leaves the file as it was.  The journal has
** flows live at its end (their records replayed through the handlers) and
** one that completes (folded from its records alone, procman.fold); with
** 'compacted', it is compacted first (types 3 to 6), and one more event
** follows.  Its records are all taken by recovery's scan in C
** (fold_scan.c: its allocations fail in turn too). */
static void recovery_under_oom(Fixture *f, int compacted) {
  lua_State *L = f->L;
  long k;
  lua_pushboolean(L, compacted);
  lua_setglobal(L, "compacted");
  run(L, "path = temp_journal()\n"
         "local w = open_router(path)\n"
         "fill(w, 4)\n"
         "w:handle{ event_type = 'file_processed', batch_id = 'b4', file = { id = 'b', status = 'success' } }\n"
         "assert(w:completed('batch', 'b4') == 'success')\n"
         "w:handle{ event_type = 'file_processed', batch_id = 'b3', event_id = 'z',\n"
         "          file = { id = 'b', status = 'success' } }  -- completes, keeping its ids\n"
         "if compacted then\n"
         "  assert(w:compact())\n"
         "  w:handle{ event_type = 'file_processed', batch_id = 'b2', file = { id = 'b', status = 'error' } }\n"
         "end\n"
         "expected = router_state(w)\n"
         "w:close()\n"
         "bytes = file_bytes(path)\n"
         "local j = assert(require('procman.core').journal_open(path))\n"
         "local scanned, stopped = require('procman.core').fold_scan(j, { 'batch' }):result()\n"
         "j:close()\n"
         "assert(scanned > 4 and stopped == nil, 'the scan in C does not take every record')\n"
         "function recover()\n"
         "  local again = open_router(path)\n"
         "  local state = router_state(again)\n"
         "  again:close()\n"
         "  return state\n"
         "end");
  for (k = 1; k < 100000; k++) {
    int status = call_failing_at(f, "recover", k);
    const char *msg;
    if (status == LUA_OK) {
      run(L, "assert(recover() == expected)");
      break;
    }
    msg = luaL_tolstring(L, -1, NULL);
    if (strstr(msg, "not enough memory") == NULL)
      fail_msg("k=%ld: unexpected error: %s", k, msg);
    lua_settop(L, 0);
    f->limit.fail_at = 0;
    run(L, "collectgarbage()  -- a half-opened journal lets its lock go\n"
           "assert(file_bytes(path) == bytes, 'recovery changed the journal')");
  }
  run(L, "os.remove(path)");
  print_message("recovery%s: %ld allocations failed in turn\n", compacted ? " (compacted)" : "", k - 1);
  assert_true(k > 10 && k < 100000);
}

static void test_recovery_under_oom(void **state) {
  recovery_under_oom(*state, 0);
}

static void test_compacted_recovery_under_oom(void **state) {
  recovery_under_oom(*state, 1);
}

/* Compaction, each allocation failing in turn: it works; or it fails and
** the router and the journal are as they were; or, past the rename, the
** router closes and reopening the journal gives the same state. */
static void test_compaction_under_oom(void **state) {
  Fixture *f = *state;
  lua_State *L = f->L;
  long k;
  run(L, "path = temp_journal()\n"
         "r = open_router(path)\n"
         "fill(r, 4)\n"
         "expected = router_state(r)\n"
         "function compact_snapshot() return router_state(r) .. file_bytes(path) end\n"
         "function compact() assert(r:compact()) return true end");
  for (k = 1; k < 100000; k++) {
    int status;
    lua_settop(L, 0);
    push_snapshot_by(f, "compact_snapshot");                /* 1: before */
    status = call_failing_at(f, "compact", k);
    if (status == LUA_OK)
      break;
    /* past the rename the router closes, whatever the error (out of
    ** memory, Lua may fail to even make a call and say something else) */
    if (!router_closed(f) && strstr(luaL_tolstring(L, -1, NULL), "not enough memory") == NULL)
      fail_msg("k=%ld: unexpected error: %s", k, lua_tostring(L, -1));
    if (router_closed(f)) {
      run(L, "collectgarbage()\n"
             "r = open_router(path)\n"
             "assert(router_state(r) == expected, 'compaction lost state')");
      continue;
    }
    lua_settop(L, 1);
    push_snapshot_by(f, "compact_snapshot");
    assert_same_top_two(L);
  }
  run(L, "assert(router_state(r) == expected)\n"
         "r:close()\n"
         "collectgarbage()\n"
         "assert(router_state(open_router(path)) == expected)\n"
         "collectgarbage()\n"
         "os.remove(path)\n"
         "os.remove(path .. '.compact')");
  print_message("compaction: %ld allocations failed in turn\n", k - 1);
  assert_true(k > 10 && k < 100000);  /* and in the end it worked */
}

/*
** r:dispatch, each allocation failing in turn, in memory and with a
** journal: no command is lost or made up.  The dispatch fails (a command
** whose ack failed stays pending: at least once), or the router closes
** (an ack was journaled, and the outbox could not follow: reopening the
** journal gives its outbox); either way every command pending before is
** still pending or was handed to fn, nothing else is pending, and a
** dispatch with memory to spare hands out exactly those left and empties
** the outbox.
*/
static void dispatch_under_oom(Fixture *f, int journaled) {
  lua_State *L = f->L;
  long k, closings = 0;
  lua_pushboolean(L, journaled);
  lua_setglobal(L, "with_journal");
  run(L, "function dispatch_fresh()\n"
         "  if r then r:close() end\n"
         "  if path then os.remove(path) end\n"
         "  path = with_journal and temp_journal() or nil\n"
         "  r = path and open_router(path) or procman.router{ workflows = { batch } }\n"
         "  fill(r, 3)\n"
         "  before, seen = {}, {}\n"
         "  for _, e in ipairs(r:pending()) do before[#before + 1] = e.id end\n"
         "end\n"
         "function dispatch_run()\n"
         "  local count, err = r:dispatch(function(_, e) seen[#seen + 1] = e.id end)\n"
         "  if err then error(err, 0) end\n"
         "  return count\n"
         "end\n"
         "function dispatch_check()\n"
         "  local was, left, handed, n = {}, {}, {}, 0\n"
         "  for _, id in ipairs(before) do was[id] = true end\n"
         "  for _, id in ipairs(seen) do handed[id] = true end\n"
         "  for _, e in ipairs(r:pending()) do\n"
         "    assert(was[e.id], 'made up: ' .. e.id)\n"
         "    left[e.id], n = true, n + 1\n"
         "  end\n"
         "  for _, id in ipairs(before) do assert(left[id] or handed[id], 'lost: ' .. id) end\n"
         "  assert(r:stats().pending == n)\n"
         "  assert(r:dispatch(function(_, e) assert(left[e.id]); left[e.id] = nil end) == n)\n"
         "  assert(next(left) == nil and r:stats().pending == 0 and #r:pending() == 0)\n"
         "end");
  for (k = 1; k < 100000; k++) {
    int status;
    lua_settop(L, 0);
    f->limit.fail_at = 0;
    run(L, "dispatch_fresh()");
    status = call_failing_at(f, "dispatch_run", k);
    if (status == LUA_OK)
      break;
    if (!router_closed(f) && strstr(luaL_tolstring(L, -1, NULL), "not enough memory") == NULL)
      fail_msg("k=%ld: unexpected error: %s", k, lua_tostring(L, -1));
    f->limit.fail_at = 0;
    if (router_closed(f)) {
      closings++;
      if (!journaled)
        continue;  /* nothing to reopen */
      run(L, "collectgarbage(); r = open_router(path)");
    }
    run(L, "dispatch_check()");
  }
  f->limit.fail_at = 0;
  run(L, "dispatch_check(); r:close(); if path then os.remove(path) end; r, path = nil, nil");
  print_message("dispatch (%s): %ld allocations failed in turn (%ld closed the router)\n",
                journaled ? "journal" : "memory", k - 1, closings);
  assert_true(k > 3 && k < 100000);
}

static void test_dispatch_under_oom(void **state) {
  dispatch_under_oom(*state, 0);
  dispatch_under_oom(*state, 1);
}

/*
** r:ack of every pending command (the outbox's own ack: a router without
** hooks; the first makes the index by id), in memory and with a journal,
** each allocation failing in turn:
** an ack that fails changes nothing (its command is still pending, and
** reopening the journal gives the same outbox); those that worked are
** gone, there too; the rest can be acked once memory is back.
*/
static void ack_under_oom(Fixture *f, int journaled) {
  lua_State *L = f->L;
  long k;
  lua_pushboolean(L, journaled);
  lua_setglobal(L, "with_journal");
  run(L, "function ack_fresh()\n"
         "  if r then r:close() end\n"
         "  if path then os.remove(path) end\n"
         "  path = with_journal and temp_journal() or nil\n"
         "  r = path and open_router(path) or procman.router{ workflows = { batch } }\n"
         "  for i = 1, 3 do  -- (no ack yet: the first makes the index by id)\n"
         "    r:handle{ event_type = 'batch_created', batch_id = 'b' .. i, files = { 'a', 'b' } }\n"
         "  end\n"
         "  before, acked = {}, {}\n"
         "  for _, e in ipairs(r:pending()) do before[#before + 1] = e.id; acked[e.id] = false end\n"
         "end\n"
         "function ack_run()\n"
         "  for _, id in ipairs(before) do\n"
         "    if r:ack(id) then acked[id] = true end  -- (no allocation: the key exists)\n"
         "  end\n"
         "end\n"
         "function pending_ids(router)\n"
         "  local ids = {}\n"
         "  for _, e in ipairs(router:pending()) do ids[#ids + 1] = e.id end\n"
         "  return table.concat(ids, ' ')\n"
         "end\n"
         "function ack_check()\n"
         "  local left = {}\n"
         "  for _, id in ipairs(before) do if not acked[id] then left[#left + 1] = id end end\n"
         "  assert(pending_ids(r) == table.concat(left, ' '), 'outbox: ' .. pending_ids(r))\n"
         "  if path then\n"
         "    r:close(); collectgarbage(); r = open_router(path)\n"
         "    assert(pending_ids(r) == table.concat(left, ' '), 'journal: ' .. pending_ids(r))\n"
         "  end\n"
         "  for _, id in ipairs(left) do assert(r:ack(id)) end\n"
         "  assert(r:stats().pending == 0 and #r:pending() == 0)\n"
         "end");
  for (k = 1; k < 100000; k++) {
    int status;
    lua_settop(L, 0);
    f->limit.fail_at = 0;
    run(L, "ack_fresh()");
    status = call_failing_at(f, "ack_run", k);
    if (status == LUA_OK)
      break;
    if (strstr(luaL_tolstring(L, -1, NULL), "not enough memory") == NULL)
      fail_msg("k=%ld: unexpected error: %s", k, lua_tostring(L, -1));
    f->limit.fail_at = 0;
    run(L, "ack_check()");
  }
  f->limit.fail_at = 0;
  run(L, "ack_check(); r:close(); if path then os.remove(path) end; r, path = nil, nil");
  print_message("r:ack (%s): %ld allocations failed in turn\n",
                journaled ? "journal" : "memory", k - 1);
  assert_true(k > 1 && k < 100000);
}

static void test_ack_under_oom(void **state) {
  ack_under_oom(*state, 0);
  ack_under_oom(*state, 1);
}

/*
** outbox:push and outbox:push_deferred (the Lua path's emission) on an
** outbox whose index by id is made, each allocation failing in turn: the
** outbox is as it was (size, and which ids it has), or the command is
** pending and found by its id.  Outboxes of 1..9 commands before, so that
** the index's table has to grow at some size.
*/
static void test_outbox_push_under_oom(void **state) {
  Fixture *f = *state;
  long tried = 0;
  int before, deferred;
  for (deferred = 0; deferred <= 1; deferred++)
    for (before = 1; before <= 9; before++) {
      lua_pushinteger(f->L, before);
      lua_setglobal(f->L, "before");
      lua_pushboolean(f->L, deferred);
      lua_setglobal(f->L, "deferred");
      run(f->L, "ob = require('procman.outbox').new()\n"
                "for i = 1, before do ob:push(procman.encode{ id = 'c' .. i }, 'c' .. i) end\n"
                "assert(ob:has('c1'))  -- the index is made\n"
                "if deferred then ob:defer() end\n"
                "function push_one()\n"
                "  if deferred then ob:push_deferred{ id = 'new' }\n"
                "  else ob:push(procman.encode{ id = 'new' }, 'new') end\n"
                "end\n"
                "function outbox_snapshot()\n"
                "  local s = { ob:size() }\n"
                "  for i = 1, before do s[#s + 1] = tostring(ob:has('c' .. i)) end\n"
                "  s[#s + 1] = tostring(ob:has('new'))\n"
                "  return table.concat(s, ' ')\n"
                "end");
      tried += fail_each_allocation(f, "push_one", "outbox_snapshot");
      run(f->L, "assert(ob:size() == before + 1 and ob:has('new'))");
    }
  print_message("outbox push: %ld allocations failed in turn\n", tried);
  assert_true(tried > 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(test_handle_atomic_under_oom, setup, teardown),
    cmocka_unit_test_setup_teardown(test_handler_allocating_after_a_change, setup, teardown),
    cmocka_unit_test_setup_teardown(test_refused_event_under_oom, setup, teardown),
    cmocka_unit_test_setup_teardown(test_snapshot_under_oom, setup, teardown),
    cmocka_unit_test_setup_teardown(test_log_growing_ahead_under_oom, setup, teardown),
    cmocka_unit_test_setup_teardown(test_codec_under_oom, setup, teardown),
    cmocka_unit_test_setup_teardown(test_router_handle_under_oom, setup, teardown),
    cmocka_unit_test_setup_teardown(test_journal_buffer_under_oom, setup, teardown),
    cmocka_unit_test_setup_teardown(test_engine_step_under_oom, setup, teardown),
    cmocka_unit_test_setup_teardown(test_router_tick_under_oom, setup, teardown),
    cmocka_unit_test_setup_teardown(test_recovery_under_oom, setup, teardown),
    cmocka_unit_test_setup_teardown(test_compacted_recovery_under_oom, setup, teardown),
    cmocka_unit_test_setup_teardown(test_compaction_under_oom, setup, teardown),
    cmocka_unit_test_setup_teardown(test_dispatch_under_oom, setup, teardown),
    cmocka_unit_test_setup_teardown(test_ack_under_oom, setup, teardown),
    cmocka_unit_test_setup_teardown(test_outbox_push_under_oom, setup, teardown),
  };
  return cmocka_run_group_tests_name("the core under memory failure", tests, NULL, NULL);
}
