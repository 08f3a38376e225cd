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
** Reading bytes this codec wrote, allocating nothing (a flow's history
** answers "was this event_id handled?" this way).  The value at s[*pos ..
** len) is one encoded value; both functions move *pos past it.
**
** codec_field_is: 1 if it is a map whose string key 'key' holds a value
** equal to the string or integer at stack index 'idx'; 0 if not (no such
** key, another value, or not a map); -1 if the bytes are malformed (*pos
** unchanged).
*/
int codec_field_is(lua_State *L, int idx, const char *s, size_t len, size_t *pos,
                   const char *key);

/* Push the value under string key 'key' of the map at s[*pos .. len) (nil
** when it has none, or is not a map); 1, or 0 with *pos unchanged and,
** when decoding failed, an error message pushed. */
int codec_push_field(lua_State *L, const char *s, size_t len, size_t *pos, const char *key);

#endif
