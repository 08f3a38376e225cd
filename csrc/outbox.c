/*
** outbox.c - procman.outbox: a router's commands waiting for a gateway, in
** emission order, with stable ids, until acked (lua/procman/outbox.lua
** adds emit and add in Lua).
**
** The outbox is a userdata: one buffer holding the encoded envelopes
** { command, flow, id, workflow } end to end, and one slot per command
** (where its bytes are; none once acked).  A pending command costs its
** bytes and a slot, no Lua object: nothing can change it after it was
** emitted, and dispatching it, acking it or emitting it allocates nothing
** per command but the copies handed out.  Commands have places (head ..
** tail, never reused: a dispatch going through the places it saw at its
** start never meets a command emitted meanwhile); the front moves past
** the acked ones, and storage is moved down once half of it is dead.  An
** outbox that empties gives back its storage (a large one) and its index.
**
** The index by id (id -> place), for r:ack and outbox:has, is made when a
** lookup by id first needs it, from the pending envelopes' bytes, then
** kept up to date until the outbox empties: a dispatch finds each command
** by its place, so most commands are never indexed.
**
** Recovery defers: envelopes pushed meanwhile stay Lua tables (most are
** acked further on in the journal and never need encoding), encoded in
** order by undefer.
*/
#include <string.h>

#include "lauxlib.h"
#include "buffer.h"
#include "codec.h"
#include "journal_lua.h"
#include "outbox.h"

#define OUTBOX_MT "procman.outbox"

/* The keys of an envelope, in canonical order (also core.decode_envelope's:
** procman.c). */
const char *const outbox_envelope_keys[OUTBOX_ENVELOPE_KEYS] = {
  "command", "flow", "id", "workflow"
};

/* The journal's record type of an ack (procman.records.ACK). */
#define RECORD_ACK 2

/* A slot's len: acked (envelopes are never empty), or deferred. */
#define ACKED 0
#define DEFERRED ((size_t)-1)
/* Dead slots at the front before storage is moved down (and at least
** half of the slots). */
#define COMPACT_MIN 64
/* Storage an empty outbox keeps (larger is given back). */
#define KEEP_BYTES 4096

typedef struct Slot {
  size_t at, len;  /* the envelope's bytes in the buffer */
} Slot;

struct Outbox {
  lua_Integer base;  /* the place of slots[0] */
  lua_Integer head;  /* the first pending place (tail + 1: none) */
  lua_Integer tail;  /* the last place used */
  size_t count;      /* commands pending */
  size_t used;       /* bytes of the buffer its slots use */
  int deferring;
  int staging;       /* a step's envelopes are staged: see outbox_stage */
};

/* The outbox's user values. */
enum {
  UV_BYTES = 1,  /* Buffer: the envelopes (nil: none yet) */
  UV_SLOTS,      /* Buffer: Slot per place from base to tail (nil: none yet) */
  UV_INDEX,      /* id -> place, or nil */
  UV_DEFERRED,   /* place -> envelope table while deferring, or nil */
  UV_COUNT = UV_DEFERRED
};

Outbox *outbox_check(lua_State *L, int idx) {
  return (Outbox *)luaL_checkudata(L, idx, OUTBOX_MT);
}

/* The outbox at 'idx', which no step is emitting into: a method that
** reads or changes its commands raises meanwhile (code that runs inside
** a step, a finalizer, would otherwise move or drop the storage the
** step's staged envelopes and their slots are in). */
static Outbox *check_idle(lua_State *L, int idx) {
  Outbox *o = outbox_check(L, idx);
  if (o->staging)
    luaL_error(L, "procman.outbox: in use by a step that is emitting commands "
               "(called from a finalizer?)");
  return o;
}

/* Push user value k; the Buffer it is (NULL: none). */
static Buffer *push_buffer(lua_State *L, int box, int k) {
  return lua_getiuservalue(L, box, k) == LUA_TUSERDATA ? buffer_at(L, -1) : NULL;
}

/* The slot of a place in head .. tail (the slots buffer anchors it: valid
** until the next allocation). */
static Slot *slot_at(lua_State *L, int box, Outbox *o, lua_Integer place) {
  Buffer *b = push_buffer(L, box, UV_SLOTS);
  lua_pop(L, 1);
  return (Slot *)b->data + (place - o->base);
}

