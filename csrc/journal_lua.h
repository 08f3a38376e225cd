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
/* Reading records from C (the recovery scan, fold_scan.c): push a reader
** of the procman.journal at 'jidx' from the record at byte 'from' (16: the
** first) to the journal's size now; raises if the journal is closed. */
int journal_lua_reader(lua_State *L, int jidx, lua_Integer from);

/* The next intact record of the reader at 'ridx' of the journal at 'jidx'
** (both stay on the stack; the reader may be replaced there by a larger
** one): 1 with its offset, type, payload and length (the payload is valid
** until the next call), or 0 at the end.  Raises on a read error. */
int journal_lua_next(lua_State *L, int ridx, int jidx, size_t *offset, int *type,
                     const unsigned char **payload, size_t *len);

#endif

/* core.journal_replace(from, to) -> true | nil, message, errno */
int journal_lua_replace(lua_State *L);

/* The log port of the engine (engine.c): append a record to the
** procman.journal at 'idx' as j:append does; 1, or 0 with j:append's
** message pushed. */
int journal_lua_append_at(lua_State *L, int idx, int type, const void *p, size_t n);

/* journal_lua_append_at for a value at 'idx' that journal_lua_append_at
** has taken before (its caller keeps it to compare): no check of its
** type, which looks the metatable up by name. */
int journal_lua_append_known(lua_State *L, int idx, int type, const void *p, size_t n);

/* Reading records from C (the recovery scan, fold_scan.c): push a reader
** of the procman.journal at 'jidx' from the record at byte 'from' (16: the
** first) to the journal's size now; raises if the journal is closed. */
int journal_lua_reader(lua_State *L, int jidx, lua_Integer from);

/* The next intact record of the reader at 'ridx' of the journal at 'jidx'
** (both stay on the stack; the reader may be replaced there by a larger
** one): 1 with its offset, type, payload and length (the payload is valid
** until the next call), or 0 at the end.  Raises on a read error. */
int journal_lua_next(lua_State *L, int ridx, int jidx, size_t *offset, int *type,
                     const unsigned char **payload, size_t *len);

#endif
