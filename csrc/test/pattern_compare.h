/*
** pattern_compare.h - for the pattern matcher's tests (the cmocka test and
** the fuzz harness): describe what string.find and pattern.c find, as text
** to compare.
*/
#ifndef PROCMAN_TEST_PATTERN_COMPARE_H
#define PROCMAN_TEST_PATTERN_COMPARE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lauxlib.h"
#include "pattern.h"

/* What a find returned, as text to compare: "s:<string>|" or "v:<value>|"
** per result, or "error: <message>". */
typedef struct Text {
  char s[8192];
  size_t n;
} Text;

static void add(Text *t, const char *data, size_t len) {
  if (t->n + len >= sizeof t->s)  /* never with the tests' sizes */
    abort();
  memcpy(t->s + t->n, data, len);
  t->n += len;
  t->s[t->n] = '\0';
}

static void addf(Text *t, const char *fmt, int value) {
  char scratch[32];
  int n = snprintf(scratch, sizeof scratch, fmt, value);
  add(t, scratch, (size_t)n);
}

static void describe_lua(lua_State *L, const char *s, size_t ls, const char *p, size_t lp, Text *t) {
  int i, top = lua_gettop(L);
  lua_getglobal(L, "string");
  lua_getfield(L, -1, "find");
  lua_pushlstring(L, s, ls);
  lua_pushlstring(L, p, lp);
  if (lua_pcall(L, 2, LUA_MULTRET, 0) != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    const char *why = strstr(msg, "' (");  /* "bad argument #2 to 'find' (why)" */
    add(t, "error: ", 7);
    if (why != NULL)
      add(t, why + 3, strlen(why + 3) - 1);
    else
      add(t, msg, strlen(msg));
    lua_settop(L, top);
    return;
  }
  for (i = top + 2; i <= lua_gettop(L); i++) {
    size_t len;
    const char *v;
    if (lua_type(L, i) == LUA_TSTRING) {
      add(t, "s:", 2);
      v = lua_tolstring(L, i, &len);
      add(t, v, len);
    }
    else if (lua_isnil(L, i))
      add(t, "v:nil", 5);
    else
      addf(t, "v:%d", (int)lua_tointeger(L, i));
    add(t, "|", 1);
  }
  lua_settop(L, top);
}

/* The same with pattern.c, in the same words; returns PATTERN_STEPS (and
** describes nothing) when 'max_steps' were not enough. */
static PatternStatus describe_ours(const char *s, size_t ls, const char *p, size_t lp,
                                   long long max_steps, Text *t) {
  PatternMatch m;
  const char *at = s, *e = NULL;
  int anchor = lp > 0 && p[0] == '^', i;
  pattern_init(&m, s, ls, p, lp, max_steps);
  if (!pattern_has_specials(p, lp)) {
    e = pattern_find_plain(&m, s, ls, p, lp);
    if (e == NULL)
      add(t, "v:nil|", 6);
    else {
      addf(t, "v:%d|", (int)(e - s) + 1);
      addf(t, "v:%d|", (int)(e - s + (ptrdiff_t)lp));
    }
    return m.status;
  }
  do {
    e = pattern_match_at(&m, at, p + anchor);
    if (m.status == PATTERN_ERROR) {
      add(t, "error: ", 7);
      add(t, m.why, strlen(m.why));
      return PATTERN_ERROR;
    }
  } while (e == NULL && at++ < s + ls && !anchor);
  if (m.status == PATTERN_STEPS)
    return PATTERN_STEPS;
  if (e == NULL) {
    add(t, "v:nil|", 6);
    return PATTERN_OK;
  }
  addf(t, "v:%d|", (int)(at - s) + 1);
  addf(t, "v:%d|", (int)(e - s));
  for (i = 0; i < m.level; i++) {
    if (m.capture[i].len == PATTERN_CAP_OPEN) {
      t->n = 0;
      add(t, "error: unfinished capture", 25);
      return PATTERN_OK;
    }
    if (m.capture[i].len == PATTERN_CAP_POSITION)
      addf(t, "v:%d", (int)(m.capture[i].init - s) + 1);
    else {
      add(t, "s:", 2);
      add(t, m.capture[i].init, (size_t)m.capture[i].len);
    }
    add(t, "|", 1);
  }
  return PATTERN_OK;
}

#endif
