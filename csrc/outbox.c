/*
** outbox.c - the hot paths of procman.outbox (lua/procman/outbox.lua) in
** C: handing the pending envelopes out in order, and forgetting an acked
** one.  They work on the outbox table's own fields (queue, ids, by_id,
** head, tail, count: see outbox.lua), which the engine's step also fills
** (engine.c's emit).
**
**   count[, error] = core.outbox_dispatch(box, fn, after[, router])
**   core.outbox_forget(box, id)
**   core.outbox_has(box, id) -> pending?
*/
#include "lauxlib.h"
#include "buffer.h"
#include "codec.h"
#include "journal_lua.h"
#include "outbox.h"

/* The keys of an envelope, in canonical order (also core.decode_envelope's:
** procman.c). */
const char *const outbox_envelope_keys[OUTBOX_ENVELOPE_KEYS] = {
  "command", "flow", "id", "workflow"
};

/* The journal's record type of an ack (procman.records.ACK). */
#define RECORD_ACK 2

/*
** The strings both functions read fields with, made once: their upvalues
** (rawget with a string at hand: no C string to look up per call).
*/
enum {
  U_COMMAND = 1, U_FLOW, U_ID, U_WORKFLOW,  /* the envelope's keys, in order */
  U_QUEUE, U_IDS, U_BY_ID, U_HEAD, U_TAIL, U_COUNT,  /* the outbox's fields */
  U_CLOSED, U_HOOKS, U_JOURNAL,  /* the router's */
  U_COUNT_
};
static const char *const upvalue_names[U_COUNT_] = {
  NULL, "command", "flow", "id", "workflow", "queue", "ids", "by_id", "head", "tail", "count",
  "closed", "hooks", "journal"
};

#define U(k) lua_upvalueindex(k)

/* Push t[key] (key: an upvalue). */
static int get_field(lua_State *L, int t, int key) {
  lua_pushvalue(L, U(key));
  return lua_rawget(L, t);
}

static lua_Integer int_field(lua_State *L, int t, int key) {
  lua_Integer v;
  get_field(L, t, key);
  v = lua_tointeger(L, -1);
  lua_pop(L, 1);
  return v;
}

/* t[key] = the value at the top (popped). */
static void set_field(lua_State *L, int t, int key) {
  lua_pushvalue(L, U(key));
  lua_insert(L, -2);
  lua_rawset(L, t);
}

static void set_int_field(lua_State *L, int t, int key, lua_Integer v) {
  lua_pushinteger(L, v);
  set_field(L, t, key);
}

int outbox_ack_record(lua_State *L, int id, int bidx) {
  buffer_append(L, bidx, "\x81\xa2" "id", 4);
  return codec_encode(L, id, bidx, "id");
}

/*
** The outbox's index by id (by_id: id -> place), made when first asked
** for (a lookup by id: r:ack, outbox:has, recovery's acks) from the
** pending ids, then kept by emit and forget until the outbox empties.  A
** dispatch, which finds each command by its place, never needs it: most
** commands are never indexed.  Pushes it.  Out of memory: the outbox is as
** it was (the index is set once complete).
*/
static void push_index(lua_State *L, int box) {
  lua_Integer i, head, tail;
  int ids, q;
  if (get_field(L, box, U_BY_ID) == LUA_TTABLE)
    return;
  lua_pop(L, 1);
  head = int_field(L, box, U_HEAD);
  tail = int_field(L, box, U_TAIL);
  get_field(L, box, U_QUEUE);
  q = lua_gettop(L);
  get_field(L, box, U_IDS);
  ids = lua_gettop(L);
  lua_createtable(L, 0, (int)(int_field(L, box, U_COUNT) & 0x3fffffff));
  for (i = head; i <= tail; i++) {
    int pending = lua_rawgeti(L, q, i) != LUA_TNIL && lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (!pending)
      continue;
    lua_rawgeti(L, ids, i);
    lua_pushinteger(L, i);
    lua_rawset(L, -3);
  }
  lua_replace(L, q);
  lua_settop(L, q);
  lua_pushvalue(L, -1);
  set_field(L, box, U_BY_ID);
}

