/*
** fold_scan.h - recovery's first pass in C: a journal's records folded
** from their bytes (see fold_scan.c and lua/procman/fold_scan.lua).
*/
#ifndef PROCMAN_FOLD_SCAN_H
#define PROCMAN_FOLD_SCAN_H

#include "lua.h"

/* core.fold_scan(journal, names) -> scan (see fold_scan.c) */
int fold_scan_lua(lua_State *L);

/* Create the metatable of the scan userdata (once per lua_State). */
void fold_scan_register(lua_State *L);

#endif
