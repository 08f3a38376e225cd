/*
** codec.c - procman's codec: Lua values <-> MessagePack.
**
** Wire format (docs/codec.md): standard MessagePack, canonical subset.
**   nil, false, true        c0 c2 c3
**   integers                shortest of fixint / uint 8..64 / int 8..64
**   floats                  always float64 (cb), NaN as 7ff8000000000000
**   strings                 str family when valid UTF-8, bin family if not
**   tables 1..n (n >= 1)    array family
**   other tables            map family, keys sorted: false < true <
**                           numbers (by value) < strings (bytewise)
** The decoder also accepts float32 and non-shortest forms from other
** producers; it refuses ext types, 0xc1, duplicate keys and nil/NaN keys.
*/
#include <limits.h>
#include <stdarg.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lauxlib.h"
#include "buffer.h"
#include "codec.h"

/* Tables with at most this many pairs are encoded in one pass, from the
** Lua stack; collect_small() answers TOO_LARGE for others, or FAILED. */
#define SMALL_MAP 16
#define TOO_LARGE (-1)
#define FAILED (-2)
/* Room for the path of the failing value in an encoder error. */
#define PATH_SIZE 256
/* Stack slots a small table's encoding uses: its pairs, twice over. */
#define TABLE_SLOTS (2 * SMALL_MAP + 8)
/* The top bit of each of 8 bytes: a byte >= 0x80 is not ASCII. */
#define HIGH_BITS 0x8080808080808080ULL

/* ===================================================================
** Encoder
**
** The cost per call is mostly Lua API calls and small writes, so the
** encoder keeps both few: a small table is read in one lua_next pass with
** its pairs left on the stack, sorted by index (string keys by their first
** 8 bytes as one integer), and written through room(), which checks the
** buffer's space once per item; strings are checked for UTF-8 8 bytes at a
** time while they are copied.
** =================================================================== */

typedef struct Encoder {
  lua_State *L;
  int bidx;                              /* stack index of the Buffer */
  Buffer *b;                             /* the Buffer there, right now */
  int copy;                              /* also push a copy of the value */
  int bytes;                             /* write the bytes (0: the copy alone) */
  int unsorted;                          /* large maps in lua_next order */
  int depth;                             /* tables open right now */
  int stack_ok;                          /* slots are checked up to this index */
  const char *mark;                      /* a key of the root map to find, or NULL */
  size_t mark_len, mark_at;              /* its length; where its value starts */
  int open[CODEC_MAX_DEPTH + 1];         /* their stack indexes, for cycles */
  int cut;                               /* a cycle: no path below this depth */
  char why[96];                          /* what went wrong */
  char path[PATH_SIZE];                  /* where: filled from the end */
  size_t path_start;
  int path_cut;                          /* outer parts did not fit */
} Encoder;

/* One map key, ready to sort and to write. */
typedef struct Key {
  uint64_t head;          /* a string's first 8 bytes, big-endian, 0-padded */
  int kind;               /* KEY_FALSE .. KEY_STRING: also the sort order */
  int slot;               /* where its value is: stack index or pair number */
  lua_Integer i;
  lua_Number f;
  const char *s;
  size_t len;
} Key;

enum { KEY_FALSE, KEY_TRUE, KEY_INT, KEY_FLOAT, KEY_STRING };

static int encode_value(Encoder *e, int idx);

/* Room for 'n' more bytes: where they go (commit them with e->b->len). */
static inline unsigned char *room(Encoder *e, size_t n) {
  if (e->b->cap - e->b->len < n)
    e->b = buffer_reserve(e->L, e->bidx, n);
  return (unsigned char *)e->b->data + e->b->len;
}

static void put(Encoder *e, const void *p, size_t n) {
  memcpy(room(e, n), p, n);
  e->b->len += n;
}

static void put_byte(Encoder *e, unsigned char c) {
  *room(e, 1) = c;
  e->b->len++;
}

/* 'width' big-endian bytes of 'v' at w. */
static void store_be(unsigned char *w, unsigned long long v, int width) {
  int i;
  for (i = width - 1; i >= 0; i--, v >>= 8)
    w[i] = (unsigned char)(v & 0xff);
}

/* A tag byte followed by 'width' big-endian bytes of 'v'. */
static void put_tagged(Encoder *e, unsigned char tag, unsigned long long v,
                       int width) {
  unsigned char *w = room(e, 9);
  w[0] = tag;
  store_be(w + 1, v, width);
  e->b->len += (size_t)width + 1;
}

/*
** Write the length header of a str/bin/array/map at w; returns its size.
** The fix form ('fix' | n) when n <= fixmax, else the 8 (if the type has
** one: tag8 != 0), 16 or 32-bit form.  Types without a fix form pass
** fixmax = -1 (none fits).
*/
static size_t store_header(unsigned char *w, size_t n, int fix, long fixmax,
                           unsigned char tag8, unsigned char tag16,
                           unsigned char tag32) {
  int width;
  if ((long)n <= fixmax && n <= 31) {
    w[0] = (unsigned char)((unsigned)fix | n);
    return 1;
  }
  if (tag8 != 0 && n <= 0xff) { w[0] = tag8; width = 1; }
  else if (n <= 0xffff) { w[0] = tag16; width = 2; }
  else { w[0] = tag32; width = 4; }
  store_be(w + 1, n, width);
  return (size_t)width + 1;
}

static void put_header(Encoder *e, size_t n, int fix, long fixmax,
                       unsigned char tag8, unsigned char tag16,
                       unsigned char tag32) {
  e->b->len += store_header(room(e, 5), n, fix, fixmax, tag8, tag16, tag32);
}

static void encode_integer(Encoder *e, lua_Integer v) {
  unsigned long long u = (unsigned long long)v;  /* two's complement */
  if (v >= -32 && v <= 0x7f) {  /* positive or negative fixint */
    put_byte(e, (unsigned char)(u & 0xff));
    return;
  }
  if (v >= 0) {
    if (u <= 0xff) put_tagged(e, 0xcc, u, 1);
    else if (u <= 0xffff) put_tagged(e, 0xcd, u, 2);
    else if (u <= 0xffffffffULL) put_tagged(e, 0xce, u, 4);
    else put_tagged(e, 0xcf, u, 8);
  }
  else {
    if (v >= INT8_MIN) put_tagged(e, 0xd0, u & 0xff, 1);
    else if (v >= INT16_MIN) put_tagged(e, 0xd1, u & 0xffff, 2);
    else if (v >= INT32_MIN) put_tagged(e, 0xd2, u & 0xffffffffULL, 4);
    else put_tagged(e, 0xd3, u, 8);
  }
}

#define CANONICAL_NAN 0x7ff8000000000000ULL

static void encode_float(Encoder *e, double f) {
  unsigned long long bits;
  if (isnan(f))
    bits = CANONICAL_NAN;  /* one NaN, so output is deterministic */
  else
    memcpy(&bits, &f, sizeof bits);
  put_tagged(e, 0xcb, bits, 8);
}

static void push_canonical_nan(lua_State *L) {
  unsigned long long bits = CANONICAL_NAN;
  double nan;
  memcpy(&nan, &bits, sizeof nan);
  lua_pushnumber(L, (lua_Number)nan);
}

