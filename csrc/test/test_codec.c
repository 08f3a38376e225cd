/*
** test_codec.c - cmocka tests of the codec and the buffers beneath it:
** edge values, exact bytes, nesting limits, and malformed input of every
** kind, which must give an error and never a crash.
*/
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lauxlib.h"
#include "lualib.h"
#include "buffer.h"
#include "codec.h"

/* ---- fixtures and helpers ------------------------------------------ */

static int setup(void **state) {
  lua_State *L = luaL_newstate();
  if (L == NULL)
    return -1;
  *state = L;
  return 0;
}

static int teardown(void **state) {
  lua_close((lua_State *)*state);
  return 0;
}

/* Encode the value at the top (popping it); the bytes are returned in a
** Buffer left on the stack. */
static Buffer *encode_top(lua_State *L) {
  int v = lua_gettop(L);
  buffer_new(L, 0);
  assert_int_equal(codec_encode(L, v, -1, "value"), 1);
  lua_remove(L, v);
  return buffer_at(L, -1);
}

static void assert_bytes(const Buffer *b, const char *expected, size_t n) {
  assert_int_equal(b->len, n);
  assert_memory_equal(b->data, expected, n);
}

/* Decode 'n' bytes completely, leaving the value on the stack. */
static void decode_all(lua_State *L, const char *s, size_t n) {
  size_t pos = 0;
  int ok = codec_decode(L, s, n, &pos);
  if (!ok)
    fail_msg("decode failed: %s", lua_tostring(L, -1));
  assert_int_equal(pos, n);
}

/* Decoding must fail: the stack grows by one message, pos is unchanged. */
static void assert_decode_fails(lua_State *L, const char *s, size_t n,
                                const char *fragment) {
  size_t pos = 0;
  int top = lua_gettop(L);
  assert_int_equal(codec_decode(L, s, n, &pos), 0);
  assert_int_equal(pos, 0);
  assert_int_equal(lua_gettop(L), top + 1);
  assert_int_equal(lua_type(L, -1), LUA_TSTRING);
  if (fragment != NULL && strstr(lua_tostring(L, -1), fragment) == NULL)
    fail_msg("message \"%s\" lacks \"%s\"", lua_tostring(L, -1), fragment);
  lua_pop(L, 1);
}

/* ---- integers ------------------------------------------------------ */

typedef struct IntCase {
  lua_Integer v;
  const char *bytes;
  size_t n;
} IntCase;

static void test_integer_limits(void **state) {
  static const IntCase cases[] = {
    { 0, "\x00", 1 }, { 127, "\x7f", 1 }, { 128, "\xcc\x80", 2 },
    { 255, "\xcc\xff", 2 }, { 256, "\xcd\x01\x00", 3 },
    { 65535, "\xcd\xff\xff", 3 }, { 65536, "\xce\x00\x01\x00\x00", 5 },
    { 4294967295LL, "\xce\xff\xff\xff\xff", 5 },
    { 4294967296LL, "\xcf\x00\x00\x00\x01\x00\x00\x00\x00", 9 },
    { LUA_MAXINTEGER, "\xcf\x7f\xff\xff\xff\xff\xff\xff\xff", 9 },
    { -1, "\xff", 1 }, { -32, "\xe0", 1 }, { -33, "\xd0\xdf", 2 },
    { -128, "\xd0\x80", 2 }, { -129, "\xd1\xff\x7f", 3 },
    { -32768, "\xd1\x80\x00", 3 }, { -32769, "\xd2\xff\xff\x7f\xff", 5 },
    { INT32_MIN, "\xd2\x80\x00\x00\x00", 5 },
    { (lua_Integer)INT32_MIN - 1, "\xd3\xff\xff\xff\xff\x7f\xff\xff\xff", 9 },
    { LUA_MININTEGER, "\xd3\x80\x00\x00\x00\x00\x00\x00\x00", 9 },
  };
  lua_State *L = *state;
  size_t i;
  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    Buffer *b;
    lua_pushinteger(L, cases[i].v);
    b = encode_top(L);
    assert_bytes(b, cases[i].bytes, cases[i].n);
    decode_all(L, b->data, b->len);
    assert_true(lua_isinteger(L, -1));
    assert_true(lua_tointeger(L, -1) == cases[i].v);
    lua_settop(L, 0);
  }
}

static void test_integer_out_of_range(void **state) {
  lua_State *L = *state;
  assert_decode_fails(L, "\xcf\x80\x00\x00\x00\x00\x00\x00\x00", 9,
                      "unsigned integer 9223372036854775808 is out of Lua's range at byte 0");
  assert_decode_fails(L, "\xcf\xff\xff\xff\xff\xff\xff\xff\xff", 9, "out of Lua's range");
}

/* ---- floats -------------------------------------------------------- */

static double roundtrip_float(lua_State *L, double f, const char *bytes) {
  Buffer *b;
  double back;
  lua_pushnumber(L, f);
  b = encode_top(L);
  if (bytes != NULL)
    assert_bytes(b, bytes, 9);
  decode_all(L, b->data, b->len);
  assert_false(lua_isinteger(L, -1));
  back = lua_tonumber(L, -1);
  lua_settop(L, 0);
  return back;
}

