/*
** budget.c - run workflow code under an instruction budget and a memory
** budget: the guard.
**
** Instructions.  A count hook fires every SLICE instructions (or sooner,
** when less is left) and takes what ran from what is left.  C functions
** that do work instructions cannot see (the sandbox's pattern matcher,
** string.rep, table.sort...) charge it with budget_charge, and so does the
** allocator: one unit per BUDGET_BYTES_PER_UNIT bytes allocated, so that an
** instruction that copies a big string is not one unit of work.  Once the
** budget is spent the hook fires at every instruction and raises, so code
** that catches the error with pcall cannot go on: the first instruction it
** runs raises again.
**
** What a hook cannot see (Lua runs hooks with hooks off):
**  - a message handler called for an error raised by the hook: the sandbox
**    has no such handlers (its xpcall runs the handler after the pcall has
**    returned; lua/procman/sandbox.lua);
**  - finalizers (__gc): the sandbox's setmetatable refuses __gc.
** To-be-closed variables (__close) run with hooks on, and are counted.
**
** Memory.  The guard swaps the state's allocator for one that counts how
** much the heap grows during the call and refuses to grow it past the
** memory budget (it never refuses to shrink a block).  Lua answers a
** refusal with an emergency collection and one more try, then with a
** memory error; the guard turns that into MEMORY_MESSAGE, an ordinary
** error (a flow is parked for it, unlike a real shortage of memory).
**
** The guard is found through the allocator (lua_getallocf), so the hook and
** the C functions that charge need no registry lookup.  Hooks already set
** on the thread (a debugger, a coverage tool, the REPL's Ctrl-C) are
** chained: the guard's hook calls them for their events.
*/
#include <limits.h>

#include "lauxlib.h"
#include "budget.h"
#include "codec.h"

/* Instructions between two looks at the budget. */
#define SLICE 1024

/* The registry key of the string methods sandboxed code sees. */
#define SANDBOX_STRINGS "procman.sandbox_string_methods"

typedef struct Guard {
  lua_State *L;             /* the thread the guarded call runs in */
  lua_Alloc alloc;          /* the allocator the guard wraps */
  void *alloc_ud;
  lua_Integer left;         /* units left (may go below 0: spent) */
  lua_Integer granted;      /* units at the start */
  size_t carry;             /* bytes allocated, not yet charged */
  lua_Integer memory;       /* bytes the heap may grow by; < 0: no limit */
  lua_Integer grown;        /* bytes it grew by so far (may be < 0) */
  int refused;              /* the last growth asked for was refused */
  int bound_by_outer;       /* the outer call's room set our limits */
  int spent;
  int slice;                /* the count the hook is set to */
  int flags;
  lua_Hook their_hook;      /* the hook that was there before */
  int their_mask, their_count, their_left;
} Guard;

static void *guard_alloc(void *ud, void *ptr, size_t osize, size_t nsize);
static void guard_hook(lua_State *L, lua_Debug *ar);

static Guard *current_guard(lua_State *L) {
  void *ud;
  return lua_getallocf(L, &ud) == guard_alloc ? (Guard *)ud : NULL;
}

/* ===================================================================
** Memory
** =================================================================== */

static void *guard_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  Guard *g = (Guard *)ud;
  size_t old = ptr != NULL ? osize : 0;  /* osize is a type tag for new blocks */
  void *block;
  if (nsize <= old) {  /* a free or a shrink: never refused, never charged */
    block = g->alloc(g->alloc_ud, ptr, osize, nsize);
    if (block != NULL || nsize == 0)
      g->grown -= (lua_Integer)(old - nsize);
    return block;
  }
  {
    size_t grow = nsize - old;
    if (g->memory >= 0 && (grow > (size_t)g->memory ||
                           g->grown > g->memory - (lua_Integer)grow)) {
      g->refused = 1;
      return NULL;
    }
    g->carry += grow;
    g->left -= (lua_Integer)(g->carry / BUDGET_BYTES_PER_UNIT);
    g->carry %= BUDGET_BYTES_PER_UNIT;
    if (g->left < 0 && g->slice > 1) {  /* look at the next instruction */
      g->slice = 1;                     /* (lua_sethook is safe anywhere) */
      lua_sethook(g->L, guard_hook, g->their_mask | LUA_MASKCOUNT, 1);
    }
  }
  block = g->alloc(g->alloc_ud, ptr, osize, nsize);
  if (block != NULL) {
    g->grown += (lua_Integer)(nsize - old);
    g->refused = 0;  /* e.g. the emergency collection made room */
  }
  return block;
}