/* Strict UTF-8: no overlongs, no surrogates, nothing past U+10FFFF. */
static int is_utf8(const unsigned char *s, size_t n) {
  size_t i = 0;
  uint64_t w;
  if (n < 8) {  /* a short string: ASCII when no byte has its top bit */
    unsigned any = 0;
    for (; i < n; i++)
      any |= s[i];
    if (any < 0x80)
      return 1;
    i = 0;
  }
  for (; i + 8 <= n; i += 8) {  /* ASCII, the common case, 8 bytes a step */
    memcpy(&w, s + i, 8);
    if (w & HIGH_BITS)
      break;
  }
  if (i < n && i + 8 > n && n >= 8) {  /* the tail: its last 8 bytes at once */
    memcpy(&w, s + n - 8, 8);
    if (!(w & HIGH_BITS))
      return 1;
  }
  while (i < n) {
    unsigned c = s[i];
    size_t need;
    unsigned min, cp;
    if (c < 0x80) { i++; continue; }
    if (c >= 0xc2 && c <= 0xdf) { need = 1; min = 0x80; cp = c & 0x1f; }
    else if (c >= 0xe0 && c <= 0xef) { need = 2; min = 0x800; cp = c & 0x0f; }
    else if (c >= 0xf0 && c <= 0xf4) { need = 3; min = 0x10000; cp = c & 0x07; }
    else return 0;
    if (n - i - 1 < need) return 0;
    for (i++; need > 0; need--, i++) {
      if ((s[i] & 0xc0) != 0x80) return 0;
      cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
      return 0;
  }
  return 1;
}

/* Copy s[0 .. n) to d as two blocks of 'width' bytes (width <= n <= 2 *
** width), the second ending at n: they overlap when n < 2 * width. */
static inline uint64_t copy_halves(unsigned char *d, const unsigned char *s, size_t n,
                                   size_t width) {
  uint64_t a = 0, b = 0;
  memcpy(&a, s, width);
  memcpy(&b, s + n - width, width);
  memcpy(d, &a, width);
  memcpy(d + n - width, &b, width);
  return a | b;
}

/*
** Copy n <= 16 bytes from s to d with at most four loads and stores, never
** reading outside s; returns the bytes OR-ed together, so (result &
** HIGH_BITS) == 0 means ASCII.
*/
static inline uint64_t copy_short(unsigned char *d, const unsigned char *s, size_t n) {
  uint64_t any = 0;
  size_t i;
  if (n >= 8)
    return copy_halves(d, s, n, 8);
  if (n >= 4)
    return copy_halves(d, s, n, 4);
  for (i = 0; i < n; i++)
    any |= (d[i] = s[i]);
  return any;
}

/* A str when s is valid UTF-8, else a bin: any string. */
static void encode_any_string(Encoder *e, const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  unsigned char *w = room(e, n + 5);
  if (is_utf8(u, n))
    w += store_header(w, n, 0xa0, 31, 0xd9, 0xda, 0xdb);
  else
    w += store_header(w, n, 0, -1, 0xc4, 0xc5, 0xc6);
  memcpy(w, s, n);
  e->b->len = (size_t)((char *)w - e->b->data) + n;
}

/* encode_any_string, with the common case inline: a short string (most
** keys and values) is copied first and looked at after, in one pass. */
static inline void encode_string(Encoder *e, const char *s, size_t n) {
  Buffer *b = e->b;
  if (n <= 16 && b->cap - b->len > 16) {
    unsigned char *w = (unsigned char *)b->data + b->len;
    if ((copy_short(w + 1, (const unsigned char *)s, n) & HIGH_BITS) == 0) {
      w[0] = (unsigned char)(0xa0 | n);  /* ASCII: a fixstr */
      b->len += n + 1;
      return;
    }
  }
  encode_any_string(e, s, n);
}

/* ---- error reporting: reason plus the path to the value -------------- */

static int fail(Encoder *e, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->why, sizeof e->why, fmt, ap);
  va_end(ap);
  return 0;
}

/* Prepend a segment; once one does not fit, keep the inner part only. */
static void path_prepend(Encoder *e, const char *seg) {
  size_t n = strlen(seg);
  if (e->path_cut || n > e->path_start) {
    e->path_cut = 1;
    return;
  }
  e->path_start -= n;
  memcpy(e->path + e->path_start, seg, n);
}

/* Can the key be shown as ".name"? (A Lua name of at most 40 bytes.) */
static int is_identifier(const char *s, size_t n) {
  size_t i;
  if (n == 0 || n > 40 || (s[0] >= '0' && s[0] <= '9'))
    return 0;
  for (i = 0; i < n; i++) {
    char c = s[i];
    if (!(c == '_' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
          (c >= 'A' && c <= 'Z')))
      return 0;
  }
  return 1;
}

/* Record "the failing value sits under key 'k'" on the way out. */
static int fail_under(Encoder *e, const Key *k) {
  char seg[64];
  if (e->depth > e->cut)
    return 0;  /* inside the cycle's repeats: see too_deep() */
  switch (k->kind) {
    case KEY_FALSE: snprintf(seg, sizeof seg, "[false]"); break;
    case KEY_TRUE: snprintf(seg, sizeof seg, "[true]"); break;
    case KEY_INT: snprintf(seg, sizeof seg, "[" LUA_INTEGER_FMT "]", k->i); break;
    case KEY_FLOAT: snprintf(seg, sizeof seg, "[%.17g]", (double)k->f); break;
    default:
      if (is_identifier(k->s, k->len))
        snprintf(seg, sizeof seg, ".%.*s", (int)k->len, k->s);
      else
        snprintf(seg, sizeof seg, "[\"%.*s%s\"]", (int)(k->len > 40 ? 40 : k->len),
                 k->s, k->len > 40 ? "..." : "");
  }
  path_prepend(e, seg);
  return 0;
}

/* ---- tables -------------------------------------------------------- */

/* Big-endian loads: one load and a byte swap where the compiler has one. */
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
static uint64_t load_be64(const unsigned char *u) {
  uint64_t v;
  memcpy(&v, u, 8);
  return __builtin_bswap64(v);
}

static uint64_t load_be32(const unsigned char *u) {
  uint32_t v;
  memcpy(&v, u, 4);
  return __builtin_bswap32(v);
}
#else
static uint64_t load_be64(const unsigned char *u) {
  uint64_t v = 0;
  int i;
  for (i = 0; i < 8; i++)
    v = (v << 8) | u[i];
  return v;
}

static uint64_t load_be32(const unsigned char *u) {
  return ((uint64_t)u[0] << 24) | ((uint64_t)u[1] << 16) | ((uint64_t)u[2] << 8) | u[3];
}
#endif

/* A string key's first 8 bytes as a big-endian integer, 0-padded: two
** heads compare as memcmp compares those bytes.  Reads nothing past s[n). */
static uint64_t key_head(const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  uint64_t h = 0;
  size_t i;
  if (n >= 8)
    return load_be64(u);
  if (n >= 4)  /* two 4-byte halves, overlapping when n < 8 */
    return (load_be32(u) << 32) | (load_be32(u + n - 4) << (8 * (8 - n)));
  for (i = 0; i < n; i++)
    h |= (uint64_t)u[i] << (56 - 8 * i);
  return h;
}

