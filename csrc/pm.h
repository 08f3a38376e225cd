/*
** pm.h - the procman.pm userdata: one live flow of one workflow.
*/
#ifndef PROCMAN_PM_H
#define PROCMAN_PM_H

#include <stddef.h>

#include "lua.h"

#define PM_TYPENAME "procman.pm"

/* Create the procman.pm metatable (once per lua_State) and set core.undo
** in the module table at index 'core'. */
void pm_register(lua_State *L, int core);

/* core.new(spec, flow_id) -> procman.pm.  'spec' is the checked workflow
** definition built by lua/procman/workflow.lua. */
int pm_new(lua_State *L);

/* For the engine (engine.c): push the metatable of the flows of the
** workflow at 'spec' (made at its first flow). */
void pm_push_flow_metatable(lua_State *L, int spec);

/* For the engine: push a new flow with the id at 'id' (an integer or a
** non-empty string) and the flows' metatable at 'mt', its state from
** init; unprotected (the caller's protected call drops it on error). */
void pm_push_new(lua_State *L, int id, int mt);

/* The version (events committed) of the procman.pm at 'idx', unchecked:
** for the engine (engine.c), which passes only flows. */
lua_Integer pm_version_at(lua_State *L, int idx);

/* Append to the Buffer at 'bidx' the codec's bytes of the event the flow
** at 'idx' committed last, for the engine's record; 0, appending nothing,
** when it cannot tell. */
int pm_put_last_event(lua_State *L, int idx, int bidx);

/* The status of the flow at 'idx' (pushed) and whether it is done, right
** after it committed an event; 'status_fn' and 'done_fn' are the stack
** indices of its workflow's status and done functions (nil: none). */
int pm_settled(lua_State *L, int idx, int status_fn, int done_fn);

/* Append to the Buffer at 'bidx' the event ids the flow at 'idx' has
** handled, as the codec encodes that array (core.encoded_event_ids):
** returns how many, with *start where the bytes begin (they end at the
** buffer's end).  The Buffer may be replaced by a larger one. */
size_t pm_encode_event_ids(lua_State *L, int idx, int bidx, size_t *start);

#endif
