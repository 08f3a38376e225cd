/*
** pattern_lua.c - string.find, match, gmatch and gsub on procman's own
** matcher (pattern.c), for the sandbox: the same functions as Lua's, whose
** matching steps are charged to the running call's budget (budget.c).
**
** The matcher is given what the budget has left as its step limit; after
** each match, and before any Lua code runs (a gsub replacement function,
** a table's __index), the steps taken are charged.  A match that runs out
** of steps charges more than is left, which raises the budget's error.
*/
#include <ctype.h>
#include <string.h>

#include "lauxlib.h"
#include "budget.h"
#include "pattern.h"
#include "pattern_lua.h"

/* Charge the steps taken so far (raising when past the budget, or for a
** malformed pattern) and start counting afresh from what is left. */
static void settle(lua_State *L, PatternMatch *m) {
  if (m->status == PATTERN_ERROR)
    luaL_error(L, "%s", m->why);
  if (m->status == PATTERN_STEPS)
    budget_charge(L, m->max_steps + 1);  /* more than is left: raises */
  budget_charge(L, m->steps);
  m->steps = 0;
  m->max_steps = budget_left(L);
}

/* The 0-based index where a search starting at Lua position 'pos' begins
** (may be past the end: no match). */
static size_t start_index(lua_Integer pos, size_t len) {
  if (pos > 0)
    return (size_t)pos - 1;
  if (pos == 0 || pos < -(lua_Integer)len)
    return 0;
  return len - (size_t)(-pos);
}

/* Push capture i of the match s..e (the whole match when there are no
** captures and i is 0). */
static void push_capture(lua_State *L, PatternMatch *m, int i, const char *s, const char *e) {
  ptrdiff_t len;
  if (i >= m->level) {
    if (i != 0)
      luaL_error(L, "invalid capture index %%%d", i + 1);
    lua_pushlstring(L, s, (size_t)(e - s));
    return;
  }
  len = m->capture[i].len;
  if (len == PATTERN_CAP_OPEN)
    luaL_error(L, "unfinished capture");
  if (len == PATTERN_CAP_POSITION)
    lua_pushinteger(L, (lua_Integer)(m->capture[i].init - m->src_init) + 1);
  else
    lua_pushlstring(L, m->capture[i].init, (size_t)len);
}

/* Push the captures (or, with 'whole' and none, the whole match s..e). */
static int push_captures(lua_State *L, PatternMatch *m, const char *s, const char *e, int whole) {
  int i, n = (m->level == 0 && whole) ? 1 : m->level;
  luaL_checkstack(L, n, "too many captures");
  for (i = 0; i < n; i++)
    push_capture(L, m, i, s, e);
  return n;
}

/* ===================================================================
** find, match
** =================================================================== */

static int plain_find(lua_State *L, PatternMatch *m, size_t init, const char *p, size_t lp) {
  const char *hit = pattern_find_plain(m, m->src_init + init,
                                       (size_t)(m->src_end - m->src_init) - init, p, lp);
  settle(L, m);
  if (hit == NULL) {
    luaL_pushfail(L);
    return 1;
  }
  lua_pushinteger(L, (lua_Integer)(hit - m->src_init) + 1);
  lua_pushinteger(L, (lua_Integer)(hit - m->src_init) + (lua_Integer)lp);
  return 2;
}

static int find_or_match(lua_State *L, int find) {
  size_t ls, lp;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  size_t init = start_index(luaL_optinteger(L, 3, 1), ls);
  const char *at;
  int anchor;
  PatternMatch m;
  if (init > ls) {
    luaL_pushfail(L);
    return 1;
  }
  pattern_init(&m, s, ls, p, lp, budget_left(L));
  if (find && (lua_toboolean(L, 4) || !pattern_has_specials(p, lp)))
    return plain_find(L, &m, init, p, lp);
  anchor = lp > 0 && *p == '^';
  at = s + init;
  do {
    const char *e = pattern_match_at(&m, at, p + anchor);
    settle(L, &m);
    if (e != NULL) {
      if (!find)
        return push_captures(L, &m, at, e, 1);
      lua_pushinteger(L, (lua_Integer)(at - s) + 1);
      lua_pushinteger(L, (lua_Integer)(e - s));
      return push_captures(L, &m, NULL, NULL, 0) + 2;
    }
  } while (at++ < m.src_end && !anchor);
  luaL_pushfail(L);
  return 1;
}

/* string.find(s, pattern[, init[, plain]]) */
int pattern_lua_find(lua_State *L) {
  return find_or_match(L, 1);
}

/* string.match(s, pattern[, init]) */
int pattern_lua_match(lua_State *L) {
  return find_or_match(L, 0);
}

/* ===================================================================
** gmatch
** =================================================================== */

/* Where the iteration is (offsets into the subject). */
typedef struct GmatchState {
  size_t next;       /* where the next search starts */
  size_t last;       /* the end of the last match, or (size_t)-1 */
} GmatchState;