/*
** Forget the pending command at place 'at' (its id at 'id'; box at
** 'box'; at 'q' and 'ids' its queue and ids).  Its slot is cleared (and
** its entry in the index, if there is one); when it was the front, the
** front moves past every cleared slot (otherwise the front is pending and
** stays).  An outbox this leaves empty takes the two tables at the top of
** the stack as its queue and ids when 'fresh', and keeps its own
** otherwise, its front past its last slot (the places go on: a dispatch
** going through the queue never meets a command emitted meanwhile at a
** place it has yet to pass); its index goes.  Allocates nothing.
*/
static void forget(lua_State *L, int box, lua_Integer at, int id, int q, int ids, int fresh) {
  lua_Integer head, tail, front, count;
  if (get_field(L, box, U_BY_ID) == LUA_TTABLE) {
    lua_pushvalue(L, id);
    lua_pushnil(L);
    lua_rawset(L, -3);
  }
  lua_pop(L, 1);
  count = int_field(L, box, U_COUNT) - 1;
  set_int_field(L, box, U_COUNT, count);
  if (count == 0) {  /* no lookups by id now: the index goes */
    lua_pushnil(L);
    set_field(L, box, U_BY_ID);
  }
  head = int_field(L, box, U_HEAD);
  if (at != head) {
    lua_pushboolean(L, 0);  /* the slot stays until the front passes it */
    lua_rawseti(L, q, at);
    return;
  }
  tail = int_field(L, box, U_TAIL);
  for (front = head; front <= tail; front++) {  /* drop the front's cleared slots */
    if (front > head) {
      int pending = lua_rawgeti(L, q, front) != LUA_TNIL && lua_toboolean(L, -1);
      lua_pop(L, 1);
      if (pending)
        break;
    }
    lua_pushnil(L);
    lua_rawseti(L, q, front);
    lua_pushnil(L);
    lua_rawseti(L, ids, front);
  }
  if (front > tail && fresh) {
    set_field(L, box, U_IDS);
    set_field(L, box, U_QUEUE);
    set_int_field(L, box, U_TAIL, 0);
    front = 1;
  }
  set_int_field(L, box, U_HEAD, front);
}

/*
** core.outbox_forget(box, id): the command with this id was acked (see
** forget; its place from the index).  An outbox left empty gets new
** tables (a Lua table never shrinks by removals alone: memory after a
** dispatch is that of the flows, not of past commands), made before
** anything changes: out of memory, the outbox is as it was.
*/
static int outbox_forget(lua_State *L) {
  lua_Integer at;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 2);
  get_field(L, 1, U_QUEUE);  /* 3 */
  get_field(L, 1, U_IDS);    /* 4 */
  push_index(L, 1);
  lua_pushvalue(L, 2);
  if (lua_rawget(L, -2) != LUA_TNUMBER)
    return luaL_error(L, "procman.outbox: no pending command with id %s",
                      luaL_tolstring(L, 2, NULL));
  at = lua_tointeger(L, -1);
  lua_settop(L, 4);
  if (int_field(L, 1, U_COUNT) == 1 && at == int_field(L, 1, U_HEAD)) {  /* it empties */
    lua_newtable(L);
    lua_newtable(L);
  }
  forget(L, 1, at, 2, 3, 4, 1);
  return 0;
}

/* core.outbox_has(box, id) -> is a command with this id pending? */
static int outbox_has(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 2);
  if (int_field(L, 1, U_COUNT) == 0) {  /* nothing to index */
    lua_pushboolean(L, 0);
    return 1;
  }
  push_index(L, 1);
  lua_pushvalue(L, 2);
  lua_pushboolean(L, lua_rawget(L, -2) != LUA_TNIL);
  return 1;
}

/* An emptied outbox that kept its tables (forget without 'fresh') gets
** new ones, and its places start again. */
static void renew_if_empty(lua_State *L, int box) {
  if (int_field(L, box, U_COUNT) != 0 || int_field(L, box, U_TAIL) == 0)
    return;
  lua_newtable(L);
  lua_newtable(L);
  set_field(L, box, U_IDS);
  set_field(L, box, U_QUEUE);
  set_int_field(L, box, U_TAIL, 0);
  set_int_field(L, box, U_HEAD, 1);
}

/*
** The dispatch's own ack of the command at place 'at' (its id at 'id'),
** for a router that is open and has no hooks: its record { id = id } appended to the router's
** journal when it has one (the bytes core.encode would give, made in the
** buffer at 'buf'), then the outbox forgets it (allocating nothing: it
** cannot fail once the journal has the record).  1, or 0 with the
** journal's message pushed.
*/
static int ack(lua_State *L, int router, lua_Integer at, int id, int buf) {
  if (get_field(L, router, U_JOURNAL) == LUA_TUSERDATA) {
    int journal = lua_gettop(L);
    buffer_at(L, buf)->len = 0;
    if (!outbox_ack_record(L, id, buf))
      lua_error(L);  /* (an id is a string: never) */
    if (!journal_lua_append_at(L, journal, RECORD_ACK, buffer_at(L, buf)->data,
                               buffer_at(L, buf)->len))
      return 0;
  }
  lua_pop(L, 1);
  forget(L, 1, at, id, 5, 6, 0);  /* (the queue and ids read at the start: a pending
                              ** command's are still the outbox's own) */
  return 1;
}

