/*
** shorthand.c - a short log's shorthand (see shorthand.h).
*/
#include <stdlib.h>
#include <string.h>

#include "lauxlib.h"
#include "codec.h"
#include "shorthand.h"

/* Words a dictionary holds at most (a word's index is one byte). */
#define WORDS_MAX 255

/* A fixstr word gains from the shorthand when it is 2 to 31 bytes. */
#define WORD_MIN 2
#define WORD_MAX 31

/* The dictionary: its count, then FIRST (at FIRST_AT): for each length 0
** .. WORD_MAX + 1, the index of the first word at least that long; then
** each word's offset (at WORDS_AT), then the words. */
#define FIRST_AT 1
#define WORDS_AT (FIRST_AT + WORD_MAX + 2)

typedef struct Word {
  const char *s;
  size_t n;
} Word;

/* The dictionary's order: shorter first, then bytewise (as the encoded
** words compare: the fixstr tag holds the length). */
static int word_order(const void *pa, const void *pb) {
  const Word *a = (const Word *)pa, *b = (const Word *)pb;
  if (a->n != b->n)
    return a->n < b->n ? -1 : 1;
  return memcmp(a->s, b->s, a->n);
}

/* Add the string at 'idx' to words[*n] if it is a word worth one. */
static void add_word(lua_State *L, int idx, Word *words, size_t *n) {
  size_t len;
  const char *s;
  if (*n >= WORDS_MAX || lua_type(L, idx) != LUA_TSTRING)
    return;
  s = lua_tolstring(L, idx, &len);
  if (len < WORD_MIN || len > WORD_MAX || !codec_utf8_valid((const unsigned char *)s, len))
    return;  /* the codec writes only valid UTF-8 as a str */
  words[*n].s = s;
  words[*n].n = len;
  (*n)++;
}

void shorthand_dictionary(lua_State *L, int spec) {
  Word words[WORDS_MAX];
  size_t n = 0, i, kept = 0, at, len;
  luaL_Buffer b;
  int top;
  spec = lua_absindex(L, spec);
  top = lua_gettop(L);
  lua_pushliteral(L, "event_type");
  add_word(L, top + 1, words, &n);
  lua_pushliteral(L, "event_id");
  add_word(L, top + 2, words, &n);
  lua_pushliteral(L, "correlate");
  lua_rawget(L, spec);                     /* top + 3 */
  add_word(L, top + 3, words, &n);
  lua_pushliteral(L, "on");
  if (lua_rawget(L, spec) == LUA_TTABLE) { /* top + 4: its keys stay anchored */
    lua_pushnil(L);
    while (lua_next(L, top + 4)) {
      lua_pop(L, 1);
      add_word(L, -1, words, &n);
    }
  }
  qsort(words, n, sizeof *words, word_order);
  for (i = 0; i < n; i++)  /* distinct words */
    if (kept == 0 || word_order(&words[kept - 1], &words[i]) != 0)
      words[kept++] = words[i];
  if (kept == 0) {
    lua_settop(L, top);
    lua_pushnil(L);
    return;
  }
  luaL_buffinit(L, &b);
  luaL_addchar(&b, (char)kept);
  for (len = 0, i = 0; len <= WORD_MAX + 1; len++) {  /* FIRST: where each length starts */
    while (i < kept && words[i].n < len)
      i++;
    luaL_addchar(&b, (char)i);
  }
  at = WORDS_AT + 2 * kept;
  for (i = 0; i < kept; i++) {
    luaL_addchar(&b, (char)(at >> 8));
    luaL_addchar(&b, (char)(at & 0xff));
    at += 1 + words[i].n;
  }
  for (i = 0; i < kept; i++) {
    luaL_addchar(&b, (char)(0xa0 | words[i].n));
    luaL_addlstring(&b, words[i].s, words[i].n);
  }
  luaL_pushresult(&b);
  lua_replace(L, top + 1);
  lua_settop(L, top + 1);
}