/* Bytewise order of two string keys (-1, 0, 1).  Equal heads mean equal
** first min(8, lengths) bytes, so a key of at most 8 bytes is then a
** prefix of the other. */
static int string_order(const Key *a, const Key *b) {
  size_t n;
  if (a->head != b->head)
    return a->head < b->head ? -1 : 1;
  n = a->len < b->len ? a->len : b->len;
  if (n > 8) {
    int c = memcmp(a->s + 8, b->s + 8, n - 8);
    if (c != 0)
      return c < 0 ? -1 : 1;
  }
  return a->len < b->len ? -1 : a->len > b->len;
}

/* Sort order of keys; keys of one table are never equal. */
static int key_compare(const void *pa, const void *pb) {
  const Key *a = (const Key *)pa, *b = (const Key *)pb;
  if (a->kind == KEY_STRING && b->kind == KEY_STRING)  /* the common case */
    return string_order(a, b);
  if ((a->kind == KEY_INT || a->kind == KEY_FLOAT) &&
      (b->kind == KEY_INT || b->kind == KEY_FLOAT)) {
    if (a->kind == KEY_INT && b->kind == KEY_INT)
      return a->i < b->i ? -1 : a->i > b->i;
    if (a->kind == KEY_FLOAT && b->kind == KEY_FLOAT)
      return a->f < b->f ? -1 : a->f > b->f;
    if (a->kind == KEY_FLOAT)
      return -key_compare(b, a);
    /* integer a against float b, exactly (no rounding of a to double) */
    if (b->f >= 9223372036854775808.0) return -1;
    if (b->f < -9223372036854775808.0) return 1;
    {
      lua_Number fl = floor(b->f);
      lua_Integer bi = (lua_Integer)fl;
      if (a->i != bi) return a->i < bi ? -1 : 1;
      return -1;  /* a == floor(b) < b: b is not integral, or it'd be int */
    }
  }
  if (a->kind != b->kind)
    return a->kind < b->kind ? -1 : 1;
  return 0;  /* two booleans of one table: the same key */
}

/* Describe the key at stack index 'idx'; 0 if it cannot be a map key. */
static int key_describe(lua_State *L, int idx, Key *k) {
  switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN:
      k->kind = lua_toboolean(L, idx) ? KEY_TRUE : KEY_FALSE;
      return 1;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) { k->kind = KEY_INT; k->i = lua_tointeger(L, idx); }
      else { k->kind = KEY_FLOAT; k->f = lua_tonumber(L, idx); }
      return 1;
    case LUA_TSTRING:
      k->kind = KEY_STRING;
      k->s = lua_tolstring(L, idx, &k->len);
      k->head = key_head(k->s, k->len);
      return 1;
    default:
      return 0;
  }
}

static void encode_key(Encoder *e, const Key *k) {
  switch (k->kind) {
    case KEY_STRING: encode_string(e, k->s, k->len); break;
    case KEY_FALSE: put_byte(e, 0xc2); break;
    case KEY_TRUE: put_byte(e, 0xc3); break;
    case KEY_INT: encode_integer(e, k->i); break;
    default: encode_float(e, k->f);
  }
}

/* Sort the keys of a small table: order[] gets their indexes, sorted
** (insertion sort, moving bytes rather than Keys); 'strings' says all
** are strings, the common case, compared inline. */
static void sort_small(const Key *keys, size_t n, int strings, unsigned char *order) {
  size_t i, j;
  for (i = 0; i < n; i++)
    order[i] = (unsigned char)i;
  for (i = 1; i < n; i++) {
    unsigned char x = order[i];
    const Key *k = &keys[x];
    for (j = i; j > 0; j--) {
      const Key *prev = &keys[order[j - 1]];
      if ((strings ? string_order(prev, k) : key_compare(prev, k)) < 0)
        break;
      order[j] = order[j - 1];
    }
    order[j] = x;
  }
}

/* Sorted keys (in 'order', or in place when it is NULL) that are exactly
** the integers 1..n (n >= 1): an array. */
static int keys_are_sequence(const Key *keys, const unsigned char *order, size_t n) {
  size_t i;
  for (i = 0; i < n; i++) {
    const Key *k = order != NULL ? &keys[order[i]] : &keys[i];
    if (k->kind != KEY_INT || k->i != (lua_Integer)(i + 1))
      return 0;
  }
  return n > 0;
}

/* Push the value (or with 'key' the key) of a collected pair: it is on
** the stack (key just below its value) or in the pairs table 'store'. */
static void push_pair(lua_State *L, const Key *k, int store, int key) {
  if (store == 0)
    lua_pushvalue(L, k->slot - key);
  else
    lua_rawgeti(L, store, (lua_Integer)(2 * k->slot + 2 - key));
}

/*
** Encode the value of pair 'k' and, in copy mode, store its copy under
** the same key in the table at 'copy' (as element 'j' of an array).  Pairs
** collected on the stack are encoded where they are: no push, no pop.
*/
static int encode_pair_value(Encoder *e, const Key *k, int store, int copy,
                             lua_Integer j) {
  lua_State *L = e->L;
  if (copy != 0 && j == 0)
    push_pair(L, k, store, 1);                 /* the key, for lua_rawset */
  if (store == 0) {
    if (!encode_value(e, k->slot))
      return 0;
  }
  else {
    push_pair(L, k, store, 0);
    if (!encode_value(e, lua_gettop(L)))
      return 0;
    if (copy != 0)
      lua_remove(L, -2);                       /* the value: keep its copy */
    else
      lua_pop(L, 1);
  }
  if (copy != 0 && j > 0)
    lua_rawseti(L, copy, j);
  else if (copy != 0)
    lua_rawset(L, copy);
  return 1;
}

/*
** Write the pairs in key order ('order' gives it, or the keys are sorted
** in place when it is NULL), as an array or a map.  In copy mode the copy
** of the table is built alongside (sized exactly, filled in key order as
** the decoder fills it) and left at the top.
*/
static int encode_pairs(Encoder *e, const Key *keys, const unsigned char *order,
                        size_t n, int store, int as_array) {
  lua_State *L = e->L;
  int copy = 0;
  size_t j;
  if (e->copy) {
    lua_createtable(L, as_array ? (int)n : 0, as_array ? 0 : (int)n);
    copy = lua_gettop(L);
  }
  if (!e->bytes)
    ;  /* the copy alone */
  else if (as_array)
    put_header(e, n, 0x90, 15, 0, 0xdc, 0xdd);
  else
    put_header(e, n, 0x80, 15, 0, 0xde, 0xdf);
  for (j = 0; j < n; j++) {
    const Key *k = order != NULL ? &keys[order[j]] : &keys[j];
    if (!as_array && e->bytes) {
      encode_key(e, k);
      if (e->mark != NULL && e->depth == 1 && k->kind == KEY_STRING &&
          k->len == e->mark_len && memcmp(k->s, e->mark, k->len) == 0)
        e->mark_at = e->b->len;
    }
    if (!encode_pair_value(e, k, store, copy, as_array ? (lua_Integer)(j + 1) : 0))
      return fail_under(e, k);  /* encode_table restores the stack */
  }
  return 1;
}