/* May the dispatch ack a command itself? ('router' 0: never.) */
static int plain_router(lua_State *L, int router) {
  int plain;
  if (router == 0)
    return 0;
  get_field(L, router, U_CLOSED);
  get_field(L, router, U_HOOKS);
  plain = !lua_toboolean(L, -2) && !lua_toboolean(L, -1);
  lua_pop(L, 2);
  return plain;
}

/*
** core.outbox_dispatch(box, fn, after[, router]) -> count[, error]: for
** each envelope pending when called, in order: fn(command, envelope) (a
** copy, decoded at its turn from the queue's bytes), then its ack.  With
** a router that is open and has no hooks, the ack of a command still
** pending is the loop's own (see ack: its record in router.journal, if
** any; a journal that refuses it stops the dispatch with
** "procman.router: " and its message); otherwise after(id, pending)
** (pending: fn did not ack it meanwhile), which returns true to go on or
** nil, message to stop there.  Stops at fn's first error.  The envelopes
** are found by their places, not through a list of ids: one that fn acked
** is passed over, one that fn emitted (it handled an event) goes after
** the last and waits for the next call.  (An outbox that empties while fn
** runs gets new tables: the queue read here is then the old one, whose
** slots forget cleared.)  An outbox the dispatch emptied gets new tables
** at the end.
*/
static int outbox_dispatch(lua_State *L) {
  lua_Integer i, head, tail, count = 0;
  int router = 0;
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  if (!lua_isnoneornil(L, 4)) {
    luaL_checktype(L, 4, LUA_TTABLE);
    router = 4;
  }
  lua_settop(L, 4);
  get_field(L, 1, U_QUEUE);  /* 5 */
  get_field(L, 1, U_IDS);    /* 6 */
  buffer_new(L, 64);         /* 7: an ack record */
  head = int_field(L, 1, U_HEAD);
  tail = int_field(L, 1, U_TAIL);
  luaL_checkstack(L, OUTBOX_ENVELOPE_KEYS + 12, "procman.outbox");
  for (i = U_COMMAND; i <= U_WORKFLOW; i++)  /* 8 .. 11 */
    lua_pushvalue(L, U(i));
  for (i = head; i <= tail; i++) {
    size_t len, pos = 0;
    const char *s;
    int pending;
    lua_rawgeti(L, 5, i);  /* 12 */
    if (!lua_toboolean(L, 12)) {  /* acked (false), or gone (nil) */
      lua_settop(L, 11);
      continue;
    }
    s = luaL_checklstring(L, 12, &len);  /* (never an envelope deferred by recovery) */
    lua_rawgeti(L, 6, i);  /* 13: the id */
    if (!codec_decode_shaped(L, s, len, &pos, 8, OUTBOX_ENVELOPE_KEYS) || pos != len)
      return luaL_error(L, "procman.outbox: pending command %s does not decode: %s",
                        lua_tostring(L, 13), pos != len ? "bytes left over" : lua_tostring(L, -1));
    lua_pushvalue(L, 2);  /* fn(command, envelope) */
    lua_pushvalue(L, 8);
    lua_rawget(L, 14);
    lua_pushvalue(L, 14);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
      lua_pushinteger(L, count);
      lua_insert(L, -2);
      return 2;
    }
    lua_rawgeti(L, 5, i);
    pending = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (pending && plain_router(L, router)) {
      if (!ack(L, router, i, 13, 7)) {
        lua_pushinteger(L, count);
        lua_pushfstring(L, "procman.router: %s", lua_tostring(L, -2));
        return 2;
      }
    }
    else {
      lua_pushvalue(L, 3);  /* after(id, pending) */
      lua_pushvalue(L, 13);
      lua_pushboolean(L, pending);
      lua_call(L, 2, 2);
      if (!lua_toboolean(L, -2)) {
        lua_pushinteger(L, count);
        lua_insert(L, -2);
        return 2;
      }
    }
    count++;
    lua_settop(L, 11);
  }
  renew_if_empty(L, 1);
  lua_pushinteger(L, count);
  return 1;
}

/* Both functions, with the strings they read fields with as upvalues. */
static void push_closure(lua_State *L, lua_CFunction f) {
  int k;
  for (k = 1; k < U_COUNT_; k++)
    lua_pushstring(L, upvalue_names[k]);
  lua_pushcclosure(L, f, U_COUNT_ - 1);
}

void outbox_register(lua_State *L) {
  push_closure(L, outbox_dispatch);
  lua_setfield(L, -2, "outbox_dispatch");
  push_closure(L, outbox_forget);
  lua_setfield(L, -2, "outbox_forget");
  push_closure(L, outbox_has);
  lua_setfield(L, -2, "outbox_has");
}