static void test_float_specials(void **state) {
  lua_State *L = *state;
  double z;
  assert_true(isnan(roundtrip_float(L, NAN, "\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00")));
  assert_true(isnan(roundtrip_float(L, -NAN, "\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00")));
  assert_true(roundtrip_float(L, INFINITY, "\xcb\x7f\xf0\x00\x00\x00\x00\x00\x00") == INFINITY);
  assert_true(roundtrip_float(L, -INFINITY, "\xcb\xff\xf0\x00\x00\x00\x00\x00\x00") == -INFINITY);
  z = roundtrip_float(L, -0.0, "\xcb\x80\x00\x00\x00\x00\x00\x00\x00");
  assert_true(z == 0.0 && signbit(z));
  z = roundtrip_float(L, 0.0, "\xcb\x00\x00\x00\x00\x00\x00\x00\x00");
  assert_true(z == 0.0 && !signbit(z));
  assert_true(roundtrip_float(L, DBL_MAX, NULL) == DBL_MAX);
  assert_true(roundtrip_float(L, DBL_MIN, NULL) == DBL_MIN);
  assert_true(roundtrip_float(L, 4.9406564584124654e-324, NULL) == 4.9406564584124654e-324);
  assert_true(roundtrip_float(L, 1.0, "\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00") == 1.0);
}

static void test_float32_is_read(void **state) {
  lua_State *L = *state;
  decode_all(L, "\xca\x3f\xc0\x00\x00", 5);
  assert_true(lua_tonumber(L, -1) == 1.5);
  assert_false(lua_isinteger(L, -1));
}

/* ---- strings ------------------------------------------------------- */

static void check_string_header(lua_State *L, size_t n, int binary,
                                const char *header, size_t hlen) {
  char *s = malloc(n + 1);
  Buffer *b;
  size_t len;
  const char *back;
  assert_non_null(s);
  memset(s, binary ? 0xff : 'x', n);
  lua_pushlstring(L, s, n);
  b = encode_top(L);
  assert_int_equal(b->len, hlen + n);
  assert_memory_equal(b->data, header, hlen);
  decode_all(L, b->data, b->len);
  back = lua_tolstring(L, -1, &len);
  assert_int_equal(len, n);
  assert_memory_equal(back, s, n);
  lua_settop(L, 0);
  free(s);
}

static void test_string_lengths(void **state) {
  lua_State *L = *state;
  check_string_header(L, 0, 0, "\xa0", 1);
  check_string_header(L, 31, 0, "\xbf", 1);
  check_string_header(L, 32, 0, "\xd9\x20", 2);
  check_string_header(L, 255, 0, "\xd9\xff", 2);
  check_string_header(L, 256, 0, "\xda\x01\x00", 3);
  check_string_header(L, 65535, 0, "\xda\xff\xff", 3);
  check_string_header(L, 65536, 0, "\xdb\x00\x01\x00\x00", 5);
  check_string_header(L, 1, 1, "\xc4\x01", 2);
  check_string_header(L, 256, 1, "\xc5\x01\x00", 3);
  check_string_header(L, 65536, 1, "\xc6\x00\x01\x00\x00", 5);
}

static void test_binary_strings(void **state) {
  static const char *const samples[] = {
    "a\0b", "\xc3\x28", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xc0\x80", "\xe2\x82",
  };
  static const size_t lengths[] = { 3, 2, 3, 4, 2, 2 };
  lua_State *L = *state;
  size_t i;
  for (i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
    Buffer *b;
    size_t n;
    const char *back;
    lua_pushlstring(L, samples[i], lengths[i]);
    b = encode_top(L);
    /* NUL is valid UTF-8; the others are not: bin */
    assert_int_equal((unsigned char)b->data[0], i == 0 ? 0xa3 : 0xc4);
    decode_all(L, b->data, b->len);
    back = lua_tolstring(L, -1, &n);
    assert_int_equal(n, lengths[i]);
    assert_memory_equal(back, samples[i], n);
    lua_settop(L, 0);
  }
}

/* Every length around the 8-byte steps of the UTF-8 check, with one
** multi-byte character, a bad byte or a cut sequence at every place:
** str for valid UTF-8, bin for the others. */
static void test_utf8_at_every_position(void **state) {
  lua_State *L = *state;
  char s[40];
  size_t n, p;
  for (n = 1; n <= 33; n++)
    for (p = 0; p < n; p++) {
      int kind;
      for (kind = 0; kind < 3; kind++) {
        Buffer *b;
        unsigned char tag;
        memset(s, 'a', n);
        if (kind == 0 && p + 1 < n) { s[p] = '\xc3'; s[p + 1] = '\xa9'; }  /* e-acute */
        else if (kind == 1) s[p] = '\xff';
        else if (kind == 2 && p == n - 1) s[p] = '\xc3';                   /* cut short */
        else continue;
        lua_pushlstring(L, s, n);
        b = encode_top(L);
        tag = (unsigned char)b->data[0];
        assert_int_equal(tag, kind == 0 ? (n <= 31 ? 0xa0 | n : 0xd9) : 0xc4);
        lua_settop(L, 0);
      }
    }
}

