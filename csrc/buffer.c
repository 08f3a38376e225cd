/*
** buffer.c - growable byte buffers whose memory is a Lua userdata.
*/
#include <string.h>

#include "lauxlib.h"
#include "buffer.h"

#define BUFFER_MIN_CAP 64

Buffer *buffer_new(lua_State *L, size_t cap) {
  Buffer *b;
  if (cap > (size_t)-1 - sizeof(Buffer))
    luaL_error(L, "procman: buffer of %zu bytes is too large", cap);
  b = (Buffer *)lua_newuserdatauv(L, sizeof(Buffer) + cap, 0);
  b->len = 0;
  b->cap = cap;
  return b;
}

Buffer *buffer_at(lua_State *L, int idx) {
  return (Buffer *)lua_touserdata(L, idx);
}

Buffer *buffer_reserve(lua_State *L, int idx, size_t extra) {
  Buffer *old = buffer_at(L, idx);
  size_t cap;
  if (extra <= old->cap - old->len)
    return old;
  if (extra > (size_t)-1 / 2 - old->len)
    luaL_error(L, "procman: buffer of %zu + %zu bytes is too large",
               old->len, extra);
  cap = old->cap < BUFFER_MIN_CAP ? BUFFER_MIN_CAP : old->cap;
  while (cap - old->len < extra)
    cap *= 2;
  return buffer_resize(L, idx, cap);
}

Buffer *buffer_resize(lua_State *L, int idx, size_t cap) {
  Buffer *old = buffer_at(L, idx), *b;
  idx = lua_absindex(L, idx);
  if (cap < old->len)
    cap = old->len;
  b = buffer_new(L, cap);
  old = buffer_at(L, idx);  /* still valid: it is anchored at 'idx' */
  memcpy(b->data, old->data, old->len);
  b->len = old->len;
  lua_replace(L, idx);
  return b;
}

Buffer *buffer_append(lua_State *L, int idx, const void *p, size_t n) {
  Buffer *b = buffer_reserve(L, idx, n);
  memcpy(b->data + b->len, p, n);
  b->len += n;
  return b;
}
