/*
** shorthand.h - a short log's shorthand: the words of a workflow's
** dictionary written in two bytes.
**
** A flow keeps the events it handled since its snapshot, encoded (its log:
** see pm.c).  Most flows are small, and most of a small event's bytes are
** the same few strings in every event: the keys event_type and event_id,
** the correlate field, the event type.  A short log writes each such
** string, where it is a key or a string value of an event's top-level
** map, as 0xc1 (a tag MessagePack never uses) and the index of the word in
** the workflow's dictionary.  Expanding gives back the codec's bytes
** exactly, so readers of a log (replay, pm:history(), the journal record)
** see what the codec wrote.
**
** The dictionary is a Lua string made once per workflow (with its flows'
** metatable): a count, then each word's offset (2 bytes, big-endian),
** then the words, each as the codec encodes it (a fixstr), sorted.
*/
#ifndef PROCMAN_SHORTHAND_H
#define PROCMAN_SHORTHAND_H

#include <stddef.h>
#include "lua.h"

/* The shorthand's tag: MessagePack's one unused byte. */
#define SHORTHAND_TAG 0xc1

/*
** Push the dictionary of the workflow definition at 'spec' (the strings
** "event_type", "event_id", its correlate field and the event types of
** its handlers, those that a shorthand makes shorter), or nil when it has
** no such word.
*/
void shorthand_dictionary(lua_State *L, int spec);

/*
** Write the value s[0 .. len) (the codec's bytes for one event) in
** shorthand, in place, and return its new length (never more than len).
** The value at *mark (a position in s, or (size_t)-1: none) is left as it
** is, and *mark moves with it.  A value that is not a map is left whole.
*/
size_t shorthand_compact(const char *dict, char *s, size_t len, size_t *mark);

/* Bytes a word in shorthand adds when expanded, at most (a word of 32
** bytes written in 2). */
#define SHORTHAND_GROWTH 30

/*
** Write to out[0 .. cap) the codec's bytes for the value at s[pos .. len)
** (an event in shorthand, or as the codec wrote it), *written their
** count, and return the position past it in s; 0 when the bytes are
** malformed or need more room.  When the value's top-level map has the
** string key 'key', *mark is where its value is in 'out' (else it is left
** as it was).  Allocates nothing.
*/
size_t shorthand_expand(const char *dict, const char *s, size_t len, size_t pos, char *out,
                        size_t cap, size_t *written, const char *key, size_t *mark);

/*
** Find the string key 'key' in the top-level map of the value at
** s[pos .. len) (in shorthand or not): *vpos is where its value is (else
** it is left as it was); returns the position past the value, 0 when the
** bytes are malformed.  A value under a key is never in shorthand when a
** reader looks it up (the event_id: see shorthand_compact's mark).
*/
size_t shorthand_find(const char *dict, const char *s, size_t len, size_t pos, const char *key,
                      size_t *vpos);

#endif
