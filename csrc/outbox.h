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

/* Append the journal record of an ack, { id = id } as core.encode writes
** it (the id at stack index 'id'), to the Buffer at 'bidx' (buffer.h):
** 1, or 0 with the codec's message pushed. */
int outbox_ack_record(lua_State *L, int id, int bidx);

/* Set core.outbox_dispatch and core.outbox_forget in the table at the top. */
void outbox_register(lua_State *L);

#endif