static int bad_key(Encoder *e, int idx) {
  return fail(e, "a key of type %s (keys must be strings, numbers or booleans)",
              luaL_typename(e->L, idx));
}

/*
** One pass over a table of at most SMALL_MAP pairs: keys and values stay
** on the stack (anchored; pair j at base + 1 + 2j and base + 2 + 2j) and
** are described in 'keys'.  *strings: every key is a string; *in_order:
** lua_next gave the keys 1, 2, ..., n (an array's part, in order).
** Returns the pair count, TOO_LARGE (stack restored) or FAILED (a bad key).
*/
static long collect_small(Encoder *e, int t, Key *keys, int *strings, int *in_order) {
  lua_State *L = e->L;
  int base = lua_gettop(L);
  size_t n = 0;
  *strings = *in_order = 1;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    Key *k;
    if (n == SMALL_MAP) {
      lua_settop(L, base);
      return TOO_LARGE;
    }
    k = &keys[n];
    k->slot = base + 2 + 2 * (int)n;
    if (lua_type(L, -2) == LUA_TSTRING) {
      k->kind = KEY_STRING;
      k->s = lua_tolstring(L, -2, &k->len);
      k->head = key_head(k->s, k->len);
      *in_order = 0;
    }
    else {
      if (!key_describe(L, -2, k)) {
        bad_key(e, -2);
        return FAILED;
      }
      *strings = 0;
      if (k->kind != KEY_INT || k->i != (lua_Integer)n + 1)
        *in_order = 0;
    }
    n++;
    lua_pushvalue(L, -2);  /* the key again, for lua_next */
  }
  return (long)n;
}
/* A large sequence 1..n, written straight from the table (and copied,
** in copy mode, to a table left at the top). */
static int encode_large_array(Encoder *e, int t, size_t n) {
  lua_State *L = e->L;
  size_t i;
  int copy = 0;
  if (e->copy) {
    lua_createtable(L, (int)n, 0);
    copy = lua_gettop(L);
  }
  if (e->bytes)
    put_header(e, n, 0x90, 15, 0, 0xdc, 0xdd);
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, t, (lua_Integer)i);
    if (!encode_value(e, -1)) {
      Key k;
      k.kind = KEY_INT;
      k.i = (lua_Integer)i;
      return fail_under(e, &k);
    }
    if (copy)
      lua_rawseti(L, copy, (lua_Integer)i);
    lua_pop(L, 1);
  }
  return 1;
}

/* Count the pairs of the table at 't'; is it the sequence 1..n? */
static size_t count_pairs(lua_State *L, int t, int *is_sequence) {
  size_t n = 0;
  lua_Integer max = 0;
  int sequence = 1;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    n++;
    if (sequence && lua_isinteger(L, -2) && lua_tointeger(L, -2) > 0) {
      if (lua_tointeger(L, -2) > max) max = lua_tointeger(L, -2);
    }
    else
      sequence = 0;
    lua_pop(L, 1);
  }
  *is_sequence = sequence && (lua_Unsigned)max == n && n <= (size_t)INT_MAX;
  return n;
}

/*
** Tables too large for the stack: count (a sequence 1..n is written as it
** is), else keep keys and values in a pairs table (anchoring every key
** string) and the descriptions in a userdata, so an error cannot leak them.
*/
static int encode_large(Encoder *e, int t) {
  lua_State *L = e->L;
  size_t n, j = 0;
  int store, sequence;
  Key *keys;
  n = count_pairs(L, t, &sequence);
  if (sequence)
    return encode_large_array(e, t, n);
  if (n > (size_t)INT_MAX / 2 || n > (size_t)-1 / sizeof(Key))
    return fail(e, "a table with too many entries");
  lua_createtable(L, (int)(2 * n), 0);
  store = lua_gettop(L);
  keys = (Key *)lua_newuserdatauv(L, n * sizeof(Key), 0);
  lua_pushnil(L);
  while (lua_next(L, t) && j < n) {
    lua_pushvalue(L, -2);
    lua_rawseti(L, store, (lua_Integer)(2 * j + 1));
    lua_rawseti(L, store, (lua_Integer)(2 * j + 2));
    lua_rawgeti(L, store, (lua_Integer)(2 * j + 1));
    keys[j].slot = (int)j;
    if (!key_describe(L, -1, &keys[j]))
      return bad_key(e, -1);
    lua_pop(L, 1);
    j++;
  }
  qsort(keys, n, sizeof(Key), key_compare);
  return encode_pairs(e, keys, NULL, n, store, keys_are_sequence(keys, NULL, n));
}

/*
** A large table for a snapshot (codec_encode_snapshot): a map is written
** in the order lua_next gives, with no pairs table and no sort.  Decodes
** to the same table; only the bytes are not canonical.  A table without a
** [1] (lua_rawlen 0) cannot be an array, so it takes one pass: the pairs
** go after room for the largest header, which is then cut to the shortest
** (the bytes are those of counting first; a pass over a large table costs
** a hash lookup and a cache miss per key).
*/
static int encode_large_unsorted(Encoder *e, int t) {
  lua_State *L = e->L;
  int sequence, counted = lua_rawlen(L, t) > 0;
  size_t n = 0, at, end;
  if (counted) {
    n = count_pairs(L, t, &sequence);
    if (sequence)
      return encode_large_array(e, t, n);
    if (n > 0xffffffffu)
      return fail(e, "a table with too many entries");
    put_header(e, n, 0x80, 15, 0, 0xde, 0xdf);
  }
  else
    put(e, "\xdf\0\0\0\0", 5);  /* room for the header, written below */
  at = e->b->len;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    Key k;
    if (!key_describe(L, -2, &k))
      return bad_key(e, -2);
    encode_key(e, &k);
    if (!encode_value(e, -1))
      return fail_under(e, &k);
    lua_pop(L, 1);
    n++;
  }
  if (counted)
    return 1;
  if (n > 0xffffffffu)
    return fail(e, "a table with too many entries");
  end = e->b->len;
  e->b->len = at - 5;  /* the shortest header, then the pairs after it */
  put_header(e, n, 0x80, 15, 0, 0xde, 0xdf);
  memmove(e->b->data + e->b->len, e->b->data + at, end - at);
  e->b->len += end - at;
  return 1;
}

/*
** Tables CODEC_MAX_DEPTH deep are open and 't' would be one more: a cycle
** when one of them repeats.  Cycles are looked for here, not on every
** table (a pointer and a scan each), since a cycle always runs into the
** depth limit; the error names the path to the first repeat, as if it had
** been caught there (fail_under() leaves out the keys below it).
*/
static int too_deep(Encoder *e, int t) {
  const void *p[CODEC_MAX_DEPTH + 1];
  int i, j;
  e->open[CODEC_MAX_DEPTH] = t;
  for (j = 0; j <= CODEC_MAX_DEPTH; j++) {
    p[j] = lua_topointer(e->L, e->open[j]);
    for (i = 0; i < j; i++)
      if (p[i] == p[j]) {
        e->cut = j;
        return fail(e, "a cycle (a table that contains itself)");
      }
  }
  return fail(e, "tables nested more than %d deep", CODEC_MAX_DEPTH);
}

