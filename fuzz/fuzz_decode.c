/*
** fuzz_decode.c - libFuzzer harness for the codec's decoder.
**
** Any bytes: decoding either fails cleanly or gives a value that encodes,
** and whose encoding decodes to a value with the same encoding (the codec
** is canonical: a second round trip changes nothing).
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

static int check(lua_State *L) {
  const uint8_t *data = (const uint8_t *)lua_touserdata(L, 1);
  size_t size = (size_t)lua_tointeger(L, 2), pos = 0, pos2 = 0, len1, len2;
  const char *once, *twice;
  lua_settop(L, 0);
  if (!codec_decode(L, (const char *)data, size, &pos))
    return 0;  /* refused: fine */
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
