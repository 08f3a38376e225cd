/*
** pm.h - the procman.pm userdata: one live flow of one workflow.
*/
#ifndef PROCMAN_PM_H
#define PROCMAN_PM_H

#include "lua.h"

#define PM_TYPENAME "procman.pm"

/* Create the procman.pm metatable (once per lua_State) and set core.undo
** in the module table at index 'core'. */
void pm_register(lua_State *L, int core);

/* core.new(spec, flow_id) -> procman.pm.  'spec' is the checked workflow
** definition built by lua/procman/workflow.lua. */
int pm_new(lua_State *L);

/* The version (events committed) of the procman.pm at 'idx', unchecked:
** for the engine (engine.c), which passes only flows. */
lua_Integer pm_version_at(lua_State *L, int idx);

/* Append to the Buffer at 'bidx' the codec's bytes of the event the flow
** at 'idx' committed last, for the engine's record; 0, appending nothing,
** when it cannot tell. */
int pm_put_last_event(lua_State *L, int idx, int bidx);

#endif