static int encode_table(Encoder *e, int t) {
  lua_State *L = e->L;
  Key keys[SMALL_MAP];
  unsigned char order[SMALL_MAP];
  int base = lua_gettop(L), ok, strings, in_order;
  long n;
  if (e->depth == CODEC_MAX_DEPTH)
    return too_deep(e, t);
  if (base + TABLE_SLOTS > e->stack_ok) {  /* checked once per level */
    luaL_checkstack(L, TABLE_SLOTS, "procman: tables nested too deep to encode");
    e->stack_ok = base + TABLE_SLOTS;
  }
  e->open[e->depth++] = t;
  n = collect_small(e, t, keys, &strings, &in_order);
  if (n == FAILED)
    return 0;
  if (n == TOO_LARGE)
    ok = e->unsorted ? encode_large_unsorted(e, t) : encode_large(e, t);
  else if (in_order && n > 0)  /* 1..n already */
    ok = encode_pairs(e, keys, NULL, (size_t)n, 0, 1);
  else {
    sort_small(keys, (size_t)n, strings, order);
    ok = encode_pairs(e, keys, order, (size_t)n, 0,
                      !strings && keys_are_sequence(keys, order, (size_t)n));
  }
  e->depth--;
  if (ok && e->copy) {  /* keep only the copy, at the top */
    lua_copy(L, -1, base + 1);
    lua_settop(L, base + 1);
  }
  else
    lua_settop(L, base);
  return ok;
}

static int not_data(Encoder *e, int idx) {
  const char *name = luaL_typename(e->L, idx);
  if (luaL_getmetafield(e->L, idx, "__name") == LUA_TSTRING)
    name = lua_tostring(e->L, -1);  /* "FILE*", "procman.pm": say which */
  return fail(e, "a %s (only nil, booleans, numbers, strings and tables are data)", name);
}

/* The copy of the value at 'idx' that is not a table, without its bytes:
** itself, or the NaN decoding gives. */
static int copy_scalar(Encoder *e, int idx, int type) {
  lua_State *L = e->L;
  if (type == LUA_TNUMBER && !lua_isinteger(L, idx) && isnan(lua_tonumber(L, idx)))
    push_canonical_nan(L);
  else if (type == LUA_TSTRING || type == LUA_TNUMBER || type == LUA_TBOOLEAN ||
           type == LUA_TNIL)
    lua_pushvalue(L, idx);
  else
    return not_data(e, idx);
  return 1;
}

/* Encode the value at 'idx'; in copy mode, push its copy on success. */
static int encode_value(Encoder *e, int idx) {
  lua_State *L = e->L;
  int type;
  if (idx < 0)
    idx = lua_absindex(L, idx);
  type = lua_type(L, idx);
  if (!e->bytes && type != LUA_TTABLE)
    return copy_scalar(e, idx, type);
  switch (type) {
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      encode_string(e, s, n);
      break;
    }
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx))
        encode_integer(e, lua_tointeger(L, idx));
      else {
        lua_Number f = lua_tonumber(L, idx);
        encode_float(e, (double)f);
        if (e->copy && isnan(f)) {  /* the copy gets the NaN decoding gives */
          push_canonical_nan(L);
          return 1;
        }
      }
      break;
    case LUA_TTABLE:
      return encode_table(e, idx);
    case LUA_TBOOLEAN: put_byte(e, lua_toboolean(L, idx) ? 0xc3 : 0xc2); break;
    case LUA_TNIL: put_byte(e, 0xc0); break;
    default:
      return not_data(e, idx);
  }
  if (e->copy)
    lua_pushvalue(L, idx);
  return 1;
}

/* Encode the value at 'idx' into the Buffer at 'bidx' (0: no bytes, the
** copy alone, which 'copy' must then ask for). */
static int encode_root(lua_State *L, int idx, int bidx, const char *root,
                       int copy, int unsorted, const char *mark, size_t *mark_at) {
  Encoder e;
  int top = lua_gettop(L);
  idx = lua_absindex(L, idx);
  e.L = L;
  e.mark = mark;
  e.mark_len = mark != NULL ? strlen(mark) : 0;
  e.mark_at = (size_t)-1;
  e.copy = copy;
  e.unsorted = unsorted;
  e.bytes = bidx != 0;
  e.bidx = e.bytes ? lua_absindex(L, bidx) : 0;
  e.b = e.bytes ? buffer_at(L, e.bidx) : NULL;
  e.depth = 0;
  e.cut = CODEC_MAX_DEPTH + 1;
  e.stack_ok = 0;
  e.why[0] = '\0';
  e.path_start = PATH_SIZE - 1;
  e.path[PATH_SIZE - 1] = '\0';
  e.path_cut = 0;
  if (encode_value(&e, idx)) {
    if (mark_at != NULL)
      *mark_at = e.mark_at;
    return 1;
  }
  lua_settop(L, top);
  lua_pushfstring(L, "cannot encode %s at %s%s%s", e.why, root,
                  e.path_cut ? "..." : "", e.path + e.path_start);
  return 0;
}

int codec_encode(lua_State *L, int idx, int bidx, const char *root) {
  return encode_root(L, idx, bidx, root, 0, 0, NULL, NULL);
}

int codec_encode_copy(lua_State *L, int idx, int bidx, const char *root) {
  return encode_root(L, idx, bidx, root, 1, 0, NULL, NULL);
}

int codec_copy(lua_State *L, int idx, const char *root) {
  return encode_root(L, idx, 0, root, 1, 0, NULL, NULL);
}

int codec_encode_marking(lua_State *L, int idx, int bidx, const char *root, int copy,
                         const char *key, size_t *at) {
  return encode_root(L, idx, bidx, root, copy, 0, key, at);
}

int codec_encode_snapshot(lua_State *L, int idx, int bidx, const char *root) {
  return encode_root(L, idx, bidx, root, 0, 1, NULL, NULL);
}

/* ===================================================================
** Decoder
** =================================================================== */

typedef struct Decoder {
  lua_State *L;
  const unsigned char *s;
  size_t len, pos;
  int depth;
  CodecMemo *memo;  /* strings decoded before, or NULL */
} Decoder;

static int decode_value(Decoder *d);

static int decode_error(Decoder *d, size_t at, const char *fmt, ...) {
  char msg[160];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  lua_pushfstring(d->L, "cannot decode: %s at byte %I", msg, (lua_Integer)at);
  return 0;
}

/* Is there room for 'n' more bytes? Reports truncation if not. */
static int need(Decoder *d, size_t n, const char *what) {
  if (d->len - d->pos >= n)
    return 1;
  return decode_error(d, d->pos, "input ends inside %s (%zu more bytes needed)",
                      what, n - (d->len - d->pos));
}

static unsigned long long read_be(Decoder *d, int width) {
  unsigned long long v = 0;
  int i;
  for (i = 0; i < width; i++)
    v = (v << 8) | d->s[d->pos++];
  return v;
}

/* Length field of 'width' bytes; 0 on truncation. */
static int read_length(Decoder *d, int width, const char *what, size_t *n) {
  if (!need(d, (size_t)width, what))
    return 0;
  *n = (size_t)read_be(d, width);
  return 1;
}