/* A snapshot writes a large map without a [1] in one pass: the header is
** still the shortest, and the map decodes to the same pairs. */
static void test_snapshot_map_headers(void **state) {
  static const size_t sizes[] = { 17, 255, 65535, 65536 };
  static const char *const heads[] = { "\xde\x00\x11", "\xde\x00\xff", "\xde\xff\xff",
                                       "\xdf\x00\x01\x00\x00" };
  lua_State *L = *state;
  size_t i, k;
  for (i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    Buffer *b;
    size_t pos = 0;
    lua_createtable(L, 0, (int)sizes[i]);
    for (k = 1; k <= sizes[i]; k++) {
      char key[16];
      snprintf(key, sizeof key, "k%d", (int)k);
      lua_pushinteger(L, (lua_Integer)k);
      lua_setfield(L, -2, key);
    }
    buffer_new(L, 0);
    assert_true(codec_encode_snapshot(L, 1, 2, "state"));
    b = buffer_at(L, 2);
    assert_memory_equal(b->data, heads[i], sizes[i] < 65536 ? 3 : 5);
    assert_true(codec_decode(L, b->data, b->len, &pos));
    assert_int_equal(pos, b->len);
    for (k = 1; k <= sizes[i]; k += 997) {
      char key[16];
      snprintf(key, sizeof key, "k%d", (int)k);
      lua_getfield(L, -1, key);
      assert_int_equal(lua_tointeger(L, -1), (lua_Integer)k);
      lua_pop(L, 1);
    }
    assert_int_equal(lua_rawlen(L, -1), 0);
    lua_settop(L, 0);
  }
}

/* ---- tables and nesting -------------------------------------------- */

static void push_nested(lua_State *L, int depth) {
  int i;
  lua_newtable(L);
  for (i = 1; i < depth; i++) {
    lua_createtable(L, 1, 0);
    lua_insert(L, -2);
    lua_rawseti(L, -2, 1);
  }
}

static void test_nesting_at_the_limit(void **state) {
  lua_State *L = *state;
  Buffer *b;
  push_nested(L, CODEC_MAX_DEPTH);
  b = encode_top(L);
  assert_int_equal(b->len, CODEC_MAX_DEPTH);  /* 0x91 ... 0x80 */
  decode_all(L, b->data, b->len);
  assert_true(lua_istable(L, -1));
}

static void test_nesting_past_the_limit(void **state) {
  lua_State *L = *state;
  char deep[CODEC_MAX_DEPTH + 2];
  push_nested(L, CODEC_MAX_DEPTH + 1);
  buffer_new(L, 0);
  assert_int_equal(codec_encode(L, 1, 2, "event"), 0);
  assert_non_null(strstr(lua_tostring(L, -1), "tables nested more than 100 deep at event..."));
  lua_settop(L, 0);
  memset(deep, 0x91, sizeof deep);
  deep[CODEC_MAX_DEPTH + 1] = '\x80';
  assert_decode_fails(L, deep, sizeof deep, "array nested more than 100 deep at byte 100");
}

static int a_function(lua_State *L) {
  (void)L;
  return 0;
}

static void test_refused_values(void **state) {
  lua_State *L = *state;
  buffer_new(L, 0);
  lua_pushcfunction(L, a_function);
  assert_int_equal(codec_encode(L, -1, 1, "v"), 0);
  assert_non_null(strstr(lua_tostring(L, -1), "cannot encode a function"));
  lua_settop(L, 1);
  lua_newtable(L);                   /* { [{}] = true } */
  lua_newtable(L);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  assert_int_equal(codec_encode(L, -1, 1, "v"), 0);
  assert_non_null(strstr(lua_tostring(L, -1), "a key of type table"));
  lua_settop(L, 1);
  lua_newtable(L);                   /* t.self = t */
  lua_pushvalue(L, -1);
  lua_setfield(L, -2, "self");
  assert_int_equal(codec_encode(L, -1, 1, "v"), 0);
  assert_string_equal(lua_tostring(L, -1),
                      "cannot encode a cycle (a table that contains itself) at v.self");
}

static void test_large_map_keys_sorted(void **state) {
  lua_State *L = *state;
  Buffer *b;
  int i;
  lua_newtable(L);
  for (i = 100; i >= 1; i--) {       /* more than the small-map path holds */
    char key[16];
    snprintf(key, sizeof key, "k%03d", i);
    lua_pushinteger(L, i);
    lua_setfield(L, -2, key);
  }
  b = encode_top(L);
  assert_memory_equal(b->data, "\xde\x00\x64\xa4k001\x01\xa4k002\x02", 14);
}

/* ---- malformed input ----------------------------------------------- */

static void test_every_truncation_fails(void **state) {
  lua_State *L = *state;
  Buffer *b;
  size_t n;
  lua_newtable(L);                   /* { a = { 1, -200, "xyz", 1.5 }, b = true } */
  lua_createtable(L, 4, 0);
  lua_pushinteger(L, 1);
  lua_rawseti(L, -2, 1);
  lua_pushinteger(L, -200);
  lua_rawseti(L, -2, 2);
  lua_pushliteral(L, "xyz");
  lua_rawseti(L, -2, 3);
  lua_pushnumber(L, 1.5);
  lua_rawseti(L, -2, 4);
  lua_setfield(L, -2, "a");
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, "b");
  b = encode_top(L);
  for (n = 0; n < b->len; n++) {
    char *copy = malloc(n + 1);     /* exact size: ASan sees any overread */
    assert_non_null(copy);
    memcpy(copy, b->data, n);
    assert_decode_fails(L, copy, n, "cannot decode: ");
    free(copy);
  }
}