/* The count of words in 'dict', and word i (its encoded bytes). */
static unsigned words_in(const char *dict) {
  return (unsigned char)dict[0];
}

static const unsigned char *word_at(const char *dict, unsigned i) {
  const unsigned char *d = (const unsigned char *)dict;
  return d + ((size_t)d[WORDS_AT + 2 * i] << 8 | d[WORDS_AT + 2 * i + 1]);
}

/* The index of the encoded fixstr p[0 .. 1 + len) in 'dict', or -1: among
** the words of its length only. */
static int word_index(const char *dict, const unsigned char *p, size_t len) {
  const unsigned char *first = (const unsigned char *)dict + FIRST_AT;
  unsigned i;
  for (i = first[len]; i < first[len + 1]; i++)
    if (memcmp(word_at(dict, i) + 1, p + 1, len) == 0)
      return (int)i;
  return -1;
}

/* The pair count of the map whose header is at s[*pos ..), moving *pos
** past the header; 0 when it is not a map (*pos unchanged). */
static int map_header(const unsigned char *s, size_t len, size_t *pos, size_t *pairs) {
  size_t p = *pos;
  if (p >= len)
    return 0;
  if ((s[p] & 0xf0) == 0x80) {
    *pairs = s[p] & 0x0f;
    *pos = p + 1;
    return 1;
  }
  if (s[p] == 0xde && len - p >= 3) {
    *pairs = (size_t)s[p + 1] << 8 | s[p + 2];
    *pos = p + 3;
    return 1;
  }
  if (s[p] == 0xdf && len - p >= 5) {
    *pairs = (size_t)s[p + 1] << 24 | (size_t)s[p + 2] << 16 | (size_t)s[p + 3] << 8 | s[p + 4];
    *pos = p + 5;
    return 1;
  }
  return 0;
}

/* The end of the scalar or short string at s[r ..) (r < len), 0 when it
** does not end by 'len', NOT_SIMPLE when it is something else. */
#define NOT_SIMPLE ((size_t)-1)

static size_t simple_end(const unsigned char *s, size_t len, size_t r) {
  static const unsigned char fixed[] = {  /* bytes of 0xca .. 0xd3, tag included */
    5, 9, 2, 3, 5, 9, 2, 3, 5, 9
  };
  unsigned char t = s[r];
  size_t n;
  if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3)
    n = 1;
  else if ((t & 0xe0) == 0xa0)
    n = 1 + (size_t)(t & 0x1f);
  else if (t >= 0xca && t <= 0xd3)
    n = fixed[t - 0xca];
  else
    return NOT_SIMPLE;
  return len - r >= n ? r + n : 0;
}

/* The end of the item at s[r ..) (not a shorthand), or 0 when it does
** not end by 'len': read here for what the top level of an event mostly
** holds (scalars, short strings, short lists and maps of those), by the
** codec for anything else. */
static size_t item_end(const unsigned char *s, size_t len, size_t r) {
  size_t end = simple_end(s, len, r), items, p;
  if (end != NOT_SIMPLE)
    return end;
  if ((s[r] & 0xe0) != 0x80)  /* not a fixarray (0x90) or fixmap (0x80) */
    return codec_skip((const char *)s, len, r);
  items = (size_t)(s[r] & 0x0f) << ((s[r] & 0x10) ? 0 : 1);
  for (p = r + 1; items > 0; items--) {
    if (p >= len)
      return 0;
    if ((end = simple_end(s, len, p)) == NOT_SIMPLE)
      return codec_skip((const char *)s, len, r);  /* nested: the codec reads it all */
    if (end == 0)
      return 0;
    p = end;
  }
  return p;
}