/* The memo's slot for the string p[0 .. n): a cheap hash of its length
** and three of its bytes (what tells apart the keys and values that
** recur from one command to the next). */
static unsigned memo_slot(const unsigned char *p, size_t n) {
  unsigned h = (unsigned)n * 31u;
  if (n > 0)
    h += p[0] * 7u + p[n / 2] * 3u + p[n - 1];
  return h & (CODEC_MEMO_SLOTS - 1);
}

/* Push the string p[0 .. n) from the memo, or make it and remember it
** (Lua interns short strings: a memo hit gives the very same value
** without hashing it and walking the string table). */
static void push_memo(lua_State *L, CodecMemo *m, const unsigned char *p, size_t n) {
  unsigned k = memo_slot(p, n);
  if (m->s[k] != NULL && m->len[k] == n && memcmp(m->s[k], p, n) == 0) {
    lua_pushvalue(L, m->base + (int)k);
    return;
  }
  lua_pushlstring(L, (const char *)p, n);
  lua_copy(L, -1, m->base + (int)k);
  m->s[k] = lua_tostring(L, -1);  /* anchored in the memo's slot */
  m->len[k] = n;
}

static int decode_bytes(Decoder *d, size_t n, const char *what) {
  if (!need(d, n, what))
    return 0;
  if (d->memo != NULL && n <= CODEC_MEMO_MAX_LEN)
    push_memo(d->L, d->memo, d->s + d->pos, n);
  else
    lua_pushlstring(d->L, (const char *)d->s + d->pos, n);
  d->pos += n;
  return 1;
}

/* Refuse element counts the remaining input cannot hold (>= 1 byte each). */
static int check_count(Decoder *d, size_t start, size_t n, size_t per,
                       const char *what) {
  if (n > (d->len - d->pos) / per || n > (size_t)INT_MAX)
    return decode_error(d, start, "%s of %zu elements is larger than the input",
                        what, n);
  if (d->depth == CODEC_MAX_DEPTH)
    return decode_error(d, start, "%s nested more than %d deep", what,
                        CODEC_MAX_DEPTH);
  luaL_checkstack(d->L, 4, "procman: tables nested too deep to decode");
  return 1;
}

static int decode_array(Decoder *d, size_t start, size_t n) {
  size_t i;
  if (!check_count(d, start, n, 1, "array"))
    return 0;
  lua_createtable(d->L, (int)n, 0);
  d->depth++;
  for (i = 1; i <= n; i++) {
    if (!decode_value(d))
      return 0;
    lua_rawseti(d->L, -2, (lua_Integer)i);
  }
  d->depth--;
  return 1;
}

/* A map key must be a string, a boolean or a number other than NaN. */
static int check_key(Decoder *d, size_t at) {
  int t = lua_type(d->L, -1);
  if (t == LUA_TSTRING || t == LUA_TBOOLEAN ||
      (t == LUA_TNUMBER && lua_tonumber(d->L, -1) == lua_tonumber(d->L, -1)))
    return 1;
  return decode_error(d, at, "map key %s is not allowed",
                      t == LUA_TNUMBER ? "NaN" : lua_typename(d->L, t));
}

/* Is the key at d->pos a fixstr that sorts (bytewise, as the encoder
** sorts string keys) after the fixstr key at 'prev' (none: (size_t)-1)?
** Then it differs from every key before it, when those were in order. */
static int key_after(const Decoder *d, size_t prev) {
  const unsigned char *a, *b;
  size_t alen, blen;
  int c;
  if (d->pos >= d->len || (d->s[d->pos] & 0xe0) != 0xa0)
    return 0;
  blen = d->s[d->pos] & 0x1f;
  if (d->len - d->pos - 1 < blen)
    return 0;  /* cut short: decoding it says so */
  if (prev == (size_t)-1)
    return 1;
  a = d->s + prev + 1, alen = d->s[prev] & 0x1f;
  b = d->s + d->pos + 1;
  c = memcmp(a, b, alen < blen ? alen : blen);
  return c < 0 || (c == 0 && alen < blen);
}

static int decode_map(Decoder *d, size_t start, size_t n) {
  lua_State *L = d->L;
  size_t i, prev = (size_t)-1;
  int sorted = 1;  /* the keys so far: fixstrs in canonical order */
  if (!check_count(d, start, n, 2, "map"))
    return 0;
  lua_createtable(L, 0, (int)n);
  d->depth++;
  for (i = 0; i < n; i++) {
    size_t at = d->pos;
    int fresh = sorted && key_after(d, prev);  /* no duplicate: no lookup */
    if (!decode_value(d) || !check_key(d, at))
      return 0;
    if (fresh)
      prev = at;
    else {
      sorted = 0;
      lua_pushvalue(L, -1);
      if (lua_rawget(L, -3) != LUA_TNIL)
        return decode_error(d, at, "duplicate map key");
      lua_pop(L, 1);
    }
    if (!decode_value(d))
      return 0;
    lua_rawset(L, -3);  /* a nil value just leaves the key absent */
  }
  d->depth--;
  return 1;
}

static int decode_integer(Decoder *d, unsigned char tag, size_t start) {
  static const int widths[] = { 1, 2, 4, 8 };
  int width = widths[(tag - 0xcc) & 3];
  unsigned long long u;
  lua_Integer v;
  if (!need(d, (size_t)width, "an integer"))
    return 0;
  u = read_be(d, width);
  if (tag <= 0xcf) {  /* unsigned */
    if (u > (unsigned long long)LUA_MAXINTEGER)
      return decode_error(d, start, "unsigned integer %llu is out of Lua's range", u);
    v = (lua_Integer)u;
  }
  else {  /* signed: sign-extend from 'width' bytes */
    unsigned long long sign = 1ULL << (width * 8 - 1);
    v = (lua_Integer)((u ^ sign) - sign);
  }
  lua_pushinteger(d->L, v);
  return 1;
}

static int decode_float(Decoder *d, int width) {
  if (!need(d, (size_t)width, "a float"))
    return 0;
  if (width == 4) {
    uint32_t bits = (uint32_t)read_be(d, 4);
    float f;
    memcpy(&f, &bits, sizeof f);
    lua_pushnumber(d->L, (lua_Number)f);
  }
  else {
    unsigned long long bits = read_be(d, 8);
    double f;
    memcpy(&f, &bits, sizeof f);
    lua_pushnumber(d->L, (lua_Number)f);
  }
  return 1;
}

/* Types with a 1-, 2- or 4-byte length field after the tag. */
static int decode_sized(Decoder *d, unsigned char tag, size_t start) {
  static const int width_of[3] = { 1, 2, 4 };
  size_t n;
  switch (tag) {
    case 0xc4: case 0xc5: case 0xc6:
      return read_length(d, width_of[tag - 0xc4], "a bin length", &n) &&
             decode_bytes(d, n, "a bin");
    case 0xd9: case 0xda: case 0xdb:
      return read_length(d, width_of[tag - 0xd9], "a str length", &n) &&
             decode_bytes(d, n, "a str");
    case 0xdc: case 0xdd:
      return read_length(d, width_of[tag - 0xdc + 1], "an array length", &n) &&
             decode_array(d, start, n);
    default:  /* 0xde, 0xdf */
      return read_length(d, width_of[tag - 0xde + 1], "a map length", &n) &&
             decode_map(d, start, n);
  }
}