/* ===================================================================
** Instructions
** =================================================================== */

/* Set the count hook to fire when the next look at the budget is due. */
static void arm(lua_State *L, Guard *g) {
  lua_Integer n = g->spent ? 1 : (g->left < SLICE ? g->left : SLICE);
  if (g->granted >= LUA_MAXINTEGER / 2 && !g->spent) {  /* no instruction limit: */
    g->slice = 0;                                   /* no count hook either */
    lua_sethook(L, g->their_hook, g->their_mask, g->their_count);
    return;
  }
  if (n < 1)
    n = 1;
  if ((g->their_mask & LUA_MASKCOUNT) && g->their_left < n)
    n = g->their_left;
  g->slice = (int)n;
  lua_sethook(L, guard_hook, g->their_mask | LUA_MASKCOUNT, g->slice);
}

/* The budget is spent: from now on every instruction raises. */
static void spend(lua_State *L, Guard *g) {
  g->spent = 1;
  g->left = -1;
  arm(L, g);
  luaL_error(L, BUDGET_MESSAGE);
}

/* Call the hook that was there before for an event it asked for. */
static void forward(lua_State *L, Guard *g, lua_Debug *ar) {
  if (ar->event != LUA_HOOKCOUNT) {
    g->their_hook(L, ar);
    return;
  }
  if (!(g->their_mask & LUA_MASKCOUNT))
    return;
  g->their_left -= g->slice;
  if (g->their_left <= 0) {
    g->their_left = g->their_count;
    g->their_hook(L, ar);
  }
}

static void guard_hook(lua_State *L, lua_Debug *ar) {
  Guard *g = current_guard(L);
  if (g == NULL) {  /* left behind by a guard that could not take it off */
    lua_sethook(L, NULL, 0, 0);
    return;
  }
  if (g->their_hook != NULL)
    forward(L, g, ar);
  if (ar->event != LUA_HOOKCOUNT)
    return;
  g->left -= g->slice;
  if (g->spent || g->left < 0)
    spend(L, g);
  arm(L, g);
}

lua_Integer budget_left(lua_State *L) {
  Guard *g = current_guard(L);
  if (g == NULL)
    return LUA_MAXINTEGER;
  return g->left > 0 ? g->left : 0;
}

void budget_charge(lua_State *L, lua_Integer units) {
  Guard *g = current_guard(L);
  if (g == NULL || units <= 0)
    return;
  if (g->spent || units > g->left)
    spend(L, g);
  g->left -= units;
}

/* ===================================================================
** The guarded call
** =================================================================== */

/* Set up 'g' for a call with 'limits', inside 'outer' (or NULL: then
** 'alloc' and 'alloc_ud' are the state's allocator, read by the caller). */
static void guard_init(lua_State *L, Guard *g, Guard *outer, const BudgetLimits *limits,
                       lua_Alloc alloc, void *alloc_ud) {
  lua_Integer units = limits->units > 0 ? limits->units : LUA_MAXINTEGER;
  lua_Integer memory = limits->memory > 0 ? limits->memory : -1;
  g->L = L;
  g->carry = 0;
  g->grown = 0;
  g->refused = g->spent = 0;
  g->flags = limits->flags | (outer ? outer->flags & BUDGET_SANDBOX : 0);
  if (outer != NULL) {  /* the smaller of ours and what the outer has left */
    lua_Integer room;
    outer->left -= outer->slice;  /* its slice may have run: count it all */
    room = outer->memory < 0 ? -1 : outer->memory - outer->grown;
    g->bound_by_outer = 0;
    if (outer->left < units) {
      units = outer->left > 0 ? outer->left : 0;
      g->bound_by_outer = 1;
    }
    if (room >= 0 && (memory < 0 || room < memory)) {
      memory = room > 0 ? room : 0;
      g->bound_by_outer = 1;
    }
    g->alloc = outer->alloc;
    g->alloc_ud = outer->alloc_ud;
    g->their_hook = outer->their_hook;
    g->their_mask = outer->their_mask;
    g->their_count = g->their_left = outer->their_count;
  }
  else {
    g->bound_by_outer = 0;
    g->alloc = alloc;
    g->alloc_ud = alloc_ud;
    g->their_hook = lua_gethook(L);
    g->their_mask = g->their_count = g->their_left = 0;
    if (g->their_hook != NULL) {  /* (the common case has none: no more to ask) */
      g->their_mask = lua_gethookmask(L);
      g->their_count = g->their_left = lua_gethookcount(L);
      if (g->their_count <= 0)
        g->their_mask &= ~LUA_MASKCOUNT;
    }
  }
  g->left = g->granted = units;
  g->memory = memory;
}

