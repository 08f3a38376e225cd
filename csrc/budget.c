/*
** budget.c - run a handler with an instruction budget.
**
** A count hook fires once the budget is spent and raises.  A handler could
** catch that error with pcall and loop on, so from then on the hook fires
** at every instruction: the first one executed outside a pcall raises
** again, and the error reaches the caller.
*/
#include <limits.h>

#include "lauxlib.h"
#include "budget.h"

static void spent_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, spent_hook, LUA_MASKCOUNT, 1);
  luaL_error(L, BUDGET_MESSAGE);
}

int budget_pcall(lua_State *L, int nargs, int nresults, lua_Integer budget) {
  int status;
  if (budget <= 0 || lua_gethook(L) != NULL)
    return lua_pcall(L, nargs, nresults, 0);
  if (budget > INT_MAX)
    budget = INT_MAX;
  lua_sethook(L, spent_hook, LUA_MASKCOUNT, (int)budget);
  status = lua_pcall(L, nargs, nresults, 0);
  if (lua_gethook(L) == spent_hook)  /* not replaced by an interrupt */
    lua_sethook(L, NULL, 0, 0);
  return status;
}
