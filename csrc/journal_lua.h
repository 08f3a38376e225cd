/*
** journal_lua.h - the procman.journal userdata (see journal_lua.c).
*/
#ifndef PROCMAN_JOURNAL_LUA_H
#define PROCMAN_JOURNAL_LUA_H

#include "lua.h"

/* Create the procman.journal metatables (once per lua_State). */
void journal_lua_register(lua_State *L);

/* core.journal_open(path [, opts]) -> journal, info | nil, message, errno */
int journal_lua_open(lua_State *L);

/* core.journal_create(path [, opts]) -> journal | nil, message, errno */
int journal_lua_create(lua_State *L);

/* core.journal_scan(path) -> iterator, info | nil, message, errno: read-only */
int journal_lua_scan(lua_State *L);

#ifdef PROCMAN_FAULTS  /* test builds only: see faults.h */
/* core.journal_faults(at, errno_name [, short]) | core.journal_faults() */
int journal_lua_faults(lua_State *L);
#endif

/* core.journal_replace(from, to) -> true | nil, message, errno */
int journal_lua_replace(lua_State *L);

#endif
