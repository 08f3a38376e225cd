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

/* The log port of the engine (engine.c): append a record to the
** procman.journal at 'idx' as j:append does; 1, or 0 with j:append's
** message pushed. */
int journal_lua_append_at(lua_State *L, int idx, int type, const void *p, size_t n);

#endif