static void test_bad_tags(void **state) {
  static const unsigned char ext[] = { 0xc7, 0xc8, 0xc9, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8 };
  lua_State *L = *state;
  size_t i;
  assert_decode_fails(L, "\xc1", 1, "byte 0xc1 is never used in MessagePack at byte 0");
  for (i = 0; i < sizeof ext; i++) {
    char s[16] = { 0 };
    s[0] = (char)ext[i];
    assert_decode_fails(L, s, sizeof s, "ext types are not supported");
  }
}

static void test_lengths_beyond_input(void **state) {
  lua_State *L = *state;
  assert_decode_fails(L, "\xdd\xff\xff\xff\xff\x01", 6, "array of 4294967295 elements is larger than the input");
  assert_decode_fails(L, "\xdf\xff\xff\xff\xff\x01\x01", 7, "map of 4294967295 elements is larger than the input");
  assert_decode_fails(L, "\xdb\xff\xff\xff\xff", 5, "input ends inside a str");
  assert_decode_fails(L, "\xc6\xff\xff\xff\xff", 5, "input ends inside a bin");
  assert_decode_fails(L, "\xdc\x00\x03\x01\x02", 5, "array of 3 elements is larger than the input");
  assert_decode_fails(L, "\x82\x01\x01\x01", 4, "map of 2 elements is larger than the input");
}

static void test_bad_keys(void **state) {
  lua_State *L = *state;
  assert_decode_fails(L, "\x82\xa1\x61\x01\xa1\x61\x02", 7, "duplicate map key at byte 4");
  /* keys in canonical order need no lookup: a duplicate after them, or
  ** out of order, or written otherwise (str8, bin) is still found */
  assert_decode_fails(L, "\x83\xa1\x61\x01\xa1\x62\x02\xa1\x61\x03", 10, "duplicate map key at byte 7");
  assert_decode_fails(L, "\x83\xa1\x62\x01\xa1\x61\x02\xa1\x62\x03", 10, "duplicate map key at byte 7");
  assert_decode_fails(L, "\x82\xa1\x61\x01\xd9\x01\x61\x02", 8, "duplicate map key at byte 4");
  assert_decode_fails(L, "\x82\xa1\x61\x01\xc4\x01\x61\x02", 8, "duplicate map key at byte 4");
  assert_decode_fails(L, "\x83\xa1\x61\x01\xa2\x61\x62\x02\xa2\x61\x62\x03", 12, "duplicate map key at byte 8");
  assert_decode_fails(L, "\x83\x01\x01\xa1\x61\x02\xa1\x61\x03", 9, "duplicate map key at byte 6");
  assert_decode_fails(L, "\x82\xa0\x01\xa0\x02", 5, "duplicate map key at byte 3");
  {  /* a key cut short after one in order: nothing read past the input (ASan) */
    char *cut = malloc(7);
    assert_non_null(cut);
    memcpy(cut, "\x82\xa1\x61\x01\xa5\x61\x62", 7);
    assert_decode_fails(L, cut, 7, "input ends inside a str");
    free(cut);
  }
  assert_decode_fails(L, "\x81\xc0\x01", 3, "map key nil is not allowed at byte 1");
  assert_decode_fails(L, "\x81\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00\x01", 11, "map key NaN");
  assert_decode_fails(L, "\x81\x90\x01", 3, "map key table is not allowed");
}

static void test_start_past_end(void **state) {
  lua_State *L = *state;
  size_t pos = 5;
  assert_int_equal(codec_decode(L, "\x01", 1, &pos), 0);
  assert_int_equal(pos, 5);
  assert_non_null(strstr(lua_tostring(L, -1), "start past the end"));
}

/* xorshift64: deterministic pseudo-random numbers for the tests below. */
static unsigned long long next_random(unsigned long long *x) {
  *x ^= *x << 13;
  *x ^= *x >> 7;
  *x ^= *x << 17;
  return *x;
}

/* Up to 47 random bytes (malloc'd, *n of them), one in four a tag from
** 'tags' .. 'tags' + 'ntags' - 1 (containers and lengths, to get deep). */
static char *random_input(unsigned long long *x, size_t *n, unsigned tags, unsigned ntags) {
  size_t i;
  char *s;
  *n = (size_t)(next_random(x) % 48);
  s = malloc(*n + 1);
  assert_non_null(s);
  for (i = 0; i < *n; i++) {
    unsigned long long r = next_random(x);
    s[i] = (char)((r & 3) == 0 ? tags + (r >> 8) % ntags : (r >> 16) & 0xff);
  }
  return s;
}

/* Deterministic random bytes: decoding must never crash nor overread. */
static void test_random_bytes_never_crash(void **state) {
  lua_State *L = *state;
  unsigned long long x = 88172645463325252ULL;
  int round;
  for (round = 0; round < 50000; round++) {
    size_t n, pos = 0;
    char *s = random_input(&x, &n, 0x90, 0x10);
    (void)codec_decode(L, s, n, &pos);
    lua_settop(L, 0);
    free(s);
  }
}

/* ---- copy while encoding ------------------------------------------- */

