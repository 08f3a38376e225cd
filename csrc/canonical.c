/*
** canonical.c - is an encoding canonical?  See canonical.h.
**
** The rules mirror the encoder in codec.c (docs/codec.md): shortest
** integers, float64 only with the one NaN, str for UTF-8 and bin for the
** rest with the shortest length header, arrays for tables 1..n (n >= 1),
** maps with their keys in the encoder's order (false < true < numbers by
** value < strings bytewise), no nil inside a table, no integral float key
** (Lua makes it an integer), at most CODEC_MAX_DEPTH tables deep.
*/
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "canonical.h"
#include "codec.h"

/* A map key, to check the order of a map's keys. */
typedef struct Key {
  int kind;               /* K_FALSE .. K_STRING: also the sort order */
  int64_t i;
  double f;
  const unsigned char *s;
  size_t len;
} Key;

enum { K_FALSE, K_TRUE, K_INT, K_FLOAT, K_STRING, K_OTHER };

static uint64_t be(const unsigned char *p, int width) {
  uint64_t v = 0;
  int i;
  for (i = 0; i < width; i++)
    v = (v << 8) | p[i];
  return v;
}

/* The shortest header of a length 'n': 0 fix, 1, 2 or 4 bytes.  'fixmax'
** is the largest fix length (-1: none), 'has8' whether a 1-byte form exists. */
static int header_width(size_t n, long fixmax, int has8) {
  if ((long)n <= fixmax) return 0;
  if (has8 && n <= 0xff) return 1;
  if (n <= 0xffff) return 2;
  return 4;
}

/* Exact comparison of an integer with a float that is not integral. */
static int int_vs_float(int64_t i, double f) {
  double fl;
  if (f >= 9223372036854775808.0) return -1;
  if (f < -9223372036854775808.0) return 1;
  fl = floor(f);
  if (i != (int64_t)fl) return i < (int64_t)fl ? -1 : 1;
  return -1;
}

static int key_order(const Key *a, const Key *b) {
  if (a->kind == K_STRING && b->kind == K_STRING) {
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->s, b->s, n);
    if (c != 0) return c;
    return a->len < b->len ? -1 : a->len > b->len;
  }
  if ((a->kind == K_INT || a->kind == K_FLOAT) && (b->kind == K_INT || b->kind == K_FLOAT)) {
    if (a->kind == K_INT && b->kind == K_INT) return a->i < b->i ? -1 : a->i > b->i;
    if (a->kind == K_FLOAT && b->kind == K_FLOAT) return a->f < b->f ? -1 : a->f > b->f;
    if (a->kind == K_INT) return int_vs_float(a->i, b->f);
    return -int_vs_float(b->i, a->f);
  }
  return a->kind < b->kind ? -1 : a->kind > b->kind;
}

typedef struct Walk {
  const unsigned char *s;
  size_t len, pos;
} Walk;

static int value(Walk *w, int depth, Key *key);

/* A str or bin of n bytes at the walk, after a header of 'width' bytes. */
static int string_body(Walk *w, size_t n, int is_str, int width, Key *key) {
  const unsigned char *p = w->s + w->pos;
  if (w->len - w->pos < n) return 0;
  if (codec_utf8_valid(p, n) != is_str) return 0;
  if (header_width(n, is_str ? 31 : -1, 1) != width) return 0;
  w->pos += n;
  key->kind = K_STRING;
  key->s = p;
  key->len = n;
  return 1;
}

static int array(Walk *w, size_t n, int width, int depth) {
  size_t i;
  Key k;
  if (n == 0 || header_width(n, 15, 0) != width || depth >= CODEC_MAX_DEPTH) return 0;
  if (n > w->len - w->pos) return 0;
  for (i = 0; i < n; i++) {
    size_t at = w->pos;
    if (!value(w, depth + 1, &k)) return 0;
    if (w->s[at] == 0xc0) return 0;  /* nil: a hole in the table */
  }
  return 1;
}

