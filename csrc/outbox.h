/*
** outbox.h - procman.outbox's hot paths in C (see outbox.c).
*/
#ifndef PROCMAN_OUTBOX_H
#define PROCMAN_OUTBOX_H

#include "lua.h"

/* The keys of a command's envelope { command, flow, id, workflow }, in
** the codec's canonical order. */
#define OUTBOX_ENVELOPE_KEYS 4
extern const char *const outbox_envelope_keys[OUTBOX_ENVELOPE_KEYS];

/* Set core.outbox_dispatch and core.outbox_forget in the table at the top. */
void outbox_register(lua_State *L);

#endif