static void test_encode_copy_is_a_decoded_twin(void **state) {
  lua_State *L = *state;
  Buffer *b;
  size_t pos = 0;
  lua_newtable(L);                   /* 1: { list = { 1, 2.5, NaN }, [true] = "x" } */
  lua_createtable(L, 3, 0);
  lua_pushinteger(L, 1);
  lua_rawseti(L, -2, 1);
  lua_pushnumber(L, 2.5);
  lua_rawseti(L, -2, 2);
  lua_pushnumber(L, -NAN);
  lua_rawseti(L, -2, 3);
  lua_setfield(L, -2, "list");
  lua_pushboolean(L, 1);
  lua_pushliteral(L, "x");
  lua_rawset(L, -3);
  buffer_new(L, 0);                  /* 2 */
  assert_int_equal(codec_encode_copy(L, 1, 2, "v"), 1);  /* 3: the copy */
  assert_int_equal(lua_gettop(L), 3);
  assert_false(lua_rawequal(L, 1, 3));
  b = buffer_at(L, 2);
  assert_int_equal(codec_decode(L, b->data, b->len, &pos), 1);  /* 4 */
  buffer_new(L, 0);                  /* 5: encode the copy, compare bytes */
  assert_int_equal(codec_encode(L, 3, 5, "v"), 1);
  b = buffer_at(L, 2);
  assert_int_equal(buffer_at(L, 5)->len, b->len);
  assert_memory_equal(buffer_at(L, 5)->data, b->data, b->len);
  lua_getfield(L, 3, "list");
  lua_rawgeti(L, -1, 3);             /* canonical NaN: 0x7ff8000000000000 */
  {
    double nan = lua_tonumber(L, -1);
    unsigned long long bits;
    memcpy(&bits, &nan, sizeof bits);
    assert_true(bits == 0x7ff8000000000000ULL);
  }
}

static void test_encode_copy_failure_pushes_only_a_message(void **state) {
  lua_State *L = *state;
  lua_newtable(L);
  lua_pushcfunction(L, a_function);
  lua_setfield(L, -2, "f");
  buffer_new(L, 0);
  assert_int_equal(codec_encode_copy(L, 1, 2, "v"), 0);
  assert_int_equal(lua_gettop(L), 3);
  assert_non_null(strstr(lua_tostring(L, -1), "cannot encode a function"));
}

/* ---- buffers ------------------------------------------------------- */

static void test_buffer_growth_keeps_bytes(void **state) {
  lua_State *L = *state;
  Buffer *b;
  int i;
  buffer_new(L, 0);
  for (i = 0; i < 10000; i++) {
    unsigned char c = (unsigned char)(i * 7);
    b = buffer_append(L, 1, &c, 1);
  }
  b = buffer_at(L, 1);
  assert_int_equal(b->len, 10000);
  assert_true(b->cap >= b->len);
  for (i = 0; i < 10000; i++)
    assert_int_equal((unsigned char)b->data[i], (unsigned char)(i * 7));
}

/* ---- reading fields without decoding -------------------------------- */

/* codec_encode_marking finds where a root map's key's value is, not a
** nested one's; codec_value_is compares it without decoding. */
static void test_marking_and_value_is(void **state) {
  lua_State *L = *state;
  Buffer *b;
  size_t at = 0, none = 0;
  int ok = luaL_dostring(L, "return { inner = { event_id = 7 }, event_id = 70000, z = 'x' }");
  assert_int_equal(ok, LUA_OK);                            /* 1: the value */
  b = buffer_new(L, 0);                                    /* 2: bytes */
  assert_int_equal(codec_encode_marking(L, 1, 2, "v", 0, "event_id", &at), 1);
  b = buffer_at(L, 2);
  assert_int_equal(codec_encode_marking(L, 1, 2, "v", 1, "absent", &none), 1);  /* 3: copy */
  assert_true(none == (size_t)-1);
  assert_true(lua_istable(L, 3));
  b = buffer_at(L, 2);
  lua_pushinteger(L, 70000);                               /* 4 */
  lua_pushinteger(L, 7);                                   /* 5 */
  lua_pushliteral(L, "70000");                             /* 6 */
  assert_int_equal(codec_value_is(L, 4, b->data, b->len, at), 1);
  assert_int_equal(codec_value_is(L, 5, b->data, b->len, at), 0);
  assert_int_equal(codec_value_is(L, 6, b->data, b->len, at), 0);
  /* bytes that end inside the value never match, nor are read past */
  assert_int_equal(codec_value_is(L, 4, b->data, at + 2, at), 0);
  assert_int_equal(codec_value_is(L, 4, b->data, at, at), 0);
  lua_pushliteral(L, "x");                                 /* 7 */
  assert_int_equal(codec_value_is(L, 7, b->data, b->len, b->len - 2), 1);
  assert_int_equal(codec_value_is(L, 7, b->data, b->len - 1, b->len - 2), 0);
}

/* codec_push_field reads a root map's field; never past the input. */
static void test_push_field(void **state) {
  lua_State *L = *state;
  Buffer *b;
  size_t pos = 0, end;
  int ok = luaL_dostring(L, "return { inner = { event_id = 7 }, event_id = 70000, z = 'x' }");
  assert_int_equal(ok, LUA_OK);
  b = encode_top(L);                                       /* 1: bytes */
  end = b->len;
  assert_int_equal(codec_push_field(L, b->data, end, &pos, "event_id"), 1);
  assert_int_equal(lua_tointeger(L, -1), 70000);
  assert_int_equal(pos, end);  /* past the whole map */
  pos = 0;
  assert_int_equal(codec_push_field(L, b->data, end, &pos, "missing"), 1);
  assert_true(lua_isnil(L, -1));
  pos = 0;
  assert_int_equal(codec_push_field(L, b->data, end - 1, &pos, "z"), 0);
  assert_int_equal(pos, 0);
}