static int decode_value(Decoder *d) {
  size_t start = d->pos;
  unsigned char tag;
  if (!need(d, 1, "a value"))
    return 0;
  tag = d->s[d->pos++];
  if (tag <= 0x7f) { lua_pushinteger(d->L, tag); return 1; }
  if (tag >= 0xe0) { lua_pushinteger(d->L, (lua_Integer)tag - 256); return 1; }
  if (tag <= 0x8f) return decode_map(d, start, tag & 0x0f);
  if (tag <= 0x9f) return decode_array(d, start, tag & 0x0f);
  if (tag <= 0xbf) return decode_bytes(d, tag & 0x1f, "a str");
  switch (tag) {
    case 0xc0: lua_pushnil(d->L); return 1;
    case 0xc2: lua_pushboolean(d->L, 0); return 1;
    case 0xc3: lua_pushboolean(d->L, 1); return 1;
    case 0xca: return decode_float(d, 4);
    case 0xcb: return decode_float(d, 8);
    case 0xcc: case 0xcd: case 0xce: case 0xcf:
    case 0xd0: case 0xd1: case 0xd2: case 0xd3:
      return decode_integer(d, tag, start);
    case 0xc4: case 0xc5: case 0xc6: case 0xd9: case 0xda: case 0xdb:
    case 0xdc: case 0xdd: case 0xde: case 0xdf:
      return decode_sized(d, tag, start);
    case 0xc1:
      return decode_error(d, start, "byte 0xc1 is never used in MessagePack");
    default:  /* 0xc7-0xc9, 0xd4-0xd8 */
      return decode_error(d, start, "MessagePack ext types are not supported (tag 0x%02x)",
                          (unsigned)tag);
  }
}

static void decoder_init(Decoder *d, lua_State *L, const char *s, size_t len, size_t pos) {
  d->L = L;
  d->s = (const unsigned char *)s;
  d->len = len;
  d->pos = pos;
  d->depth = 0;
  d->memo = NULL;
}

void codec_memo_init(lua_State *L, CodecMemo *m) {
  int i;
  luaL_checkstack(L, CODEC_MEMO_SLOTS, "procman: decoding");
  m->base = lua_gettop(L) + 1;
  for (i = 0; i < CODEC_MEMO_SLOTS; i++) {
    lua_pushnil(L);
    m->s[i] = NULL;
    m->len[i] = 0;
  }
}

/* codec_decode, remembering strings in 'memo' (NULL: none). */
static int decode_root(lua_State *L, const char *s, size_t len, size_t *pos, CodecMemo *memo) {
  Decoder d;
  int top = lua_gettop(L);
  decoder_init(&d, L, s, len, *pos);
  d.memo = memo;
  if (d.pos > len)
    return decode_error(&d, d.pos, "start past the end of a %zu-byte input", len);
  if (decode_value(&d)) {
    *pos = d.pos;
    return 1;
  }
  lua_copy(L, -1, top + 1);  /* keep only the message */
  lua_settop(L, top + 1);
  return 0;
}

int codec_decode(lua_State *L, const char *s, size_t len, size_t *pos) {
  return decode_root(L, s, len, pos, NULL);
}

/*
** A map of known keys: the bytes an encoder of this codec writes for a
** table with exactly these string keys (a fixmap header, then each key as
** a fixstr in the order given, which must be the canonical one, each
** followed by its value).  The keys are not decoded: each is compared with
** the bytes and the string given for it is used (no interning, no
** duplicate check: they are distinct).  Values are decoded as ever, at the
** depth they have in the map, and copied to the shape's value slots.  0
** when the bytes have another shape, or a value does not decode: the
** caller then goes the generic way (which gives the same value, or the
** same error).
*/
void codec_shape_init(lua_State *L, CodecShape *shape, int keys, int nkeys) {
  int i;
  shape->keys = keys;
  shape->nkeys = nkeys;
  shape->values = 0;
  shape->memo = NULL;
  for (i = 0; i < nkeys && i < CODEC_SHAPE_MAX_KEYS; i++)
    shape->name[i] = lua_tolstring(L, keys + i, &shape->name_len[i]);
}

static int decode_shaped(Decoder *d, CodecShape *shape) {
  lua_State *L = d->L;
  int i, t, nkeys = shape->nkeys;
  if (nkeys > CODEC_SHAPE_MAX_KEYS || d->pos >= d->len || d->s[d->pos] != (0x80 | nkeys))
    return 0;
  d->pos++;
  luaL_checkstack(L, 4, "procman: decoding a map");
  lua_createtable(L, 0, nkeys);
  t = lua_gettop(L);
  d->depth = 1;  /* the values are inside the map */
  for (i = 0; i < nkeys; i++) {
    size_t klen = shape->name_len[i];
    if (klen > 31 || d->len - d->pos <= klen || d->s[d->pos] != (0xa0 | klen) ||
        memcmp(d->s + d->pos + 1, shape->name[i], klen) != 0)
      return 0;
    d->pos += klen + 1;
    lua_pushvalue(L, shape->keys + i);
    shape->value_at[i] = d->pos;
    if (!decode_value(d))
      return 0;
    shape->value_end[i] = d->pos;
    if (shape->values != 0)
      lua_copy(L, -1, shape->values + i);
    lua_rawset(L, t);  /* a nil value just leaves the key absent */
  }
  return 1;
}

/* The shape's value slots from the decoded value at the top (nil for a
** key it lacks, all nil when it is not a table). */
static void fill_values(lua_State *L, const CodecShape *shape) {
  int i, table = lua_type(L, -1) == LUA_TTABLE;
  for (i = 0; i < shape->nkeys; i++) {
    if (table) {
      lua_pushvalue(L, shape->keys + i);
      lua_rawget(L, -2);
    }
    else
      lua_pushnil(L);
    lua_replace(L, shape->values + i);
  }
}

int codec_decode_shaped(lua_State *L, const char *s, size_t len, size_t *pos,
                        CodecShape *shape) {
  Decoder d;
  int i, top = lua_gettop(L);
  decoder_init(&d, L, s, len, *pos);
  d.memo = shape->memo;
  if (decode_shaped(&d, shape)) {
    *pos = d.pos;
    return 1;
  }
  lua_settop(L, top);
  for (i = 0; i < shape->nkeys && i < CODEC_SHAPE_MAX_KEYS; i++)
    shape->value_at[i] = (size_t)-1;
  if (!decode_root(L, s, len, pos, shape->memo))
    return 0;
  if (shape->values != 0)
    fill_values(L, shape);
  return 1;
}

/* ===================================================================
** Reading without building: walk encoded bytes, allocating nothing
** =================================================================== */

/* A read position in bytes this codec wrote (or checked). */
typedef struct Cursor {
  const unsigned char *s;
  size_t len, pos;
} Cursor;

enum { R_BAD, R_SCALAR, R_STR, R_ARRAY, R_MAP };

/* Read 'width' big-endian bytes; 0 if the input ends first. */
static int cursor_be(Cursor *c, int width, size_t *v) {
  unsigned long long u = 0;
  int i;
  if (c->len - c->pos < (size_t)width)
    return 0;
  for (i = 0; i < width; i++)
    u = (u << 8) | c->s[c->pos++];
  *v = (size_t)u;
  return 1;
}

