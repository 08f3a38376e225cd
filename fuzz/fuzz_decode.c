/*
** fuzz_decode.c - libFuzzer harness for the codec's decoder.
**
** Any bytes: decoding either fails cleanly or gives a value that encodes,
** and whose encoding decodes to a value with the same encoding (the codec
** is canonical: a second round trip changes nothing).  The decoder for
** maps of known keys (an outbox envelope's) gives the same, value or
** message, as the generic one.
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lauxlib.h"
#include "lualib.h"
#include "buffer.h"
#include "codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One state for the whole run, closed at exit so that leak checkers
** (valgrind over the corpus) see nothing of it left. */
static lua_State *the_state = NULL;

static void close_state(void) {
  lua_close(the_state);
}

static lua_State *state(void) {
  lua_State *L = the_state;
  if (L == NULL) {
    L = the_state = luaL_newstate();
    atexit(close_state);
  }
  return L;
}

/* Encode the value at the top into a new string (pushed); 0 if refused. */
static int encode_top(lua_State *L) {
  int v = lua_gettop(L);
  buffer_new(L, 0);
  if (!codec_encode(L, v, v + 1, "value")) {
    lua_settop(L, v);
    return 0;
  }
  lua_pushlstring(L, buffer_at(L, v + 1)->data, buffer_at(L, v + 1)->len);
  lua_remove(L, v + 1);
  return 1;
}

/* codec_decode_shaped with an envelope's keys on s: the same as the
** generic decode at stack index 3 (ok 1: a value, 0: a message), without
** a memo, then twice with one (cold, then warm). */
static void check_shaped(lua_State *L, const char *s, size_t size, int ok, size_t pos) {
  static const char *const keys[] = { "command", "flow", "id", "workflow" };
  CodecMemo memo;
  CodecShape shape;
  int i, round, base, top = lua_gettop(L);
  for (i = 0; i < 4; i++)
    lua_pushstring(L, keys[i]);
  codec_memo_init(L, &memo);
  base = lua_gettop(L);
  for (round = 0; round < 3; round++) {
    size_t pos2 = 0, len1, len2;
    const char *a, *b;
    codec_shape_init(L, &shape, top + 1, 4);
    if (round > 0)
      shape.memo = &memo;
    if (codec_decode_shaped(L, s, size, &pos2, &shape) != ok || pos2 != pos)
      abort();
    if (ok) {  /* compare the values by their canonical bytes */
      int shaped = lua_gettop(L);
      if (!encode_top(L))  /* shaped + 1 */
        abort();
      lua_pushvalue(L, 3);
      if (!encode_top(L))  /* shaped + 3 */
        abort();
      a = lua_tolstring(L, shaped + 1, &len1);
      b = lua_tolstring(L, shaped + 3, &len2);
      if (len1 != len2 || memcmp(a, b, len1) != 0)
        abort();
    }
    else if (strcmp(lua_tostring(L, 3), lua_tostring(L, -1)) != 0)
      abort();
    lua_settop(L, base);
  }
  lua_settop(L, top);
}

static int check(lua_State *L) {
  const uint8_t *data = (const uint8_t *)lua_touserdata(L, 1);
  size_t size = (size_t)lua_tointeger(L, 2), pos = 0, pos2 = 0, len1, len2;
  const char *once, *twice;
  int ok;
  lua_settop(L, 2);
  ok = codec_decode(L, (const char *)data, size, &pos);  /* 3: the value, or a message */
  check_shaped(L, (const char *)data, size, ok, pos);
  if (!ok)
    return 0;  /* refused: fine */
  lua_replace(L, 1);
  lua_settop(L, 1);
  if (pos > size)
    abort();
  if (!encode_top(L))
    abort();  /* whatever decodes must encode */
  once = lua_tolstring(L, -1, &len1);
  if (!codec_decode(L, once, len1, &pos2) || pos2 != len1)
    abort();  /* our own bytes must decode, whole */
  if (!encode_top(L))
    abort();
  twice = lua_tolstring(L, -1, &len2);
  if (len1 != len2 || memcmp(once, twice, len1) != 0)
    abort();  /* canonical: the second round trip changes nothing */
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_State *L = state();
  lua_settop(L, 0);
  lua_pushcfunction(L, check);
  lua_pushlightuserdata(L, (void *)data);
  lua_pushinteger(L, (lua_Integer)size);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    /* only memory errors may escape (a huge but valid container) */
    if (strstr(lua_tostring(L, -1), "not enough memory") == NULL)
      abort();
  }
  lua_settop(L, 0);
  lua_gc(L, LUA_GCCOLLECT);
  return 0;
}