/* Random bytes: reading fields and values must never crash nor overread. */
static void test_field_random_bytes(void **state) {
  lua_State *L = *state;
  unsigned long long x = 2463534242ULL;
  int round;
  lua_pushinteger(L, 1);
  lua_pushliteral(L, "a");
  for (round = 0; round < 50000; round++) {
    size_t n, pos = 0;
    char *s = random_input(&x, &n, 0x80, 0x20);  /* maps and arrays */
    (void)codec_value_is(L, 1 + (int)(round & 1), s, n, (size_t)(x % (n + 1)));
    (void)codec_push_field(L, s, n, &pos, "a");
    assert_true(pos <= n);
    lua_settop(L, 2);
    free(s);
  }
}

/* ---- maps of known keys: codec_decode_shaped ------------------------ */

/* Push the envelope keys, in canonical order: stack 1 .. 4. */
static void push_envelope_keys(lua_State *L) {
  lua_settop(L, 0);
  lua_pushliteral(L, "command");
  lua_pushliteral(L, "flow");
  lua_pushliteral(L, "id");
  lua_pushliteral(L, "workflow");
}

/* The values at stack indices a and b have the same canonical bytes. */
static void assert_same_bytes(lua_State *L, int a, int b) {
  int top = lua_gettop(L);
  Buffer *x, *y;
  a = lua_absindex(L, a), b = lua_absindex(L, b);
  buffer_new(L, 0);
  buffer_new(L, 0);
  assert_int_equal(codec_encode(L, a, top + 1, "v"), 1);
  assert_int_equal(codec_encode(L, b, top + 2, "v"), 1);
  x = buffer_at(L, top + 1), y = buffer_at(L, top + 2);
  assert_int_equal(x->len, y->len);
  assert_memory_equal(x->data, y->data, x->len);
  lua_settop(L, top);
}

/* The shape's value slots hold the decoded map's values (the very same
** Lua values), and its value_at .. value_end, when known, are where each
** value's bytes are in s. */
static void assert_shape_values(lua_State *L, const CodecShape *shape, int map,
                                const char *s) {
  int i;
  for (i = 0; i < shape->nkeys; i++) {
    if (lua_istable(L, map)) {
      lua_pushvalue(L, shape->keys + i);
      lua_rawget(L, map);
    }
    else
      lua_pushnil(L);
    assert_true(lua_rawequal(L, -1, shape->values + i));
    lua_pop(L, 1);
    if (shape->value_at[i] != (size_t)-1) {
      size_t pos = shape->value_at[i];
      assert_int_equal(codec_decode(L, s, shape->value_end[i], &pos), 1);
      assert_int_equal(pos, shape->value_end[i]);
      assert_same_bytes(L, -1, shape->values + i);
      lua_pop(L, 1);
    }
  }
}

/* codec_decode_shaped gives exactly codec_decode's result on s[0 .. n):
** the same return, position, stack height, and the same value (by its
** canonical bytes) or the same message; without a memo, then twice with
** one (cold and warm), giving the values too. Keys at 1 .. 4; the stack
** is left at 4. */
static void assert_shaped_is_generic(lua_State *L, const char *s, size_t n) {
  CodecMemo memo;
  CodecShape shape;
  int round, values, base;
  lua_settop(L, 4);
  codec_memo_init(L, &memo);
  values = lua_gettop(L) + 1;
  base = values + 3;
  lua_settop(L, base);
  for (round = 0; round < 3; round++) {
    size_t pos1 = 0, pos2 = 0;
    int ok1, ok2;
    codec_shape_init(L, &shape, 1, 4);
    if (round > 0)
      shape.memo = &memo, shape.values = values;
    ok1 = codec_decode(L, s, n, &pos1);              /* base + 1 */
    ok2 = codec_decode_shaped(L, s, n, &pos2, &shape);  /* base + 2 */
    assert_int_equal(ok1, ok2);
    assert_int_equal(pos1, pos2);
    assert_int_equal(lua_gettop(L), base + 2);
    if (ok1) {
      assert_same_bytes(L, base + 1, base + 2);
      if (lua_istable(L, base + 1))
        assert_false(lua_rawequal(L, base + 1, base + 2));  /* two tables, not one */
      if (round > 0)
        assert_shape_values(L, &shape, base + 2, s);
    }
    else
      assert_string_equal(lua_tostring(L, base + 1), lua_tostring(L, base + 2));
    lua_settop(L, base);
  }
  lua_settop(L, 4);
}

