/*
** buffer.h - growable byte buffers whose memory is a Lua userdata.
**
** The bytes live inside a full userdata, never in malloc'd memory, so a
** Lua error raised anywhere (out of memory included) cannot leak them: the
** garbage collector owns them.  Growing allocates a larger userdata and
** copies (the doubling makes that amortised O(1)), the way LPeg grows its
** backtrack stack.
*/
#ifndef PROCMAN_BUFFER_H
#define PROCMAN_BUFFER_H

#include <stddef.h>
#include "lua.h"

typedef struct Buffer {
  size_t len;   /* bytes in use */
  size_t cap;   /* bytes available in data[] */
  char data[];  /* cap bytes */
} Buffer;

/* Push a new empty buffer with room for 'cap' bytes; returns it. */
Buffer *buffer_new(lua_State *L, size_t cap);

/* The buffer at stack index 'idx' (no type check: internal use only). */
Buffer *buffer_at(lua_State *L, int idx);

/*
** Make room for 'extra' more bytes in the buffer at stack index 'idx'.
** May replace the userdata at 'idx' by a larger copy: use the returned
** pointer, never an older one.  Raises a memory error on overflow.
*/
Buffer *buffer_reserve(lua_State *L, int idx, size_t extra);

/*
** Replace the buffer at stack index 'idx' by a copy with room for exactly
** 'cap' bytes (at least its length); returns it.  For a caller that knows
** how much it will need, where doubling would copy several times.
*/
Buffer *buffer_resize(lua_State *L, int idx, size_t cap);

/* Append 'n' bytes to the buffer at 'idx'; returns the (maybe new) buffer. */
Buffer *buffer_append(lua_State *L, int idx, const void *p, size_t n);

#endif
