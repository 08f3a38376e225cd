/*
** fold_scan.h - recovery's first pass in C: a journal's records folded
** from their bytes (see fold_scan.c and lua/procman/fold_scan.lua).
*/
#ifndef PROCMAN_FOLD_SCAN_H
#define PROCMAN_FOLD_SCAN_H

#include "lua.h"

/* core.fold_scan(journal, names) -> scan (see fold_scan.c) */
int fold_scan_lua(lua_State *L);

/* A completed flow's entry in the fold's finished[name] (procman.fold's
** final) is one string: the status's length in 4 bytes, native order
** (string.pack's "s4"), the status, then the codec's bytes for its event
** ids if it keeps any.  Appends the first two to the Buffer at 'bidx'
** (buffer.h; it may be replaced by a larger one). */
void fold_put_final_status(lua_State *L, int bidx, const char *status, size_t n);

/* Create the metatable of the scan userdata (once per lua_State). */
void fold_scan_register(lua_State *L);

#endif