/* Encode an envelope { command = { command_type = "process_file",
** file = "a", attempt = 2 }, flow = 17, id = "batch/17/1/1",
** workflow = "batch" } into a malloc'd copy (*n bytes). */
static char *envelope_bytes(lua_State *L, size_t *n) {
  char *copy;
  lua_createtable(L, 0, 4);
  lua_createtable(L, 0, 3);
  lua_pushliteral(L, "process_file");
  lua_setfield(L, -2, "command_type");
  lua_pushliteral(L, "a");
  lua_setfield(L, -2, "file");
  lua_pushinteger(L, 2);
  lua_setfield(L, -2, "attempt");
  lua_setfield(L, -2, "command");
  lua_pushinteger(L, 17);
  lua_setfield(L, -2, "flow");
  lua_pushliteral(L, "batch/17/1/1");
  lua_setfield(L, -2, "id");
  lua_pushliteral(L, "batch");
  lua_setfield(L, -2, "workflow");
  {
    Buffer *b = encode_top(L);
    *n = b->len;
    copy = malloc(b->len + 1);
    assert_non_null(copy);
    memcpy(copy, b->data, b->len);
  }
  lua_pop(L, 1);
  return copy;
}

static void test_shaped_envelope(void **state) {
  lua_State *L = *state;
  size_t n, pos = 0;
  char *s;
  CodecShape shape;
  push_envelope_keys(L);
  s = envelope_bytes(L, &n);
  assert_int_equal((unsigned char)s[0], 0x84);
  codec_shape_init(L, &shape, 1, 4);
  assert_int_equal(codec_decode_shaped(L, s, n, &pos, &shape), 1);
  assert_int_equal(pos, n);
  lua_getfield(L, 5, "id");
  assert_string_equal(lua_tostring(L, -1), "batch/17/1/1");
  lua_getfield(L, 5, "command");
  lua_getfield(L, -1, "file");
  assert_string_equal(lua_tostring(L, -1), "a");
  lua_settop(L, 4);
  assert_shaped_is_generic(L, s, n);
  free(s);
}

/* Other shapes go the generic way: keys in another order, a key missing
** or extra, a key written as str8, nil values, bytes left over, a value
** nested too deep, a start past the end. */
static void test_shaped_other_shapes(void **state) {
  static const struct { const char *s; size_t n; } cases[] = {
    { "\x84\xa4" "flow" "\x01\xa7" "command" "\x80\xa2" "id" "\xa1x\xa8" "workflow" "\xa1w", 34 },
    { "\x83\xa7" "command" "\x80\xa4" "flow" "\x01\xa2" "id" "\xa1x", 22 },
    { "\x85\xa7" "command" "\x80\xa4" "flow" "\x01\xa2" "id" "\xa1x\xa8" "workflow" "\xa1w\xa1z\x01", 37 },
    { "\x84\xd9\x07" "command" "\x80\xa4" "flow" "\x01\xa2" "id" "\xa1x\xa8" "workflow" "\xa1w", 35 },
    { "\x84\xa7" "command" "\xc0\xa4" "flow" "\xc0\xa2" "id" "\xc0\xa8" "workflow" "\xc0", 31 },
    { "\x84\xa7" "command" "\x80\xa4" "flow" "\x01\xa2" "id" "\xa1x\xa8" "workflow" "\xa1w\x01\x02", 36 },
    { "\x84\xa7" "command" "\x80\xa4" "flow" "\x01\xa2" "id" "\xa1x\xa8" "workflow" "\xc1", 33 },
    { "\x84\xa7" "commanX" "\x80\xa4" "flow" "\x01\xa2" "id" "\xa1x\xa8" "workflow" "\xa1w", 34 },
    { "\x84\xa7" "command" "\x80\xa4" "flow" "\x01\xa2" "id" "\xa1x\xa8" "workflow", 32 },
    { "\x81\xa7" "command" "\x80", 10 },
    { "\x80", 1 }, { "", 0 }, { "\xc0", 1 },
  };
  lua_State *L = *state;
  size_t i, pos = 3;
  char deep[140];
  CodecShape shape;
  push_envelope_keys(L);
  for (i = 0; i < sizeof cases / sizeof cases[0]; i++)
    assert_shaped_is_generic(L, cases[i].s, cases[i].n);
  /* command nested 99 deep (fits, with the map: 100) and 100 deep */
  for (i = 98; i <= 99; i++) {
    size_t k, at = 0;
    memcpy(deep, "\x84\xa7" "command", 9), at = 9;
    for (k = 0; k < i; k++)
      deep[at++] = (char)0x91;
    deep[at++] = 0x01;
    memcpy(deep + at, "\xa4" "flow" "\x01\xa2" "id" "\xa1x\xa8" "workflow" "\xa1w", 23);
    assert_shaped_is_generic(L, deep, at + 23);
  }
  codec_shape_init(L, &shape, 1, 4);
  assert_int_equal(codec_decode_shaped(L, "\x01", 1, &pos, &shape), 0);  /* past the end */
  assert_int_equal(pos, 3);
  assert_non_null(strstr(lua_tostring(L, -1), "start past the end"));
}

