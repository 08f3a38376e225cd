/*
** engine.h - the procman.engine userdata: the common step of a router's
** events (route, run, take back, encode, log, settle) in C, under one
** protected call.  See engine.c and docs/design.md.
*/
#ifndef PROCMAN_ENGINE_H
#define PROCMAN_ENGINE_H

#include "lua.h"

#define ENGINE_TYPENAME "procman.engine"

/* Create the procman.engine metatable (once per lua_State). */
void engine_register(lua_State *L);

/* core.engine(parts) -> procman.engine (see engine.c for 'parts'). */
int engine_new(lua_State *L);

#endif