static int map(Walk *w, size_t n, int width, int depth) {
  size_t i;
  Key prev = { K_OTHER, 0, 0.0, NULL, 0 }, k, v;
  int sequence = 1;
  if (header_width(n, 15, 0) != width || depth >= CODEC_MAX_DEPTH) return 0;
  if (n > (w->len - w->pos) / 2) return 0;
  for (i = 0; i < n; i++) {
    size_t at;
    if (!value(w, depth + 1, &k)) return 0;
    if (k.kind == K_OTHER) return 0;
    if (k.kind == K_FLOAT && (isnan(k.f) || k.f == floor(k.f))) return 0;
    if (i > 0 && key_order(&prev, &k) >= 0) return 0;
    if (k.kind != K_INT || k.i != (int64_t)(i + 1)) sequence = 0;
    prev = k;
    at = w->pos;
    if (!value(w, depth + 1, &v)) return 0;
    if (w->s[at] == 0xc0) return 0;  /* nil: the key would be absent */
  }
  return !(sequence && n > 0);  /* keys 1..n: the encoder writes an array */
}

/* One value; 'key' says what it is as a map key (K_OTHER for tables and nil). */
static int value(Walk *w, int depth, Key *key) {
  unsigned char tag;
  key->kind = K_OTHER;
  if (w->pos >= w->len) return 0;
  tag = w->s[w->pos++];
  if (tag <= 0x7f) { key->kind = K_INT; key->i = tag; return 1; }
  if (tag >= 0xe0) { key->kind = K_INT; key->i = (int64_t)tag - 256; return 1; }
  if (tag <= 0x8f) return map(w, tag & 0x0f, 0, depth);
  if (tag <= 0x9f) return array(w, tag & 0x0f, 0, depth);
  if (tag <= 0xbf) return string_body(w, tag & 0x1f, 1, 0, key);
  switch (tag) {
    case 0xc0: return 1;
    case 0xc2: key->kind = K_FALSE; return 1;
    case 0xc3: key->kind = K_TRUE; return 1;
    case 0xcb: {
      uint64_t bits;
      if (w->len - w->pos < 8) return 0;
      bits = be(w->s + w->pos, 8);
      w->pos += 8;
      memcpy(&key->f, &bits, sizeof key->f);
      if (isnan(key->f) && bits != 0x7ff8000000000000ULL) return 0;
      key->kind = K_FLOAT;
      return 1;
    }
    case 0xcc: case 0xcd: case 0xce: case 0xcf: {
      static const int widths[] = { 1, 2, 4, 8 };
      static const uint64_t least[] = { 0x80, 0x100, 0x10000, 0x100000000ULL };
      int width = widths[tag - 0xcc];
      uint64_t u;
      if (w->len - w->pos < (size_t)width) return 0;
      u = be(w->s + w->pos, width);
      w->pos += (size_t)width;
      if (u < least[tag - 0xcc] || u > (uint64_t)INT64_MAX) return 0;
      key->kind = K_INT;
      key->i = (int64_t)u;
      return 1;
    }
    case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
      static const int widths[] = { 1, 2, 4, 8 };
      /* each form only for what the narrower one cannot hold */
      static const int64_t below[] = { -32, INT8_MIN, INT16_MIN, INT32_MIN };
      int width = widths[tag - 0xd0];
      uint64_t u, sign;
      int64_t v;
      if (w->len - w->pos < (size_t)width) return 0;
      u = be(w->s + w->pos, width);
      w->pos += (size_t)width;
      sign = 1ULL << (width * 8 - 1);
      v = (int64_t)((u ^ sign) - sign);
      if (v >= below[tag - 0xd0]) return 0;
      key->kind = K_INT;
      key->i = v;
      return 1;
    }
    case 0xc4: case 0xc5: case 0xc6: case 0xd9: case 0xda: case 0xdb:
    case 0xdc: case 0xdd: case 0xde: case 0xdf: {
      static const int width_of[] = { 1, 2, 4 };
      int is_bin = tag <= 0xc6, is_str = tag >= 0xd9 && tag <= 0xdb;
      int width = is_bin ? width_of[tag - 0xc4] : is_str ? width_of[tag - 0xd9]
                : width_of[(tag - 0xdc) % 2 + 1];
      size_t n;
      if (w->len - w->pos < (size_t)width) return 0;
      n = (size_t)be(w->s + w->pos, width);
      w->pos += (size_t)width;
      if (is_bin || is_str) return string_body(w, n, is_str, width, key);
      if (tag <= 0xdd) return array(w, n, width, depth);
      return map(w, n, width, depth);
    }
    default:  /* float32, 0xc1, ext types: never written by the encoder */
      return 0;
  }
}

int canonical_value(const unsigned char *s, size_t len, size_t *pos) {
  Walk w;
  Key k;
  w.s = s;
  w.len = len;
  w.pos = *pos;
  if (!value(&w, 0, &k)) return 0;
  *pos = w.pos;
  return 1;
}
