/*
** test_pattern.c - procman's pattern matcher (pattern.c) against Lua's
** string.find, and the guard (budget.c) under memory failure.
**
** Differential: tens of thousands of patterns and subjects made from a
** small alphabet of pattern items; for each, string.find (run in a Lua
** state) and pattern.c must agree on whether there is a match, where, and
** on every capture, or must both reject the pattern with the same message.
** Pattern and subject are copied into buffers of their exact size (no
** terminating '\0'), so that ASan and valgrind catch a read past either.
**
** OOM: guarded calls (the sandbox's gsub and find, string building, a
** memory budget) with the k-th allocation failing, for every k until the
** call succeeds: no crash, no leak, and the state's allocator and hook are
** put back every time.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lauxlib.h"
#include "lualib.h"
#include "limited_alloc.h"
#include "pattern.h"
#include "pattern_compare.h"

LUAMOD_API int luaopen_procman_core(lua_State *L);

/* ===================================================================
** Differential test
** =================================================================== */

static unsigned long long rng_state = 88172645463325252ULL;

static unsigned next_random(unsigned n) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (unsigned)(rng_state % n);
}

static const char *const ATOMS[] = {
  "a", "b", ".", "%a", "%d", "%s", "%w", "%A", "[ab]", "[^a]", "[a-c]", "[%d_]", "[]]", "(", ")",
  "()", "%b()", "%f[%w]", "%f[%W]", "%1", "%2", "^", "$", "*", "+", "-", "?", "%%", "x", "%",
  "[", "%b", "%0", "(a)", "(.-)", "%z", "%Z", "[%z]",
};
static const char SUBJECT_CHARS[] = "abc() 1x%_]z\0";

static void random_text(char *out, size_t *len, size_t max, int pattern) {
  size_t n = 0, k, count = next_random((unsigned)max);
  for (k = 0; k < count; k++) {
    if (pattern) {
      const char *atom = ATOMS[next_random(sizeof ATOMS / sizeof ATOMS[0])];
      size_t l = strlen(atom);
      if (n + l > 64)
        break;
      memcpy(out + n, atom, l);
      n += l;
    }
    else
      out[n++] = SUBJECT_CHARS[next_random(sizeof SUBJECT_CHARS - 1)];
  }
  *len = n;
}

static void test_agrees_with_string_find(void **state) {
  lua_State *L = luaL_newstate();
  char ptext[80], stext[32];
  long cases, matched = 0, errors = 0;
  (void)state;
  luaL_openlibs(L);
  for (cases = 0; cases < 40000; cases++) {
    size_t lp, ls;
    char *p, *s;
    Text want = { { 0 }, 0 }, got = { { 0 }, 0 };
    random_text(ptext, &lp, 8, 1);
    random_text(stext, &ls, 14, 0);
    p = malloc(lp + 1);  /* exact sizes (+1: malloc(0) may be NULL) */
    s = malloc(ls + 1);
    assert_non_null(p);
    assert_non_null(s);
    memcpy(p, ptext, lp);
    memcpy(s, stext, ls);
    describe_lua(L, s, ls, p, lp, &want);
    assert_int_not_equal(describe_ours(s, ls, p, lp, 1LL << 40, &got), PATTERN_STEPS);
    if (strcmp(want.s, got.s) != 0)
      fail_msg("pattern \"%.*s\" on \"%.*s\": string.find gives %s, pattern.c %s", (int)lp, p,
               (int)ls, s, want.s, got.s);
    errors += strncmp(want.s, "error", 5) == 0;
    matched += strncmp(want.s, "error", 5) != 0 && strncmp(want.s, "v:nil", 5) != 0;
    free(p);
    free(s);
  }
  assert_true(matched > 1000);  /* the cases cover matches and errors */
  assert_true(errors > 1000);
  lua_close(L);
}

/* Cases libFuzzer found (fuzz/regressions/pattern/): pattern, subject. */
static const char *const FOUND[][2] = {
  { "%f[%w]%z)", " fo[%w]%z) foxx" },  /* %z: the zero byte, not a 'z' */
  { "[#+$[+-%%]", "]\nb" },          /* the range ends at the first '%': the second escapes ']' */
};

