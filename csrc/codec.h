/*
** codec.h - procman's codec: Lua values <-> MessagePack.
**
** Encodes nil, booleans, integers, floats (NaN, infinities and -0.0
** included), strings of any bytes and nested tables.  The output is
** deterministic: the same value always gives the same bytes (map keys are
** sorted, integers take their shortest form, NaN is canonical), so encoded
** events can be compared and checksummed.  See docs/codec.md.
**
** Neither function raises for bad input: both return 0 and push an error
** message instead, so callers can add context.  Both may still raise a
** memory error, which cannot leak anything (all memory is Lua's).
*/
#ifndef PROCMAN_CODEC_H
#define PROCMAN_CODEC_H

#include <stddef.h>
#include "lua.h"

/* Tables nested deeper than this are refused by encoder and decoder. */
#define CODEC_MAX_DEPTH 100

/*
** Append the encoding of the value at 'idx' to the Buffer at stack index
** 'bidx' (see buffer.h; the userdata there may be replaced by a larger
** one).  'root' names the value in error messages ("event" gives
** "cannot encode a function at event.files[2]").  Returns 1, or 0 with
** an error message pushed.
*/
int codec_encode(lua_State *L, int idx, int bidx, const char *root);

/*
** codec_encode, and on success also push a copy of the value: exactly
** what decoding the bytes would give (fresh tables, canonical NaN), built
** while encoding, at a fraction of the cost of a decode.
*/
int codec_encode_copy(lua_State *L, int idx, int bidx, const char *root);

/*
** Push the copy codec_encode_copy pushes, without making the bytes (no
** buffer): procman.copy, pm:state(), the results of sandboxed code.
** Returns 1, or 0 with the same error message pushed.
*/
int codec_copy(lua_State *L, int idx, const char *root);

/*
** codec_encode for a value only this process decodes again (a flow's
** snapshot): large maps are written in table order, without the sort and
** the pairs table that canonical bytes need.  Decoding gives the same
** value; the bytes are not canonical (never compare or journal them).
*/
int codec_encode_snapshot(lua_State *L, int idx, int bidx, const char *root);

/*
** Decode one value from s[*pos .. len) and push it; *pos moves past it.
** Returns 1, or 0 with an error message pushed (naming the byte offset)
** and *pos unchanged.  Never reads outside s, and never allocates more
** than the input can justify.
*/
int codec_decode(lua_State *L, const char *s, size_t len, size_t *pos);

/*
** A memo of strings decoded before, for a run of decodes whose values
** share strings (the keys and most values of one command after another):
** a string found in it is pushed from there, without hashing and looking
** it up in Lua's string table (which, large, costs cache misses).  The
** same string results either way: a memo changes the cost, never the
** value.  Its strings are anchored in CODEC_MEMO_SLOTS stack slots that
** codec_memo_init pushes (nil): leave them there while the memo is used.
*/
#define CODEC_MEMO_SLOTS 32
#define CODEC_MEMO_MAX_LEN 40  /* longer strings are not remembered */
typedef struct CodecMemo {
  int base;                             /* the first slot's stack index */
  const char *s[CODEC_MEMO_SLOTS];      /* each slot's string, or NULL */
  size_t len[CODEC_MEMO_SLOTS];
} CodecMemo;

void codec_memo_init(lua_State *L, CodecMemo *m);

/* A map whose string keys are known, for codec_decode_shaped. */
#define CODEC_SHAPE_MAX_KEYS 15
typedef struct CodecShape {
  int keys;         /* stack index of the first key */
  int nkeys;        /* at most 15, each shorter than 32 bytes, in canonical order */
  int values;       /* stack index of 'nkeys' slots for the values (0: none) */
  CodecMemo *memo;  /* strings decoded before (NULL: none) */
  const char *name[CODEC_SHAPE_MAX_KEYS];  /* the keys' bytes (set by codec_shape_init) */
  size_t name_len[CODEC_SHAPE_MAX_KEYS];
  /* Set by codec_decode_shaped: where each value's bytes are in the input,
  ** [at, end); at (size_t)-1 when not known (bytes of another shape). */
  size_t value_at[CODEC_SHAPE_MAX_KEYS], value_end[CODEC_SHAPE_MAX_KEYS];
} CodecShape;

/* A shape of the 'nkeys' strings at stack indices keys .., which stay
** there while it is used; no value slots, no memo (set them after). */
void codec_shape_init(lua_State *L, CodecShape *shape, int keys, int nkeys);

/*
** codec_decode for a map whose string keys are known: the shape's keys,
** strings at stack indices keys .. keys + nkeys - 1, in the canonical
** order (as the encoder writes them).  Bytes of that shape are decoded
** without decoding, interning or checking the keys again (a pending
** command's envelope, decoded for each dispatch); any other bytes go
** through codec_decode: the result, or the error, is always exactly
** codec_decode's.  On success, with 'values', the value under each key is
** also copied to its slot (nil when the key is absent or the result is
** not a table), so that the caller need not look them up; value_at and
** value_end tell where each value's bytes were.
*/
int codec_decode_shaped(lua_State *L, const char *s, size_t len, size_t *pos,
                        CodecShape *shape);

/*
** codec_encode ('copy' 0) or codec_encode_copy ('copy' 1), also telling
** where, in the buffer, the value under the string key 'key' of the root
** map starts (*at; (size_t)-1 when the value is not a map or has no such
** key): a flow notes where each event's event_id is.
*/
int codec_encode_marking(lua_State *L, int idx, int bidx, const char *root, int copy,
                         const char *key, size_t *at);

/*
** Reading bytes this codec wrote, allocating nothing.  codec_value_is:
** does the value encoded at s[pos .. len) equal the string or integer at
** stack index 'idx'?  (0 for any other value, or bytes that end early.)
*/
int codec_value_is(lua_State *L, int idx, const char *s, size_t len, size_t pos);

/* The position past the value at s[pos .. len) (nested ones included);
** 0 when the bytes are malformed or end early.  Allocates nothing. */
size_t codec_skip(const char *s, size_t len, size_t pos);

/* Push the value under string key 'key' of the map at s[*pos .. len) (nil
** when it has none, or is not a map); 1, or 0 with *pos unchanged and,
** when decoding failed, an error message pushed. */
int codec_push_field(lua_State *L, const char *s, size_t len, size_t *pos, const char *key);

/* Where the value under string key 'key' of the map at s[pos .. len) is:
** 1 and its bytes at [*at, *end); 0 when the map has no such key (or the
** value there is not a map); -1 when the bytes are malformed.  Allocates
** nothing. */
int codec_find_field(const char *s, size_t len, size_t pos, const char *key,
                     size_t *at, size_t *end);

/* Is s[0 .. n) strict UTF-8 (the encoder then writes a str, else a bin)? */
int codec_utf8_valid(const unsigned char *s, size_t n);

#endif
