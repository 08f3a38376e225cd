/*
** test_pm_oom.c - pm:handle under memory failure.
**
** A lua_State whose allocator fails at the k-th allocation, for every k
** until the call succeeds: each failed handle() must raise (a memory error,
** or the handler's own error) and leave the flow exactly as it was: state,
** status, version, history and remembered event ids.  Run under ASan and
** valgrind by `make sanitize` and `make valgrind`, which also catch leaks.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lauxlib.h"
#include "lualib.h"

#ifndef PROCMAN_LUA_DIR
#error "build with -DPROCMAN_LUA_DIR=\"<checkout>/lua\""
#endif

LUAMOD_API int luaopen_procman_core(lua_State *L);

/* An allocator that fails every growing request once 'fail_at' is hit. */
typedef struct Limit {
  long count;     /* growing requests since armed */
  long fail_at;   /* 0: never fail */
} Limit;

static void *limited_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  Limit *limit = (Limit *)ud;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  /* Lua requires that shrinking never fails: only growing requests count */
  if (limit->fail_at > 0 && (ptr == NULL || nsize > osize) &&
      ++limit->count >= limit->fail_at)
    return NULL;
  return realloc(ptr, nsize);
}

typedef struct Fixture {
  lua_State *L;
  Limit limit;
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
  f->L = lua_newstate(limited_alloc, &f->limit);
  if (f->L == NULL)
    return -1;
  luaL_openlibs(f->L);
  luaL_getsubtable(f->L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(f->L, luaopen_procman_core);
  lua_setfield(f->L, -2, "procman.core");
  lua_pop(f->L, 1);
  run(f->L, "package.path = '" PROCMAN_LUA_DIR "/?.lua;" PROCMAN_LUA_DIR "/?/init.lua'");
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
  *state = f;
  return 0;
}

static int teardown(void **state) {
  Fixture *f = *state;
  lua_close(f->L);
  free(f);
  return 0;
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
  assert_true(fail_each_allocation(f, "ok_event", "snapshot") > 1);
  run(f->L, "assert(pm:version() == 3 and pm:state().files.f2 == 'error' and pm:status() == 'error')\n"
            "assert(#ok_event() == 0 and pm:version() == 3)  -- e2 is remembered: a redelivery");
}

/* A handler that allocates after changing the state. */
static void test_handler_allocating_after_a_change(void **state) {
  Fixture *f = *state;
  assert_true(fail_each_allocation(f, "grow_event", "grow_snapshot") > 3);
  run(f->L, "assert(g:version() == 2 and g:state().n == 2 and #g:state().items == 2)");
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

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(test_handle_atomic_under_oom, setup, teardown),
    cmocka_unit_test_setup_teardown(test_handler_allocating_after_a_change, setup, teardown),
    cmocka_unit_test_setup_teardown(test_refused_event_under_oom, setup, teardown),
  };
  return cmocka_run_group_tests_name("pm under memory failure", tests, NULL, NULL);
}
