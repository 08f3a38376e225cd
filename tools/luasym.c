/*
** luasym.c - a lua5.4 stand-in for profiling: Debian's lua5.4 is
** stripped, so callgrind and perf cannot name Lua's own functions
** (luaV_execute, luaH_newkey, luaC_step, luaG_traceexec...).  This one
** links the same release statically (liblua5.4.a keeps its symbols).
**
**   make luasym
**   valgrind --tool=callgrind build/luasym bench/router_case.lua memory 80000
**
** It runs one script with its arguments in 'arg', as lua5.4 does; nothing
** else (no -e, no REPL).
*/
#include <stdio.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

int main(int argc, char **argv) {
  lua_State *L;
  int i, status;
  if (argc < 2) {
    fprintf(stderr, "usage: %s script [args]\n", argv[0]);
    return 2;
  }
  L = luaL_newstate();
  if (L == NULL) {
    fprintf(stderr, "%s: not enough memory\n", argv[0]);
    return 1;
  }
  luaL_openlibs(L);
  lua_createtable(L, argc, 1);
  lua_pushstring(L, "lua5.4");  /* arg[-1]: what bench/run.lua starts cases with */
  lua_rawseti(L, -2, -1);
  for (i = 1; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - 1);
  }
  lua_setglobal(L, "arg");
  status = luaL_loadfile(L, argv[1]) != LUA_OK || lua_pcall(L, 0, 0, 0) != LUA_OK;
  if (status)
    fprintf(stderr, "%s: %s\n", argv[0], lua_tostring(L, -1));
  lua_close(L);
  return status;
}