/* After the call: count what it used in the outer guard, or put back the
** allocator and the hook that were there before. */
static void guard_done(lua_State *L, Guard *g, Guard *outer) {
  if (outer != NULL) {
    lua_setallocf(L, guard_alloc, outer);
    outer->left -= g->granted - (g->left > 0 ? g->left : 0);
    outer->grown += g->grown;
    if (g->bound_by_outer && (g->spent || g->left < 0))
      outer->left = -1;  /* it ran out of what the outer had */
    if (g->bound_by_outer && g->refused)
      outer->refused = 1;
    if (outer->left < 0)
      outer->spent = 1;
    arm(L, outer);
    return;
  }
  lua_setallocf(L, g->alloc, g->alloc_ud);
  if (lua_gethook(L) == guard_hook)  /* else someone set theirs on purpose */
    lua_sethook(L, g->their_hook, g->their_mask, g->their_count);
}

/* Replace the error at the top by the guard's reason, if it has one
** ("label: reason" when the limits have a label). */
static void explain_failure(lua_State *L, Guard *g, const char *label) {
  if (!g->spent && g->left >= 0 && !g->refused)
    return;
  lua_pop(L, 1);
  if (label != NULL)
    lua_pushfstring(L, "%s: ", label);
  if (g->spent || g->left < 0)
    lua_pushliteral(L, BUDGET_MESSAGE);
  else
    lua_pushfstring(L, MEMORY_MESSAGE, g->memory);
  if (label != NULL)
    lua_concat(L, 2);
}

/* Swap the string metatable's __index for the sandbox's methods (at the
** top afterwards: what to put back), or push nil when there is nothing to
** swap.  Assigning an existing field never allocates. */
static void swap_string_methods(lua_State *L) {
  lua_pushliteral(L, "");
  if (!lua_getmetatable(L, -1)) {
    lua_pop(L, 1);
    lua_pushnil(L);
    return;
  }
  lua_remove(L, -2);                                   /* meta */
  lua_getfield(L, LUA_REGISTRYINDEX, SANDBOX_STRINGS); /* meta, ours */
  if (lua_isnil(L, -1)) {
    lua_remove(L, -2);
    return;
  }
  lua_getfield(L, -2, "__index");                      /* meta, ours, theirs */
  lua_insert(L, -2);
  lua_setfield(L, -3, "__index");
  lua_remove(L, -2);                                   /* theirs */
}

/* Put back the string methods saved at 'saved' (nil: nothing to do). */
static void restore_string_methods(lua_State *L, int saved) {
  if (lua_isnil(L, saved))
    return;
  lua_pushliteral(L, "");
  lua_getmetatable(L, -1);
  lua_pushvalue(L, saved);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 2);
}