/* The iterator: upvalues subject, pattern, state. */
static int gmatch_next(lua_State *L) {
  size_t ls, lp;
  const char *s = lua_tolstring(L, lua_upvalueindex(1), &ls);
  const char *p = lua_tolstring(L, lua_upvalueindex(2), &lp);
  GmatchState *gm = (GmatchState *)lua_touserdata(L, lua_upvalueindex(3));
  PatternMatch m;
  size_t at;
  pattern_init(&m, s, ls, p, lp, budget_left(L));
  for (at = gm->next; at <= ls; at++) {
    const char *e = pattern_match_at(&m, s + at, p);
    settle(L, &m);
    if (e != NULL && (size_t)(e - s) != gm->last) {
      gm->next = gm->last = (size_t)(e - s);
      return push_captures(L, &m, s + at, e, 1);
    }
  }
  gm->next = ls + 1;
  return 0;
}

/* string.gmatch(s, pattern[, init]) */
int pattern_lua_gmatch(lua_State *L) {
  size_t ls;
  lua_Integer init;
  GmatchState *gm;
  luaL_checklstring(L, 1, &ls);
  luaL_checkstring(L, 2);
  init = luaL_optinteger(L, 3, 1);
  lua_settop(L, 2);
  gm = (GmatchState *)lua_newuserdatauv(L, sizeof *gm, 0);
  gm->next = start_index(init, ls);
  if (gm->next > ls)
    gm->next = ls + 1;  /* nothing to find */
  gm->last = (size_t)-1;
  lua_pushcclosure(L, gmatch_next, 3);
  return 1;
}

/* ===================================================================
** gsub
** =================================================================== */

/* Add the replacement string (index 3) for the match s..e, with its
** %0-%9 and %% escapes. */
static void add_string(lua_State *L, PatternMatch *m, luaL_Buffer *b, const char *s,
                       const char *e) {
  size_t l;
  const char *r = lua_tolstring(L, 3, &l), *end = r + l, *pct;
  while ((pct = memchr(r, '%', (size_t)(end - r))) != NULL) {
    luaL_addlstring(b, r, (size_t)(pct - r));
    pct++;
    if (pct < end && *pct == '%')
      luaL_addchar(b, '%');
    else if (pct < end && *pct == '0')
      luaL_addlstring(b, s, (size_t)(e - s));
    else if (pct < end && isdigit((unsigned char)*pct)) {
      push_capture(L, m, *pct - '1', s, e);
      luaL_tolstring(L, -1, NULL);  /* a position capture is a number */
      lua_remove(L, -2);
      luaL_addvalue(b);
    }
    else
      luaL_error(L, "invalid use of '%%' in replacement string");
    r = pct + 1;
  }
  luaL_addlstring(b, r, (size_t)(end - r));
}

/* Add the replacement for the match s..e; the replacement 'repl' (index 3)
** is of type 'kind'.  Lua code may run: the steps so far are charged. */
static void add_value(lua_State *L, PatternMatch *m, luaL_Buffer *b, const char *s,
                      const char *e, int kind) {
  if (kind == LUA_TFUNCTION) {
    int n;
    settle(L, m);
    lua_pushvalue(L, 3);
    n = push_captures(L, m, s, e, 1);
    lua_call(L, n, 1);
  }
  else if (kind == LUA_TTABLE) {
    settle(L, m);
    push_capture(L, m, 0, s, e);
    lua_gettable(L, 3);
  }
  else {
    add_string(L, m, b, s, e);
    return;
  }
  m->max_steps = budget_left(L);
  if (!lua_toboolean(L, -1)) {  /* nil or false: keep the match */
    lua_pop(L, 1);
    luaL_addlstring(b, s, (size_t)(e - s));
  }
  else if (!lua_isstring(L, -1))
    luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
  else
    luaL_addvalue(b);
}

/* string.gsub(s, pattern, repl[, n]) */
int pattern_lua_gsub(lua_State *L) {
  size_t ls, lp;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  const char *src = s, *last = NULL;
  int kind = lua_type(L, 3);
  lua_Integer most = luaL_optinteger(L, 4, (lua_Integer)ls + 1), n = 0;
  int anchor = lp > 0 && *p == '^';
  PatternMatch m;
  luaL_Buffer b;
  luaL_argexpected(L, kind == LUA_TNUMBER || kind == LUA_TSTRING ||
                   kind == LUA_TFUNCTION || kind == LUA_TTABLE, 3,
                   "string/function/table");
  lua_settop(L, 3);
  luaL_buffinit(L, &b);
  pattern_init(&m, s, ls, p, lp, budget_left(L));
  while (n < most) {
    const char *e = pattern_match_at(&m, src, p + anchor);
    settle(L, &m);
    if (e != NULL && e != last) {
      n++;
      add_value(L, &m, &b, src, e, kind);
      src = last = e;
    }
    else if (src < m.src_end)
      luaL_addchar(&b, *src++);
    else
      break;
    if (anchor)
      break;
  }
  luaL_addlstring(&b, src, (size_t)(m.src_end - src));
  luaL_pushresult(&b);
  lua_pushinteger(L, n);
  return 2;
}
