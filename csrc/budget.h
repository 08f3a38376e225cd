/*
** budget.h - run workflow code under an instruction budget and a memory
** budget: the guard.  See budget.c for how, and docs/api.md for what a
** workflow author is promised.
*/
#ifndef PROCMAN_BUDGET_H
#define PROCMAN_BUDGET_H

#include "lua.h"

/* What one guarded call may use.  'units' counts VM instructions plus the
** work of C functions that charge (budget_charge); 'memory' bounds how many
** bytes the Lua heap may grow by during the call.  0 or less: no limit. */
typedef struct BudgetLimits {
  lua_Integer units;
  lua_Integer memory;
  int flags;            /* BUDGET_SANDBOX, BUDGET_COPY */
  const char *label;    /* names the code in the guard's own messages, or NULL */
} BudgetLimits;

/* The call is sandboxed code: while it runs, string methods are the
** bounded ones (core.set_sandbox_string_methods). */
#define BUDGET_SANDBOX 1
/* Table results are replaced by deep copies (data only, no metatables). */
#define BUDGET_COPY 2

/*
** Like lua_pcall(L, nargs, nresults, 0) under the limits.  Past a limit the
** call fails with BUDGET_MESSAGE or MEMORY_MESSAGE (whatever the code did
** with the error on the way out).  A guarded call inside another gets the
** smaller of its own limits and what the outer call has left, and what it
** uses counts for the outer one too.  A hook already set on the thread (a
** debugger, a coverage tool) keeps being called.
*/
int budget_guard_pcall(lua_State *L, int nargs, int nresults, const BudgetLimits *limits);

/*
** lua_pcall(L, nargs, nresults, 0) of the function below the arguments,
** where a function made by core.guard runs under its limits without a
** call of its own (the hot path: a handler per event).  The same results
** and errors as calling it; a failure is LUA_ERRRUN, as when it raises.
** The caller keeps the function anchored elsewhere too (its slot is
** reused for the function it guards, and the guard's label lives in it).
*/
int budget_pcall_function(lua_State *L, int nargs, int nresults);

/* lua_call(L, nargs, nresults) of the function below the arguments, the
** same way: a function made by core.guard runs without a call of its own
** and raises what calling it raises.  The caller anchors it elsewhere too. */
void budget_call_function(lua_State *L, int nargs, int nresults);

/* The instruction budget alone (budget <= 0: no limit). */
int budget_pcall(lua_State *L, int nargs, int nresults, lua_Integer budget);

/* Units the running guarded call has left (LUA_MAXINTEGER when no guard
** is running). */
lua_Integer budget_left(lua_State *L);

/* Charge 'units' of work done in C to the running guarded call; raises
** BUDGET_MESSAGE when that is more than it has left.  No guard: nothing. */
void budget_charge(lua_State *L, lua_Integer units);

/* core.guard(fn, units, memory, flags[, label[, describe]]) -> a function
** that calls fn under those limits and raises what it raised; with
** 'describe', an error object is first turned into text by describe(err)
** inside the same guard (a Lua binding). */
int budget_guard(lua_State *L);

/* core.budget_charge(units), core.budget_left(),
** core.set_sandbox_string_methods(t) (Lua bindings). */
int budget_lua_charge(lua_State *L);
int budget_lua_left(lua_State *L);
int budget_lua_set_string_methods(lua_State *L);
int budget_lua_is_guard(lua_State *L);

/* Bytes allocated that count as one unit of work. */
#define BUDGET_BYTES_PER_UNIT 64

#define BUDGET_MESSAGE "ran past its instruction budget (a runaway loop? see the " \
                       "workflow's budget option)"
#define MEMORY_MESSAGE "ran past its memory budget of %I bytes (see the workflow's " \
                       "memory option)"

#endif
