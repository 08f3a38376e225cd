/*
** outbox.h - procman.outbox: pending commands as one buffer of encoded
** envelopes (see outbox.c).
*/
#ifndef PROCMAN_OUTBOX_H
#define PROCMAN_OUTBOX_H

#include "lua.h"

/* The keys of a command's envelope { command, flow, id, workflow }, in
** the codec's canonical order. */
#define OUTBOX_ENVELOPE_KEYS 4
extern const char *const outbox_envelope_keys[OUTBOX_ENVELOPE_KEYS];

/* The outbox userdata (procman.outbox): see outbox.c. */
typedef struct Outbox Outbox;

/* The outbox at 'idx' (raises when it is not one). */
Outbox *outbox_check(lua_State *L, int idx);

/*
** The engine's emission, in three steps (the outbox at 'box').
** outbox_stage pushes the outbox's buffer, its length set to the bytes
** the outbox uses (what was staged and not committed before is dropped):
** append envelopes to it, end to end; returns where they start.
** outbox_keep: the buffer at 'bidx' (it may have been replaced while
** growing) becomes the outbox's, with room for 'n' more commands (the
** step's envelopes staged so far, none committed: this allocates, the
** commit does not).  outbox_will_index: the id at stack index 'id' gets
** its entry in the index by id now, when there is one (allocates; an
** entry for a command never committed reads as not pending).
** outbox_commit: the next staged envelope, at bytes [at, at + len), its
** id at stack index 'id', is pending; allocates nothing after
** outbox_keep and outbox_will_index.
*/
size_t outbox_stage(lua_State *L, int box);
/* outbox_hold(L, box, 1): a step stages envelopes in the outbox until
** outbox_hold(L, box, 0) (it committed them or was taken back); meanwhile
** the outbox's methods that read or change its commands raise (code run
** inside the step, a finalizer, could move the storage the staged
** envelopes and their slots are in).  Allocates nothing. */
void outbox_hold(lua_State *L, int box, int held);
void outbox_keep(lua_State *L, int box, int bidx, size_t n);
void outbox_will_index(lua_State *L, int box, int id);
void outbox_commit(lua_State *L, int box, size_t at, size_t len, int id);
/* A step taken back: the id at stack index 'id', if outbox_will_index
** gave it an entry that no commit filled, has none again (any other
** value is ignored).  Allocates nothing. */
void outbox_unindex(lua_State *L, int box, int id);

/* Append the journal record of an ack, { id = id } as core.encode writes
** it (the id at stack index 'id'), to the Buffer at 'bidx' (buffer.h):
** 1, or 0 with the codec's message pushed. */
int outbox_ack_record(lua_State *L, int id, int bidx);

/* Set core.outbox_new and core.outbox_methods (the outbox's methods in C,
** to which procman.outbox adds its own) in the table at the top. */
void outbox_register(lua_State *L);

#endif