size_t shorthand_compact(const char *dict, char *s, size_t len, size_t *mark) {
  unsigned char *u = (unsigned char *)s;
  size_t pairs, r = 0, w, i, moved = (size_t)-1;
  if (!map_header(u, len, &r, &pairs))
    return len;  /* not a map: left whole */
  w = r;
  for (i = 0; i < 2 * pairs; i++) {
    size_t end = item_end(u, len, r);  /* the codec's bytes: never 0 */
    int code = -1;
    if (r == *mark)
      moved = w;
    else if (u[r] >= (0xa0 | WORD_MIN) && u[r] <= (0xa0 | WORD_MAX))
      code = word_index(dict, u + r, end - r - 1);
    if (code >= 0) {
      u[w++] = SHORTHAND_TAG;
      u[w++] = (unsigned char)code;
    }
    else {
      if (w != r)
        memmove(u + w, u + r, end - r);
      w += end - r;
    }
    r = end;
  }
  if (*mark != (size_t)-1)
    *mark = moved;
  return w;
}

/* Is the encoded item p[0 .. n) the string key[0 .. k) (k <= WORD_MAX)? */
static int is_key(const unsigned char *p, size_t n, const char *key, size_t k) {
  return n == k + 1 && p[0] == (0xa0 | k) && memcmp(p + 1, key, k) == 0;
}

/*
** The item of an event's top-level map at s[r .. len): *item and *n are
** the codec's bytes for it (a word of 'dict' for a shorthand, else the
** bytes where they are); returns the position past it, 0 when malformed.
*/
static size_t next_item(const char *dict, const unsigned char *s, size_t len, size_t r,
                        const unsigned char **item, size_t *n) {
  size_t end;
  if (r >= len)
    return 0;
  if (s[r] == SHORTHAND_TAG) {
    if (dict == NULL || len - r < 2 || s[r + 1] >= words_in(dict))
      return 0;
    *item = word_at(dict, s[r + 1]);
    *n = 1 + (size_t)(**item & 0x1f);
    return r + 2;
  }
  if ((end = item_end(s, len, r)) != 0) {
    *item = s + r;
    *n = end - r;
  }
  return end;
}

size_t shorthand_expand(const char *dict, const char *s, size_t len, size_t pos, char *out,
                        size_t cap, size_t *written, const char *key, size_t *mark) {
  const unsigned char *u = (const unsigned char *)s;
  size_t pairs, r = pos, i, w, k = key != NULL ? strlen(key) : WORD_MAX + 1;
  int keyed = 0;
  if (!map_header(u, len, &r, &pairs)) {
    size_t end = codec_skip(s, len, pos);
    if (end == 0 || end - pos > cap)
      return 0;
    memcpy(out, s + pos, end - pos);
    *written = end - pos;
    return end;
  }
  if (r - pos > cap)
    return 0;
  memcpy(out, s + pos, r - pos);
  w = r - pos;
  for (i = 0; i < 2 * pairs; i++) {
    const unsigned char *item;
    size_t n;
    if ((r = next_item(dict, u, len, r, &item, &n)) == 0 || n > cap - w)
      return 0;
    if (keyed)
      *mark = w;
    keyed = i % 2 == 0 && k <= WORD_MAX && is_key(item, n, key, k);
    memcpy(out + w, item, n);
    w += n;
  }
  *written = w;
  return r;
}

size_t shorthand_find(const char *dict, const char *s, size_t len, size_t pos, const char *key,
                      size_t *vpos) {
  const unsigned char *u = (const unsigned char *)s;
  size_t pairs, r = pos, i, k = strlen(key);
  int keyed = 0;
  if (!map_header(u, len, &r, &pairs))
    return codec_skip(s, len, pos);
  for (i = 0; i < 2 * pairs; i++) {
    const unsigned char *item;
    size_t n, at = r;
    if ((r = next_item(dict, u, len, r, &item, &n)) == 0)
      return 0;
    if (keyed)
      *vpos = at;
    keyed = i % 2 == 0 && k <= WORD_MAX && is_key(item, n, key, k);
  }
  return r;
}
