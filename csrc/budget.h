/*
** budget.h - run a handler with an instruction budget.
*/
#ifndef PROCMAN_BUDGET_H
#define PROCMAN_BUDGET_H

#include "lua.h"

/*
** Like lua_pcall(L, nargs, nresults, 0), but the call may run at most
** 'budget' Lua VM instructions (budget <= 0: no limit); past that it fails
** with the message BUDGET_MESSAGE.  The count is a debug hook, so when the
** thread already has a hook (a debugger, a coverage tool, an interrupt)
** that hook is left alone and the call runs without a budget.
*/
int budget_pcall(lua_State *L, int nargs, int nresults, lua_Integer budget);

#define BUDGET_MESSAGE "ran past its instruction budget (a runaway loop? see the " \
                       "workflow's budget option)"

#endif