/*
** Read the header of the value at the cursor: what it is and, for a
** string (str or bin) its byte length, for an array or a map its element
** or pair count, for a scalar the bytes that follow the tag.
*/
static int cursor_header(Cursor *c, size_t *n) {
  static const int width_of[] = { 1, 2, 4, 8 };
  unsigned char tag;
  if (c->pos >= c->len)
    return R_BAD;
  tag = c->s[c->pos++];
  *n = 0;
  if (tag <= 0x7f || tag >= 0xe0 || tag == 0xc0 || tag == 0xc2 || tag == 0xc3)
    return R_SCALAR;
  if (tag <= 0x8f) { *n = tag & 0x0f; return R_MAP; }
  if (tag <= 0x9f) { *n = tag & 0x0f; return R_ARRAY; }
  if (tag <= 0xbf) { *n = tag & 0x1f; return R_STR; }
  switch (tag) {
    case 0xca: *n = 4; return R_SCALAR;
    case 0xcb: *n = 8; return R_SCALAR;
    case 0xcc: case 0xcd: case 0xce: case 0xcf:
    case 0xd0: case 0xd1: case 0xd2: case 0xd3:
      *n = (size_t)width_of[(tag - 0xcc) & 3];
      return R_SCALAR;
    case 0xc4: case 0xc5: case 0xc6:
      return cursor_be(c, width_of[tag - 0xc4], n) ? R_STR : R_BAD;
    case 0xd9: case 0xda: case 0xdb:
      return cursor_be(c, width_of[tag - 0xd9], n) ? R_STR : R_BAD;
    case 0xdc: case 0xdd:
      return cursor_be(c, width_of[tag - 0xdc + 1], n) ? R_ARRAY : R_BAD;
    case 0xde: case 0xdf:
      return cursor_be(c, width_of[tag - 0xde + 1], n) ? R_MAP : R_BAD;
    default:
      return R_BAD;
  }
}

/* Move the cursor past one value, nested ones included; 0 if malformed. */
static int cursor_skip(Cursor *c) {
  size_t items = 1, n;
  while (items > 0) {
    int kind = cursor_header(c, &n);
    items--;
    if (kind == R_BAD)
      return 0;
    if (kind == R_SCALAR || kind == R_STR) {
      if (c->len - c->pos < n)
        return 0;
      c->pos += n;
    }
    else {
      size_t more = kind == R_MAP ? 2 * n : n;
      if (n > c->len - c->pos || more > c->len - c->pos)  /* >= 1 byte each */
        return 0;
      items += more;
    }
  }
  return 1;
}

/*
** Find string key 'key' in the map at the cursor: 1 and *vpos at its value,
** 0 when the map has no such key (or the value is not a map), -1 when the
** bytes are malformed.  The cursor ends past the value.
*/
static int cursor_find(Cursor *c, const char *key, size_t *vpos) {
  size_t keylen = strlen(key), n, i, found = 0;
  Cursor start = *c;
  if (cursor_header(c, &n) != R_MAP) {
    *c = start;
    return cursor_skip(c) ? 0 : -1;
  }
  for (i = 0; i < n; i++) {
    unsigned char tag;
    if (c->pos >= c->len)
      return -1;
    tag = c->s[c->pos];
    if ((tag & 0xe0) == 0xa0) {  /* a fixstr key, the common case: no call */
      size_t klen = tag & 0x1f;
      if (c->len - c->pos - 1 < klen)
        return -1;
      if (!found && klen == keylen && memcmp(c->s + c->pos + 1, key, klen) == 0) {
        *vpos = c->pos + 1 + klen;
        found = 1;
      }
      c->pos += 1 + klen;
    }
    else if (!cursor_skip(c))
      return -1;
    tag = c->pos < c->len ? c->s[c->pos] : 0xc1;
    if (tag <= 0x7f || tag >= 0xe0 || tag == 0xc0 || tag == 0xc2 || tag == 0xc3)
      c->pos++;  /* a one-byte value */
    else if (!cursor_skip(c))
      return -1;
  }
  return found ? 1 : 0;
}

/* Does the value at the cursor equal the integer or string at 'idx'? */
static int cursor_equals(lua_State *L, int idx, Cursor *c) {
  size_t n;
  const unsigned char *p = c->s + c->pos;
  if (lua_type(L, idx) == LUA_TSTRING) {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    return cursor_header(c, &n) == R_STR && n == len && c->len - c->pos >= n &&
           memcmp(c->s + c->pos, s, n) == 0;
  }
  if (!lua_isinteger(L, idx) || cursor_header(c, &n) != R_SCALAR || c->len - c->pos < n)
    return 0;
  {
    lua_Integer v = lua_tointeger(L, idx), got;
    unsigned long long u = 0;
    size_t i;
    for (i = 0; i < n; i++)
      u = (u << 8) | c->s[c->pos + i];
    if (*p <= 0x7f) got = *p;
    else if (*p >= 0xe0) got = (lua_Integer)*p - 256;
    else if (*p >= 0xcc && *p <= 0xcf) {
      if (u > (unsigned long long)LUA_MAXINTEGER) return 0;
      got = (lua_Integer)u;
    }
    else if (*p >= 0xd0 && *p <= 0xd3) {
      unsigned long long sign = 1ULL << (n * 8 - 1);
      got = (lua_Integer)((u ^ sign) - sign);
    }
    else
      return 0;  /* a float, nil or a boolean */
    return got == v;
  }
}

int codec_value_is(lua_State *L, int idx, const char *s, size_t len, size_t pos) {
  Cursor c;
  c.s = (const unsigned char *)s;
  c.len = len;
  c.pos = pos;
  return pos < len && cursor_equals(L, idx, &c);
}

size_t codec_skip(const char *s, size_t len, size_t pos) {
  Cursor c;
  c.s = (const unsigned char *)s;
  c.len = len;
  c.pos = pos;
  return pos < len && cursor_skip(&c) ? c.pos : 0;
}

int codec_find_field(const char *s, size_t len, size_t pos, const char *key,
                     size_t *at, size_t *end) {
  Cursor c, v;
  int found;
  c.s = v.s = (const unsigned char *)s;
  c.len = v.len = len;
  c.pos = pos;
  if (pos >= len)
    return -1;
  found = cursor_find(&c, key, &v.pos);
  if (found <= 0)
    return found;
  *at = v.pos;
  if (!cursor_skip(&v))
    return -1;
  *end = v.pos;
  return 1;
}

int codec_push_field(lua_State *L, const char *s, size_t len, size_t *pos, const char *key) {
  Cursor c;
  size_t vpos;
  int found;
  c.s = (const unsigned char *)s;
  c.len = len;
  c.pos = *pos;
  found = cursor_find(&c, key, &vpos);
  if (found < 0) {
    lua_pushfstring(L, "cannot read: malformed bytes at byte %I", (lua_Integer)*pos);
    return 0;
  }
  if (found == 0)
    lua_pushnil(L);
  else if (!codec_decode(L, s, len, &vpos))
    return 0;
  *pos = c.pos;
  return 1;
}

/* For canonical.c (the recovery scan's check of journaled bytes): the
** encoder's own test of str against bin. */
int codec_utf8_valid(const unsigned char *s, size_t n) {
  return is_utf8(s, n);
}