/* Every truncation and every one-byte change of an envelope, and random
** bytes after its header: the generic decoder's result each time. */
static void test_shaped_mutations(void **state) {
  static const unsigned char into[] = { 0x00, 0x01, 0x7f, 0x80, 0x83, 0x84, 0x85, 0x91, 0xa0,
                                        0xa2, 0xa7, 0xc0, 0xc1, 0xd9, 0xde, 0xdf, 0xff };
  lua_State *L = *state;
  unsigned long long x = 1181783497276652981ULL;
  size_t n, i, k;
  char *s;
  int round;
  push_envelope_keys(L);
  s = envelope_bytes(L, &n);
  for (i = 0; i <= n; i++) {
    char *cut = malloc(i + 1);  /* exact size: ASan sees any overread */
    assert_non_null(cut);
    memcpy(cut, s, i);
    assert_shaped_is_generic(L, cut, i);
    free(cut);
  }
  for (i = 0; i < n; i++)
    for (k = 0; k < sizeof into; k++) {
      char was = s[i];
      s[i] = (char)into[k];
      assert_shaped_is_generic(L, s, n);
      s[i] = was;
    }
  for (round = 0; round < 20000; round++) {
    size_t m, keep = (size_t)(next_random(&x) % n);
    char *r = random_input(&x, &m, 0x80, 0x20);
    char *t = malloc(keep + m + 1);
    assert_non_null(t);
    memcpy(t, s, keep);
    memcpy(t + keep, r, m);
    assert_shaped_is_generic(L, t, keep + m);
    free(t);
    free(r);
  }
  free(s);
}

/* A memo gives each string exactly as Lua would (the same interned
** value), across decodes: strings that share a memo slot (same length,
** same first, middle and last bytes), the empty string, the longest one
** remembered and one longer, a bin with a str's bytes. */
static void test_memo_strings(void **state) {
  static const char input[] =
    "\x9a\xa4" "abxa" "\xa4" "acxa" "\xa4" "abxa" "\xa0" "\xa0"
    "\xd9\x28" "0123456789012345678901234567890123456789"
    "\xd9\x29" "01234567890123456789012345678901234567890"
    "\xc4\x04" "acxa" "\xa4" "acxa" "\xa4" "abxa";
  static const char *const expected[] = {
    "abxa", "acxa", "abxa", "", "",
    "0123456789012345678901234567890123456789",
    "01234567890123456789012345678901234567890", "acxa", "acxa", "abxa",
  };
  lua_State *L = *state;
  CodecMemo memo;
  CodecShape shape;
  int round, i, list;
  lua_settop(L, 0);
  push_envelope_keys(L);
  codec_memo_init(L, &memo);
  for (round = 0; round < 2; round++) {  /* cold, then warm */
    size_t pos = 0;
    codec_shape_init(L, &shape, 1, 4);
    shape.memo = &memo;
    assert_int_equal(codec_decode_shaped(L, input, sizeof input - 1, &pos, &shape), 1);
    assert_int_equal(pos, sizeof input - 1);
    list = lua_gettop(L);
    for (i = 0; i < 10; i++) {
      lua_rawgeti(L, list, i + 1);
      lua_pushstring(L, expected[i]);
      assert_true(lua_rawequal(L, -1, -2));
      lua_pop(L, 2);
    }
    lua_pop(L, 1);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(test_integer_limits, setup, teardown),
    cmocka_unit_test_setup_teardown(test_integer_out_of_range, setup, teardown),
    cmocka_unit_test_setup_teardown(test_float_specials, setup, teardown),
    cmocka_unit_test_setup_teardown(test_float32_is_read, setup, teardown),
    cmocka_unit_test_setup_teardown(test_string_lengths, setup, teardown),
    cmocka_unit_test_setup_teardown(test_binary_strings, setup, teardown),
    cmocka_unit_test_setup_teardown(test_utf8_at_every_position, setup, teardown),
    cmocka_unit_test_setup_teardown(test_snapshot_map_headers, setup, teardown),
    cmocka_unit_test_setup_teardown(test_nesting_at_the_limit, setup, teardown),
    cmocka_unit_test_setup_teardown(test_nesting_past_the_limit, setup, teardown),
    cmocka_unit_test_setup_teardown(test_refused_values, setup, teardown),
    cmocka_unit_test_setup_teardown(test_large_map_keys_sorted, setup, teardown),
    cmocka_unit_test_setup_teardown(test_every_truncation_fails, setup, teardown),
    cmocka_unit_test_setup_teardown(test_bad_tags, setup, teardown),
    cmocka_unit_test_setup_teardown(test_lengths_beyond_input, setup, teardown),
    cmocka_unit_test_setup_teardown(test_bad_keys, setup, teardown),
    cmocka_unit_test_setup_teardown(test_start_past_end, setup, teardown),
    cmocka_unit_test_setup_teardown(test_random_bytes_never_crash, setup, teardown),
    cmocka_unit_test_setup_teardown(test_encode_copy_is_a_decoded_twin, setup, teardown),
    cmocka_unit_test_setup_teardown(test_encode_copy_failure_pushes_only_a_message, setup, teardown),
    cmocka_unit_test_setup_teardown(test_buffer_growth_keeps_bytes, setup, teardown),
    cmocka_unit_test_setup_teardown(test_marking_and_value_is, setup, teardown),
    cmocka_unit_test_setup_teardown(test_push_field, setup, teardown),
    cmocka_unit_test_setup_teardown(test_field_random_bytes, setup, teardown),
    cmocka_unit_test_setup_teardown(test_shaped_envelope, setup, teardown),
    cmocka_unit_test_setup_teardown(test_shaped_other_shapes, setup, teardown),
    cmocka_unit_test_setup_teardown(test_shaped_mutations, setup, teardown),
    cmocka_unit_test_setup_teardown(test_memo_strings, setup, teardown),
  };
  return cmocka_run_group_tests_name("codec", tests, NULL, NULL);
}
