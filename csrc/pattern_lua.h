/*
** pattern_lua.h - string.find, match, gmatch, gsub for the sandbox: Lua's
** pattern language on procman's own matcher, charged to the budget.
*/
#ifndef PROCMAN_PATTERN_LUA_H
#define PROCMAN_PATTERN_LUA_H

#include "lua.h"

int pattern_lua_find(lua_State *L);
int pattern_lua_match(lua_State *L);
int pattern_lua_gmatch(lua_State *L);
int pattern_lua_gsub(lua_State *L);

#endif