static void test_cases_fuzzing_found(void **state) {
  lua_State *L = luaL_newstate();
  size_t i;
  (void)state;
  luaL_openlibs(L);
  for (i = 0; i < sizeof FOUND / sizeof FOUND[0]; i++) {
    const char *p = FOUND[i][0], *s = FOUND[i][1];
    Text want = { { 0 }, 0 }, got = { { 0 }, 0 };
    describe_lua(L, s, strlen(s), p, strlen(p), &want);
    assert_int_not_equal(describe_ours(s, strlen(s), p, strlen(p), 1LL << 40, &got), PATTERN_STEPS);
    if (strcmp(want.s, got.s) != 0)
      fail_msg("pattern \"%s\" on \"%s\": string.find gives %s, pattern.c %s", p, s, want.s, got.s);
  }
  lua_close(L);
}

/* ===================================================================
** Limits
** =================================================================== */

static void test_step_limit(void **state) {
  static char subject[30000];
  char pattern[64];
  PatternMatch m;
  int i;
  (void)state;
  memset(subject, 'a', sizeof subject);
  for (i = 0; i < 30; i++)
    memcpy(pattern + 2 * i, "a*", 2);
  pattern[60] = 'b';
  pattern_init(&m, subject, sizeof subject, pattern, 61, 1000000);
  assert_null(pattern_match_at(&m, subject, pattern));
  assert_int_equal(m.status, PATTERN_STEPS);
  assert_true(m.steps <= 1000000);
}

static void test_too_complex(void **state) {
  static char pattern[2 * 300];
  static char subject[300];
  PatternMatch m;
  int i;
  (void)state;
  for (i = 0; i < 300; i++)
    memcpy(pattern + 2 * i, "a?", 2);
  memset(subject, 'a', sizeof subject);
  pattern_init(&m, subject, sizeof subject, pattern, sizeof pattern, 1LL << 40);
  assert_null(pattern_match_at(&m, subject, pattern));
  assert_int_equal(m.status, PATTERN_ERROR);
  assert_string_equal(m.why, "pattern too complex");
}

/* ===================================================================
** The guard when memory runs out
** =================================================================== */


static const char GUARDED[] =
  "local core = require 'procman.core'\n"
  "local sandbox = core.guard_flags.sandbox\n"
  "local f = core.guard(function(s)\n"
  "  local t = {}\n"
  "  for w in core.pattern_gmatch(s, '%a+') do t[#t + 1] = w end\n"
  "  local r = core.pattern_gsub(s, '(%a)(%a*)', function(a, b) return b .. a end)\n"
  "  return table.concat(t, ','), r, core.pattern_find(s, '(o)(r)')\n"
  "end, 1000000, 1000000, sandbox)\n"
  "local g = core.guard(function() local t = {} for i = 1, 1e6 do t[i] = { i } end end,\n"
  "                     0, 100000)\n"
  "function run_guarded()\n"
  "  local ok, why = pcall(g)\n"
  "  assert(not ok and why:find('memory budget', 1, true) or why:find('not enough memory'), why)\n"
  "  return f('hello world, or not')\n"
  "end\n";

static void test_guard_under_memory_failure(void **state) {
  Limit limit = { 0, 0 };
  lua_State *L = lua_newstate(limited_alloc, &limit);
  long k;
  int done = 0;
  (void)state;
  assert_non_null(L);
  luaL_openlibs(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_procman_core);
  lua_setfield(L, -2, "procman.core");
  lua_pop(L, 1);
  if (luaL_dostring(L, GUARDED) != LUA_OK)
    fail_msg("setup: %s", lua_tostring(L, -1));
  for (k = 1; !done; k++) {
    void *ud;
    int status;
    lua_getglobal(L, "run_guarded");
    limit.count = 0;
    limit.fail_at = k;
    status = lua_pcall(L, 0, 4, 0);
    limit.fail_at = 0;
    assert_true(lua_getallocf(L, &ud) == limited_alloc);  /* the guard put it back */
    assert_ptr_equal(ud, &limit);
    assert_null(lua_gethook(L));
    if (status == LUA_OK) {
      assert_string_equal(lua_tostring(L, -4), "hello,world,or,not");
      assert_string_equal(lua_tostring(L, -3), "elloh orldw, ro otn");
      assert_int_equal(lua_tointeger(L, -2), 8);
      assert_int_equal(lua_tointeger(L, -1), 9);
      done = 1;
    }
    lua_settop(L, 0);
    assert_true(k < 100000);
  }
  lua_close(L);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_agrees_with_string_find),
    cmocka_unit_test(test_cases_fuzzing_found),
    cmocka_unit_test(test_step_limit),
    cmocka_unit_test(test_too_complex),
    cmocka_unit_test(test_guard_under_memory_failure),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