int budget_guard_pcall(lua_State *L, int nargs, int nresults, const BudgetLimits *limits) {
  Guard g, *outer;
  void *ud;
  lua_Alloc alloc = lua_getallocf(L, &ud);
  int status, saved = 0, base = lua_gettop(L) - nargs - 1;
  outer = alloc == guard_alloc ? (Guard *)ud : NULL;  /* current_guard(L), asked once */
  guard_init(L, &g, outer, limits, alloc, ud);
  if (g.flags & BUDGET_SANDBOX) {  /* below the function and its arguments */
    swap_string_methods(L);
    saved = ++base;
    lua_insert(L, saved);
  }
  lua_setallocf(L, guard_alloc, &g);
  arm(L, &g);
  status = lua_pcall(L, nargs, nresults, 0);
  if (status == LUA_OK && (g.spent || g.left < 0)) {
    status = LUA_ERRRUN;  /* the last slice ran past it: fail all the same */
    lua_settop(L, base);
    lua_pushnil(L);
  }
  guard_done(L, &g, outer);
  if (status != LUA_OK)
    explain_failure(L, &g, limits->label);
  if (saved) {
    restore_string_methods(L, saved);
    lua_remove(L, saved);
  }
  return status;
}

int budget_pcall(lua_State *L, int nargs, int nresults, lua_Integer budget) {
  BudgetLimits limits;
  limits.units = budget;
  limits.memory = 0;
  limits.flags = 0;
  limits.label = NULL;
  if (budget <= 0)
    return lua_pcall(L, nargs, nresults, 0);
  return budget_guard_pcall(L, nargs, nresults, &limits);
}

/* ===================================================================
** Lua bindings
** =================================================================== */

/* Replace every table among the values from 'first' to the top by a deep
** copy: data only, without metatables (raises if one is not data). */
static void copy_tables(lua_State *L, int first) {
  int i, top = lua_gettop(L);
  for (i = first; i <= top; i++) {
    if (!lua_istable(L, i))
      continue;
    if (!codec_copy(L, i, "result"))
      lua_error(L);
    lua_replace(L, i);
  }
}

/*
** (describe, flags, fn, args...) -> fn(args...), inside the guard: table
** results copied (BUDGET_COPY), an error object turned into text by
** describe (when not nil) so that its __tostring runs under the same
** budget as the code that raised it.
*/
static int call_body(lua_State *L) {
  int flags = (int)lua_tointeger(L, 2);
  if (lua_pcall(L, lua_gettop(L) - 3, LUA_MULTRET, 0) != LUA_OK) {
    if (!lua_isnil(L, 1) && !lua_isstring(L, -1)) {
      lua_pushvalue(L, 1);
      lua_insert(L, -2);
      lua_call(L, 1, 1);
    }
    return lua_error(L);
  }
  if (flags & BUDGET_COPY)
    copy_tables(L, 3);
  return lua_gettop(L) - 2;
}

static lua_Integer optional_limit(lua_State *L, int arg) {
  if (lua_isnoneornil(L, arg) || (lua_isboolean(L, arg) && !lua_toboolean(L, arg)))
    return 0;
  return luaL_checkinteger(L, arg);
}

/* The upvalues of the function core.guard made: fn, its limits (a
** userdata: read in one step per call), the label, describe (turns an
** error object into text), the flags (an integer, for call_body). */
enum { UP_FN = 1, UP_LIMITS, UP_LABEL, UP_DESCRIBE, UP_FLAGS, UP_COUNT = UP_FLAGS };

/* Its limits ('closure' is its stack index, or 0 for the running one).
** Their label points into the string UP_LABEL, which the closure anchors
** for as long as it can be called. */
static void read_limits(lua_State *L, int closure, BudgetLimits *limits) {
  if (closure == 0) {
    *limits = *(const BudgetLimits *)lua_touserdata(L, lua_upvalueindex(UP_LIMITS));
    return;
  }
  lua_getupvalue(L, closure, UP_LIMITS);
  *limits = *(const BudgetLimits *)lua_touserdata(L, -1);
  lua_pop(L, 1);
}

/* Flags in BudgetLimits.flags for the guard's own use: there is a
** describe function (the call needs call_body). */
#define HAS_DESCRIBE 0x100

static int guarded_call(lua_State *L) {
  BudgetLimits limits;
  int nargs = lua_gettop(L);
  read_limits(L, 0, &limits);
  lua_pushvalue(L, lua_upvalueindex(UP_FN));
  lua_insert(L, 1);                                  /* fn args... */
  if (limits.flags & (BUDGET_COPY | HAS_DESCRIBE)) {
    lua_pushcfunction(L, call_body);
    lua_pushvalue(L, lua_upvalueindex(UP_DESCRIBE));
    lua_pushvalue(L, lua_upvalueindex(UP_FLAGS));
    lua_rotate(L, 1, 3);                   /* call_body describe flags fn args... */
    nargs += 3;
  }
  if (budget_guard_pcall(L, nargs, LUA_MULTRET, &limits) != LUA_OK)
    return lua_error(L);
  return lua_gettop(L);
}