/* The slots, from base to tail (valid until the next allocation). */
static Slot *slots_of(lua_State *L, int box) {
  Buffer *b = push_buffer(L, box, UV_SLOTS);
  lua_pop(L, 1);
  return (Slot *)b->data;
}

/* Move the storage down past the dead front once that is at least half
** of it (amortised O(1) per command).  Allocates nothing. */
static void compact(lua_State *L, int box, Outbox *o) {
  size_t dead = (size_t)(o->head - o->base), live, first, i;
  Buffer *slots, *bytes;
  Slot *s;
  if (dead < COMPACT_MIN || dead < (size_t)(o->tail - o->head + 1) || o->count == 0)
    return;
  slots = push_buffer(L, box, UV_SLOTS);
  bytes = push_buffer(L, box, UV_BYTES);
  lua_pop(L, 2);
  s = (Slot *)slots->data;
  live = (size_t)(o->tail - o->head + 1);
  first = o->used;  /* the bytes before the first pending ones are dead */
  for (i = dead; i < dead + live; i++)
    if (s[i].len != ACKED && s[i].len != DEFERRED) {
      first = s[i].at;
      break;
    }
  memmove(s, s + dead, live * sizeof(Slot));
  for (i = 0; i < live; i++)
    if (s[i].len != ACKED && s[i].len != DEFERRED)
      s[i].at -= first;
    else
      s[i].at = 0;
  memmove(bytes->data, bytes->data + first, o->used - first);
  o->used -= first;
  bytes->len = o->used;
  slots->len = live * sizeof(Slot);
  o->base = o->head;
}

/* Room for n more slots (may replace the slots buffer: allocates). */
static void reserve_slots(lua_State *L, int box, Outbox *o, size_t n) {
  Buffer *b = push_buffer(L, box, UV_SLOTS);
  if (b == NULL) {
    lua_pop(L, 1);
    b = buffer_new(L, (n < 8 ? 8 : n) * sizeof(Slot));
  }
  b->len = (size_t)(o->tail - o->base + 1) * sizeof(Slot);
  buffer_reserve(L, -1, n * sizeof(Slot));
  lua_setiuservalue(L, box, UV_SLOTS);
}

size_t outbox_stage(lua_State *L, int box) {
  Outbox *o = (Outbox *)lua_touserdata(L, box);
  Buffer *b;
  compact(L, box, o);
  b = push_buffer(L, box, UV_BYTES);
  if (b == NULL) {
    lua_pop(L, 1);
    b = buffer_new(L, 256);
  }
  b->len = o->used;  /* what was staged before and not committed is gone */
  return o->used;
}

void outbox_hold(lua_State *L, int box, int held) {
  ((Outbox *)lua_touserdata(L, box))->staging = held;
}

void outbox_keep(lua_State *L, int box, int bidx, size_t n) {
  Outbox *o = (Outbox *)lua_touserdata(L, box);
  lua_pushvalue(L, bidx);
  lua_setiuservalue(L, box, UV_BYTES);
  reserve_slots(L, box, o, n);
}

void outbox_will_index(lua_State *L, int box, int id) {
  if (lua_getiuservalue(L, box, UV_INDEX) == LUA_TTABLE) {
    lua_pushvalue(L, id);
    if (lua_rawget(L, -2) == LUA_TNIL) {
      lua_pushvalue(L, id);
      lua_pushboolean(L, 0);  /* not pending (yet): place_of reads 0 */
      lua_rawset(L, -4);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

void outbox_unindex(lua_State *L, int box, int id) {
  if (lua_getiuservalue(L, box, UV_INDEX) == LUA_TTABLE) {
    lua_pushvalue(L, id);
    if (lua_rawget(L, -2) == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
      lua_pushvalue(L, id);
      lua_pushnil(L);
      lua_rawset(L, -4);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

void outbox_commit(lua_State *L, int box, size_t at, size_t len, int id) {
  Outbox *o = (Outbox *)lua_touserdata(L, box);
  Slot *s = slot_at(L, box, o, o->tail + 1);
  s->at = at, s->len = len;
  o->tail++;
  o->count++;
  if (len != DEFERRED)
    o->used = at + len;
  if (lua_getiuservalue(L, box, UV_INDEX) == LUA_TTABLE) {  /* (when it was made) */
    lua_pushvalue(L, id);
    lua_pushinteger(L, o->tail);
    lua_rawset(L, -3);  /* (an existing key after outbox_will_index: no allocation) */
  }
  lua_pop(L, 1);
}

/* ===================================================================
** Reading a pending command
** =================================================================== */

/* The bytes of a pending (not deferred) slot; their length in *len. */
static const char *bytes_of(lua_State *L, int box, const Slot *s, size_t *len) {
  Buffer *b = push_buffer(L, box, UV_BYTES);
  lua_pop(L, 1);
  *len = s->len;
  return b->data + s->at;
}

/* Push the id of the pending command at 'place' (from its bytes, or its
** deferred table). */
static void push_id(lua_State *L, int box, Outbox *o, lua_Integer place) {
  Slot *s = slot_at(L, box, o, place);
  size_t len, pos = 0;
  const char *p;
  if (s->len == DEFERRED) {
    lua_getiuservalue(L, box, UV_DEFERRED);
    lua_rawgeti(L, -1, place);
    lua_getfield(L, -1, "id");
    lua_replace(L, -3);
    lua_pop(L, 1);
    return;
  }
  p = bytes_of(L, box, s, &len);
  if (!codec_push_field(L, p, len, &pos, "id"))
    lua_error(L);
}

/* Push the index (made now when there is none: out of memory, the outbox
** is as it was, the index being set once complete). */
static int push_index(lua_State *L, int box) {
  Outbox *o = (Outbox *)lua_touserdata(L, box);
  lua_Integer place;
  if (lua_getiuservalue(L, box, UV_INDEX) == LUA_TTABLE)
    return lua_gettop(L);
  lua_pop(L, 1);
  lua_createtable(L, 0, (int)(o->count < 0x3fffffff ? o->count : 0x3fffffff));
  for (place = o->head; place <= o->tail; place++) {
    if (slot_at(L, box, o, place)->len == ACKED)
      continue;
    push_id(L, box, o, place);
    lua_pushinteger(L, place);
    lua_rawset(L, -3);
  }
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, box, UV_INDEX);
  return lua_gettop(L);
}

/* The place of the pending command with the id at 'id', or 0. */
static lua_Integer place_of(lua_State *L, int box, int id) {
  lua_Integer place;
  if (((Outbox *)lua_touserdata(L, box))->count == 0)
    return 0;
  push_index(L, box);
  lua_pushvalue(L, id);
  lua_rawget(L, -2);
  place = lua_tointeger(L, -1);
  lua_pop(L, 2);
  return place;
}

/* ===================================================================
** Forgetting
** =================================================================== */

/* An outbox that emptied: its index and deferred envelopes go, its
** storage too when large (it keeps nothing of past commands). */
static void emptied(lua_State *L, int box, Outbox *o) {
  int k;
  Buffer *b;
  o->base = o->head = o->tail + 1;
  o->used = 0;
  for (k = UV_BYTES; k <= UV_SLOTS; k++) {
    b = push_buffer(L, box, k);
    lua_pop(L, 1);
    if (b == NULL)
      continue;
    b->len = 0;
    if (b->cap > KEEP_BYTES) {
      lua_pushnil(L);
      lua_setiuservalue(L, box, k);
    }
  }
  lua_pushnil(L);
  lua_setiuservalue(L, box, UV_INDEX);
  lua_pushnil(L);
  lua_setiuservalue(L, box, UV_DEFERRED);
}

/*
** Forget the pending command at 'place' (its id at stack index 'id'): its
** slot is marked acked (and its entry in the index, if there is one, or
** its deferred envelope, dropped); when it was the front, the front moves
** past every acked slot.  Allocates nothing.
*/
static void forget(lua_State *L, int box, lua_Integer place, int id) {
  Outbox *o = (Outbox *)lua_touserdata(L, box);
  Slot *slots = slots_of(L, box), *s = slots + (place - o->base);
  if (s->len == DEFERRED) {
    lua_getiuservalue(L, box, UV_DEFERRED);
    lua_pushnil(L);
    lua_rawseti(L, -2, place);
    lua_pop(L, 1);
  }
  s->len = ACKED;
  if (lua_getiuservalue(L, box, UV_INDEX) == LUA_TTABLE) {
    lua_pushvalue(L, id);
    lua_pushnil(L);
    lua_rawset(L, -3);
  }
  lua_pop(L, 1);
  o->count--;
  if (o->count == 0) {
    emptied(L, box, o);
    return;
  }
  if (place == o->head)  /* (nothing above allocates: 'slots' is still valid) */
    while (o->head <= o->tail && slots[o->head - o->base].len == ACKED)
      o->head++;
}

/* outbox:forget(id): the command with this id was acked (an unknown id
** is an error, and changes nothing). */
static int outbox_forget(lua_State *L) {
  lua_Integer place;
  check_idle(L, 1);
  lua_settop(L, 2);
  place = place_of(L, 1, 2);
  if (place == 0)
    return luaL_error(L, "procman.outbox: no pending command with id %s",
                      luaL_tolstring(L, 2, NULL));
  forget(L, 1, place, 2);
  return 0;
}

/* outbox:has(id) -> is a command with this id pending? */
static int outbox_has(lua_State *L) {
  check_idle(L, 1);
  lua_settop(L, 2);
  lua_pushboolean(L, place_of(L, 1, 2) != 0);
  return 1;
}

/* ===================================================================
** Adding
** =================================================================== */

/* outbox:push(bytes, id): keep an encoded envelope whose id is 'id'. */
static int outbox_push(lua_State *L) {
  size_t len, at;
  const char *s;
  check_idle(L, 1);
  s = luaL_checklstring(L, 2, &len);
  luaL_checktype(L, 3, LUA_TSTRING);
  luaL_argcheck(L, len > 0, 2, "an envelope is never empty");
  lua_settop(L, 3);
  at = outbox_stage(L, 1);  /* 4 */
  buffer_append(L, 4, s, len);
  outbox_keep(L, 1, 4, 1);
  outbox_will_index(L, 1, 3);  /* allocate before anything changes */
  outbox_commit(L, 1, at, len, 3);
  return 0;
}

/* outbox:push_deferred(envelope): keep it as it is (deferring). */
static int outbox_push_deferred(lua_State *L) {
  Outbox *o = check_idle(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  lua_getfield(L, 2, "id");  /* 3 */
  if (lua_getiuservalue(L, 1, UV_DEFERRED) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, 1, UV_DEFERRED);
  }
  reserve_slots(L, 1, o, 1);
  lua_pushvalue(L, 2);
  lua_rawseti(L, 4, o->tail + 1);  /* past the tail: unseen until the commit */
  outbox_will_index(L, 1, 3);  /* allocate before anything changes */
  outbox_commit(L, 1, o->used, DEFERRED, 3);
  return 0;
}

/* outbox:defer(): until outbox:undefer(), emit keeps envelopes as they
** are (outbox:deferring() says so). */
static int outbox_defer(lua_State *L) {
  outbox_check(L, 1)->deferring = 1;
  return 0;
}

static int outbox_deferring(lua_State *L) {
  lua_pushboolean(L, outbox_check(L, 1)->deferring);
  return 1;
}

/*
** outbox:undefer(): encode the deferred envelopes still pending, in
** place: new storage is built beside the old and replaces it once
** complete (an envelope that does not encode raises, the outbox as it
** was).
*/
static int outbox_undefer(lua_State *L) {
  Outbox *o = check_idle(L, 1);
  lua_Integer place;
  size_t n = (size_t)(o->tail - o->base + 1);
  Slot *fresh;
  lua_settop(L, 1);
  if (lua_getiuservalue(L, 1, UV_DEFERRED) != LUA_TTABLE) {  /* 2 */
    o->deferring = 0;
    return 0;
  }
  buffer_new(L, o->used + 256);  /* 3: the bytes */
  buffer_new(L, n * sizeof(Slot));  /* 4: the slots */
  memset(buffer_at(L, 4)->data, 0, n * sizeof(Slot));  /* all ACKED */
  buffer_at(L, 4)->len = n * sizeof(Slot);
  for (place = o->head; place <= o->tail; place++) {
    Slot s = *slot_at(L, 1, o, place);
    size_t at = buffer_at(L, 3)->len;
    if (s.len == ACKED)
      continue;
    if (s.len == DEFERRED) {
      lua_rawgeti(L, 2, place);
      if (!codec_encode(L, -1, 3, "envelope"))
        return luaL_error(L, "procman.outbox: %s", lua_tostring(L, -1));
      lua_pop(L, 1);
    }
    else {
      size_t len;
      const char *p = bytes_of(L, 1, &s, &len);
      buffer_append(L, 3, p, len);
    }
    fresh = (Slot *)buffer_at(L, 4)->data + (place - o->base);
    fresh->at = at;
    fresh->len = buffer_at(L, 3)->len - at;
  }
  o->used = buffer_at(L, 3)->len;
  lua_pushvalue(L, 3);
  lua_setiuservalue(L, 1, UV_BYTES);
  lua_pushvalue(L, 4);
  lua_setiuservalue(L, 1, UV_SLOTS);
  lua_pushnil(L);
  lua_setiuservalue(L, 1, UV_DEFERRED);
  o->deferring = 0;
  return 0;
}

/* ===================================================================
** Reading
** =================================================================== */

/*
** Decode the envelope of the pending command in slot 's' (the outbox at
** 'box'), as 'shape' says (the envelope's keys).  Its bytes (valid until
** the next allocation), or NULL with a message pushed.
*/
static const char *push_envelope(lua_State *L, int box, const Slot *s, CodecShape *shape) {
  size_t len, pos = 0;
  const char *p;
  if (s->len == DEFERRED) {
    lua_pushliteral(L, "deferred (recovery is running)");
    return NULL;
  }
  p = bytes_of(L, box, s, &len);
  if (!codec_decode_shaped(L, p, len, &pos, shape))
    return NULL;
  if (pos != len || lua_type(L, -1) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_pushstring(L, pos != len ? "bytes left over" : "not an envelope");
    return NULL;
  }
  return p;
}

/* Push the envelope's keys (from the upvalues); returns the first's index. */
static int push_keys(lua_State *L) {
  int i;
  luaL_checkstack(L, OUTBOX_ENVELOPE_KEYS + 8, "procman.outbox");
  for (i = 1; i <= OUTBOX_ENVELOPE_KEYS; i++)
    lua_pushvalue(L, lua_upvalueindex(i));
  return lua_gettop(L) - OUTBOX_ENVELOPE_KEYS + 1;
}

/* Raise: the pending command at 'place' does not decode (message pushed). */
static int undecodable(lua_State *L, Outbox *o, lua_Integer place) {
  return luaL_error(L, "procman.outbox: pending command %I (from the front) does not decode: %s",
                    place - o->head + 1, lua_tostring(L, -1));
}

/* outbox:list() -> copies of the pending envelopes, in emission order. */
static int outbox_list(lua_State *L) {
  Outbox *o = outbox_check(L, 1);
  lua_Integer place, n = 0;
  CodecMemo memo;
  CodecShape shape;
  lua_settop(L, 1);
  lua_createtable(L, (int)(o->count < 1024 ? o->count : 1024), 0);  /* 2 */
  codec_shape_init(L, &shape, push_keys(L), OUTBOX_ENVELOPE_KEYS);
  codec_memo_init(L, &memo);
  shape.memo = &memo;
  for (place = o->head; place <= o->tail; place++) {
    Slot *s = slot_at(L, 1, o, place);
    if (s->len == ACKED)
      continue;
    if (push_envelope(L, 1, s, &shape) == NULL)
      return undecodable(L, o, place);
    lua_rawseti(L, 2, ++n);
  }
  lua_settop(L, 2);
  return 1;
}

/* outbox:encoded() -> the pending envelopes' bytes, in emission order
** (compaction journals them as they are). */
static int outbox_encoded(lua_State *L) {
  Outbox *o = outbox_check(L, 1);
  lua_Integer place, n = 0;
  lua_settop(L, 1);
  lua_createtable(L, (int)(o->count < 1024 ? o->count : 1024), 0);
  for (place = o->head; place <= o->tail; place++) {
    Slot *s = slot_at(L, 1, o, place);
    size_t len;
    const char *p;
    if (s->len == ACKED)
      continue;
    luaL_argcheck(L, s->len != DEFERRED, 1, "deferred envelopes are not encoded yet");
    p = bytes_of(L, 1, s, &len);
    lua_pushlstring(L, p, len);
    lua_rawseti(L, 2, ++n);
  }
  return 1;
}

/* outbox:size() -> commands pending. */
static int outbox_size(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)outbox_check(L, 1)->count);
  return 1;
}

/* ===================================================================
** Dispatch
** =================================================================== */

int outbox_ack_record(lua_State *L, int id, int bidx) {
  buffer_append(L, bidx, "\x81\xa2" "id", 4);
  return codec_encode(L, id, bidx, "id");
}

/* The router's fields the dispatch reads, after the envelope's keys in
** every method's upvalues (raw access with a string at hand: no C string
** to look up per command). */
enum { R_CLOSED = OUTBOX_ENVELOPE_KEYS + 1, R_HOOKS, R_JOURNAL, R_COUNT = R_JOURNAL };
static const char *const router_fields[] = { "closed", "hooks", "journal" };

/* Push router[k] (k: R_*). */
static int router_field(lua_State *L, int router, int k) {
  lua_pushvalue(L, lua_upvalueindex(k));
  return lua_rawget(L, router);
}

/* May the dispatch ack a command itself? ('router' 0: never.)  An open
** router without hooks. */
static int plain_router(lua_State *L, int router) {
  int plain;
  if (router == 0)
    return 0;
  router_field(L, router, R_CLOSED);
  router_field(L, router, R_HOOKS);
  plain = !lua_toboolean(L, -2) && !lua_toboolean(L, -1);
  lua_pop(L, 2);
  return plain;
}

/* An ack record { id = id } whose id is a str of up to 255 bytes. */
#define ACK_SMALL (4 + 2 + 255)

/* Are p[0 .. n) what core.encode writes for a string: a str, in its
** shortest form, of valid UTF-8 (up to 255 bytes)? */
static int canonical_str(const unsigned char *p, size_t n) {
  size_t len, head;
  if (n >= 1 && (p[0] & 0xe0) == 0xa0)
    len = p[0] & 0x1f, head = 1;
  else if (n >= 2 && p[0] == 0xd9 && p[1] >= 32)
    len = p[1], head = 2;
  else
    return 0;
  return head + len == n && codec_utf8_valid(p + head, len);
}

/* The ack record { id = id } in 'out' (ACK_SMALL bytes), made from the
** id's encoded bytes p[0 .. n) (an envelope's) when they are canonical:
** its length, else 0 (the record is then encoded: see append_ack). */
static size_t small_record(char *out, const char *p, size_t n) {
  if (n > ACK_SMALL - 4 || !canonical_str((const unsigned char *)p, n))
    return 0;
  memcpy(out, "\x81\xa2" "id", 4);
  memcpy(out + 4, p, n);
  return 4 + n;
}

/*
** Append the ack record of the id at stack index 'id' to the journal at
** 'journal': record[0 .. n) when made (n > 0), else encoded now.  Its type
** is checked unless it is the value at 'checked' (which then becomes
** it; 0: none).  1, or 0 with the journal's message pushed.
*/
static int append_ack(lua_State *L, int journal, int id, const char *record, size_t n,
                      int checked) {
  if (n == 0) {
    buffer_new(L, 64);
    if (!outbox_ack_record(L, id, lua_gettop(L)))
      lua_error(L);  /* (an id is a string: never) */
    record = buffer_at(L, -1)->data, n = buffer_at(L, -1)->len;
  }
  if (checked != 0 && lua_rawequal(L, journal, checked))
    return journal_lua_append_known(L, journal, RECORD_ACK, record, n);
  if (!journal_lua_append_at(L, journal, RECORD_ACK, record, n))
    return 0;
  if (checked != 0)
    lua_copy(L, journal, checked);
  return 1;
}

/* The ack record of the pending command at 'place' in 'out', from the
** id's bytes in its envelope: its length, or 0 (see small_record). */
static size_t envelope_record(lua_State *L, int box, lua_Integer place, char *out) {
  Slot *s = slot_at(L, box, (Outbox *)lua_touserdata(L, box), place);
  size_t len, at, end;
  const char *p;
  if (s->len == DEFERRED)
    return 0;
  p = bytes_of(L, box, s, &len);
  if (codec_find_field(p, len, 0, "id", &at, &end) != 1)
    return 0;
  return small_record(out, p + at, end - at);
}

/*
** outbox:ack(id, router) -> true, or nil, message: r:ack's work for an
** open router without hooks (as the dispatch's own acks): the record
** { id = id } appended to router.journal, if any (made from the id's
** bytes in the envelope), then the command forgotten.  false when it is
** not for this function: the id is not pending, or the router has hooks
** or is closed (r:ack then goes its Lua way, which raises or calls them).
*/
static int outbox_ack(lua_State *L) {
  lua_Integer place;
  check_idle(L, 1);
  luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);
  if (lua_type(L, 2) != LUA_TSTRING || !plain_router(L, 3) || (place = place_of(L, 1, 2)) == 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (router_field(L, 3, R_JOURNAL) == LUA_TUSERDATA) {  /* 4 */
    char record[ACK_SMALL];
    size_t n = envelope_record(L, 1, place, record);
    if (!append_ack(L, 4, 2, record, n, 0)) {
      lua_pushnil(L);
      lua_pushfstring(L, "procman.router: %s", lua_tostring(L, -2));
      return 2;
    }
  }
  forget(L, 1, place, 2);
  lua_pushboolean(L, 1);
  return 1;
}

/* A dispatch's state, and the stack slots it keeps. */
typedef struct Dispatch {
  Outbox *o;
  int router;     /* the router table, or 0 */
  int journaled;  /* the router had a journal when the dispatch began */
  int journal;    /* the journal that took the last ack record (checked), or nil */
  int values;     /* the current envelope's command, flow, id, workflow */
  int top;        /* the stack's height between commands */
  size_t record_len;         /* the current command's ack record (0: not made) */
  char record[ACK_SMALL];
  CodecMemo memo;
  CodecShape shape;
} Dispatch;

/* The id's place among the envelope's keys. */
#define ID_KEY 2

/* The ack record of the envelope just decoded from 'p', from the id's
** bytes there (no encoding again). */
static void prepare_record(Dispatch *d, const char *p) {
  size_t at = d->shape.value_at[ID_KEY];
  d->record_len = 0;
  if (d->journaled && at != (size_t)-1)
    d->record_len = small_record(d->record, p + at, d->shape.value_end[ID_KEY] - at);
}

/*
** The dispatch's own ack of the command at 'place': its record { id = id }
** appended to the router's journal when it has one (the bytes core.encode
** would give), then the outbox forgets it (allocating nothing: it cannot
** fail once the journal has the record).  1, or 0 with the journal's
** message pushed.
*/
static int ack(lua_State *L, Dispatch *d, lua_Integer place) {
  int id = d->values + ID_KEY;
  if (router_field(L, d->router, R_JOURNAL) == LUA_TUSERDATA &&
      !append_ack(L, lua_gettop(L), id, d->record, d->record_len, d->journal))
    return 0;
  lua_settop(L, d->top);
  forget(L, 1, place, id);
  return 1;
}

/* The slot of the command at 'place' if it is still pending, else NULL
** (valid until the next allocation). */
static Slot *pending_slot(lua_State *L, int box, Outbox *o, lua_Integer place) {
  Slot *s;
  if (place < o->head || place > o->tail)
    return NULL;
  s = slots_of(L, box) + (place - o->base);
  return s->len == ACKED ? NULL : s;
}

/*
** Decode the envelope at 'place', still pending, and its ack record; push
** the envelope (its values in d->values ..).  1, or 0 with a message
** pushed; -1 when the command is not pending any more.
*/
static int decode_one(lua_State *L, Dispatch *d, lua_Integer place) {
  Slot *s = pending_slot(L, 1, d->o, place);
  const char *p;
  if (s == NULL)
    return -1;
  p = push_envelope(L, 1, s, &d->shape);
  if (p == NULL)
    return 0;
  prepare_record(d, p);
  return 1;
}

/*
** Hand the command at 'place' to fn (at 2), then ack it.  1 to go on, 0
** to stop with count and a message pushed, -1: not pending any more.
*/
static int dispatch_one(lua_State *L, Dispatch *d, lua_Integer place, lua_Integer count) {
  int pending, decoded = decode_one(L, d, place);
  if (decoded < 0)
    return -1;
  if (decoded == 0)
    return undecodable(L, d->o, place);
  lua_pushvalue(L, 2);  /* fn(command, envelope) */
  lua_pushvalue(L, d->values);
  lua_rotate(L, -3, -1);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    lua_pushinteger(L, count);
    lua_insert(L, -2);
    return 0;
  }
  pending = pending_slot(L, 1, d->o, place) != NULL;
  if (pending && plain_router(L, d->router)) {
    if (!ack(L, d, place)) {
      lua_pushinteger(L, count);
      lua_pushfstring(L, "procman.router: %s", lua_tostring(L, -2));
      return 0;
    }
  }
  else {
    lua_pushvalue(L, 3);  /* after(id, pending) */
    lua_pushvalue(L, d->values + ID_KEY);
    lua_pushboolean(L, pending);
    lua_call(L, 2, 2);
    if (!lua_toboolean(L, -2)) {
      lua_pushinteger(L, count);
      lua_insert(L, -2);
      return 0;
    }
  }
  lua_settop(L, d->top);
  return 1;
}

/*
** outbox:dispatch(fn, after[, router]) -> count[, error]: for each
** envelope pending when called, in order: fn(command, envelope) (a copy,
** decoded at its turn from the buffer), then its ack.  With a router that
** is open and has no hooks, the ack of a command still pending is the
** loop's own (see ack: its record in router.journal, if any; a journal
** that refuses it stops the dispatch with "procman.router: " and its
** message); otherwise after(id, pending) (pending: fn did not ack it
** meanwhile), which returns true to go on or nil, message to stop there.
** Stops at fn's first error.  The envelopes are found by their places:
** one that fn acked is passed over, one that fn emitted (it handled an
** event) has a later place and waits for the next call.  The strings of
** one envelope recur in the next (keys, types, the workflow, often the
** flow): a memo shares them across the decodes.
*/
static int outbox_dispatch(lua_State *L) {
  Dispatch d;
  lua_Integer place, tail, count = 0;
  d.o = check_idle(L, 1);
  d.router = 0;
  luaL_checktype(L, 2, LUA_TFUNCTION);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  if (!lua_isnoneornil(L, 4)) {
    luaL_checktype(L, 4, LUA_TTABLE);
    d.router = 4;
  }
  lua_settop(L, 5);  /* 5: the journal that took the last ack record */
  d.journal = 5;
  /* (a router never gains a journal: without one now, no ack record) */
  d.journaled = d.router != 0 && router_field(L, d.router, R_JOURNAL) != LUA_TNIL;
  lua_settop(L, 5);
  codec_shape_init(L, &d.shape, push_keys(L), OUTBOX_ENVELOPE_KEYS);
  codec_memo_init(L, &d.memo);
  d.shape.memo = &d.memo;
  luaL_checkstack(L, OUTBOX_ENVELOPE_KEYS + 8, "procman.outbox");
  d.shape.values = d.values = lua_gettop(L) + 1;
  d.top = d.values + OUTBOX_ENVELOPE_KEYS - 1;
  lua_settop(L, d.top);
  tail = d.o->tail;
  for (place = d.o->head; place <= tail; place++) {
    int went = dispatch_one(L, &d, place, count);
    if (went == 0)
      return 2;
    if (went > 0)
      count++;
  }
  lua_pushinteger(L, count);
  return 1;
}

/* ===================================================================
** Registration
** =================================================================== */

/* core.outbox_new() -> an empty outbox. */
static int outbox_new(lua_State *L) {
  Outbox *o = (Outbox *)lua_newuserdatauv(L, sizeof(Outbox), UV_COUNT);
  o->base = o->head = 1;
  o->tail = 0;
  o->count = o->used = 0;
  o->deferring = o->staging = 0;
  luaL_setmetatable(L, OUTBOX_MT);
  return 1;
}

static const luaL_Reg methods[] = {
  { "push", outbox_push },
  { "push_deferred", outbox_push_deferred },
  { "defer", outbox_defer },
  { "deferring", outbox_deferring },
  { "undefer", outbox_undefer },
  { "has", outbox_has },
  { "forget", outbox_forget },
  { "list", outbox_list },
  { "encoded", outbox_encoded },
  { "size", outbox_size },
  { "dispatch", outbox_dispatch },
  { "ack", outbox_ack },
  { NULL, NULL }
};

void outbox_register(lua_State *L) {
  const luaL_Reg *m;
  int i;
  luaL_newmetatable(L, OUTBOX_MT);
  lua_createtable(L, 0, 16);  /* the methods (outbox.lua adds its own) */
  for (m = methods; m->name != NULL; m++) {
    for (i = 0; i < OUTBOX_ENVELOPE_KEYS; i++)
      lua_pushstring(L, outbox_envelope_keys[i]);
    for (i = 0; i < R_COUNT - OUTBOX_ENVELOPE_KEYS; i++)
      lua_pushstring(L, router_fields[i]);
    lua_pushcclosure(L, m->func, R_COUNT);
    lua_setfield(L, -2, m->name);
  }
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__index");
  lua_setfield(L, -3, "outbox_methods");  /* core.outbox_methods */
  lua_pop(L, 1);
  lua_pushcfunction(L, outbox_new);
  lua_setfield(L, -2, "outbox_new");
}