/* Is the function at 'f' one of core.guard's that can run without a call
** of its own (no copy of results, no describe)?  Then 'limits' gets its
** limits and 'f' the function it guards. */
static int unwrap_guarded(lua_State *L, int f, BudgetLimits *limits) {
  if (lua_tocfunction(L, f) != guarded_call)
    return 0;
  read_limits(L, f, limits);
  if (limits->flags & (BUDGET_COPY | HAS_DESCRIBE))  /* guarded_call's own body is */
    return 0;                                       /* needed: call it */
  lua_getupvalue(L, f, UP_FN);
  lua_replace(L, f);  /* fn args...: the caller anchors the closure (its label) */
  return 1;
}

int budget_pcall_function(lua_State *L, int nargs, int nresults) {
  BudgetLimits limits;
  if (!unwrap_guarded(L, lua_gettop(L) - nargs, &limits))
    return lua_pcall(L, nargs, nresults, 0);
  if (budget_guard_pcall(L, nargs, nresults, &limits) != LUA_OK)
    return LUA_ERRRUN;  /* as guarded_call's raise */
  return LUA_OK;
}

void budget_call_function(lua_State *L, int nargs, int nresults) {
  BudgetLimits limits;
  if (!unwrap_guarded(L, lua_gettop(L) - nargs, &limits))
    lua_call(L, nargs, nresults);
  else if (budget_guard_pcall(L, nargs, nresults, &limits) != LUA_OK)
    lua_error(L);  /* what guarded_call raises */
}

int budget_guard(lua_State *L) {
  lua_Integer units, memory, flags;
  BudgetLimits *limits;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  units = optional_limit(L, 2);
  memory = optional_limit(L, 3);
  flags = luaL_optinteger(L, 4, 0);
  if (!lua_isnoneornil(L, 5))
    luaL_checktype(L, 5, LUA_TSTRING);
  if (!lua_isnoneornil(L, 6))
    luaL_checktype(L, 6, LUA_TFUNCTION);
  lua_settop(L, 6);
  lua_pushvalue(L, 1);                                     /* UP_FN */
  limits = (BudgetLimits *)lua_newuserdatauv(L, sizeof *limits, 0);  /* UP_LIMITS */
  limits->units = units;
  limits->memory = memory;
  limits->flags = (int)(flags & (BUDGET_SANDBOX | BUDGET_COPY)) |
                  (lua_isnil(L, 6) ? 0 : HAS_DESCRIBE);
  limits->label = lua_tostring(L, 5);  /* NULL or UP_LABEL's bytes: anchored by it */
  lua_pushvalue(L, 5);                                     /* UP_LABEL */
  lua_pushvalue(L, 6);                                     /* UP_DESCRIBE */
  lua_pushinteger(L, flags);                               /* UP_FLAGS */
  lua_pushcclosure(L, guarded_call, UP_COUNT);
  return 1;
}

/* core.is_guard(f) -> is f a function of the guard's own (a guarded
** function, or the guard's body)?  For code that reads the call stack. */
int budget_lua_is_guard(lua_State *L) {
  lua_CFunction f = lua_tocfunction(L, 1);
  lua_pushboolean(L, f != NULL && (f == guarded_call || f == call_body));
  return 1;
}

/* core.budget_charge(units): charge work done on behalf of the running call. */
int budget_lua_charge(lua_State *L) {
  budget_charge(L, luaL_checkinteger(L, 1));
  return 0;
}

/* core.budget_left() -> units the running guarded call has left. */
int budget_lua_left(lua_State *L) {
  lua_pushinteger(L, budget_left(L));
  return 1;
}

/* core.set_sandbox_string_methods(t): what strings index in sandboxed calls. */
int budget_lua_set_string_methods(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, SANDBOX_STRINGS);
  return 0;
}
