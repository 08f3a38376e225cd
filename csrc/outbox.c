/*
** outbox.c - the hot paths of procman.outbox (lua/procman/outbox.lua) in
** C: handing the pending envelopes out in order, and forgetting an acked
** one.  Both work on the outbox table's own fields (queue, ids, by_id,
** head, tail, count: see outbox.lua), which the engine's step also fills
** (engine.c's emit).
**
**   count[, error] = core.outbox_dispatch(box, fn, after)
**   core.outbox_forget(box, id)
*/
#include "lauxlib.h"
#include "codec.h"
#include "outbox.h"

/* The keys of an envelope, in canonical order (the upvalues of
** outbox_dispatch, and of core.decode_envelope: procman.c). */
const char *const outbox_envelope_keys[OUTBOX_ENVELOPE_KEYS] = {
  "command", "flow", "id", "workflow"
};

/* The outbox's fields, as strings made once (the upvalues of
** outbox_forget, read with rawget: no C string to look up per call). */
enum { F_QUEUE = 1, F_IDS, F_BY_ID, F_HEAD, F_TAIL, F_COUNT, F_COUNT_ };
static const char *const field_names[F_COUNT_] = {
  NULL, "queue", "ids", "by_id", "head", "tail", "count"
};

/* Push box[field] (box: stack index 1). */
static int get_field(lua_State *L, int field) {
  lua_pushvalue(L, lua_upvalueindex(field));
  return lua_rawget(L, 1);
}

static lua_Integer int_field(lua_State *L, int field) {
  lua_Integer v;
  get_field(L, field);
  v = lua_tointeger(L, -1);
  lua_pop(L, 1);
  return v;
}

/* box[field] = the value at the top (popped). */
static void set_field(lua_State *L, int field) {
  lua_pushvalue(L, lua_upvalueindex(field));
  lua_insert(L, -2);
  lua_rawset(L, 1);
}

static void set_int_field(lua_State *L, int field, lua_Integer v) {
  lua_pushinteger(L, v);
  set_field(L, field);
}

/*
** core.outbox_forget(box, id): the command with this id was acked.  Its
** slot is cleared; when it was the front, the front moves past every
** cleared slot (otherwise the front is pending and stays), and an outbox
** left empty gets new tables (a Lua table never shrinks by removals
** alone: memory after a dispatch is that of the flows, not of past
** commands).  Those tables are made before anything changes, and nothing
** else allocates: out of memory, the outbox is as it was.
*/
static int outbox_forget(lua_State *L) {
  lua_Integer at, head, tail, front;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 2);
  get_field(L, F_BY_ID);  /* 3 */
  get_field(L, F_QUEUE);  /* 4 */
  get_field(L, F_IDS);    /* 5 */
  lua_pushvalue(L, 2);
  if (lua_rawget(L, 3) != LUA_TNUMBER)
    return luaL_error(L, "procman.outbox: no pending command with id %s",
                      luaL_tolstring(L, 2, NULL));
  at = lua_tointeger(L, -1);
  lua_pop(L, 1);
  head = int_field(L, F_HEAD);
  tail = int_field(L, F_TAIL);
  front = head;
  if (at == head) {  /* where the front goes: past 'at' and the cleared slots after it */
    int pending = 0;
    while (++front <= tail && !pending) {
      lua_rawgeti(L, 4, front);
      pending = lua_toboolean(L, -1);
      lua_pop(L, 1);
    }
    if (pending)
      front--;
  }
  if (front > tail) {  /* empty: new tables (6, 7, 8), made first */
    lua_newtable(L);
    lua_newtable(L);
    lua_newtable(L);
  }
  lua_pushvalue(L, 2);
  lua_pushnil(L);
  lua_rawset(L, 3);
  set_int_field(L, F_COUNT, int_field(L, F_COUNT) - 1);
  if (at != head) {
    lua_pushboolean(L, 0);  /* the slot stays until the front passes it */
    lua_rawseti(L, 4, at);
    return 0;
  }
  for (; head < front; head++) {  /* drop the front's cleared slots (also when the */
    lua_pushnil(L);                /* tables are replaced: a dispatch may be going */
    lua_rawseti(L, 4, head);       /* through the old queue) */
    lua_pushnil(L);
    lua_rawseti(L, 5, head);
  }
  if (front > tail) {
    set_field(L, F_BY_ID);
    set_field(L, F_IDS);
    set_field(L, F_QUEUE);
    set_int_field(L, F_TAIL, 0);
    front = 1;
  }
  set_int_field(L, F_HEAD, front);
  return 0;
}

/*
** core.outbox_dispatch(box, fn, after) -> count[, error]: for each
** envelope pending when called, in order: fn(command, envelope) (a copy,
** decoded at its turn from the queue's bytes), then after(id, pending)
** (pending: fn did not ack it meanwhile), which returns true to go on or
** nil, message to stop there; stops at fn's first error.  The envelopes
** are found by their places, not through a list of ids: one that fn acked
** is passed over, one that fn emitted (it handled an event) goes after
** the last and waits for the next call.  (An outbox that empties gets new
** tables: the queue read here is then the old one, whose slots forget
** cleared.)
*/
static int outbox_dispatch(lua_State *L) {
  lua_Integer i, head, tail, count = 0;
  int k;
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_settop(L, 3);
  lua_getfield(L, 1, "queue");  /* 4 */
  lua_getfield(L, 1, "ids");    /* 5 */
  lua_getfield(L, 1, "head");
  lua_getfield(L, 1, "tail");
  head = lua_tointeger(L, -2);
  tail = lua_tointeger(L, -1);
  lua_pop(L, 2);
  luaL_checkstack(L, OUTBOX_ENVELOPE_KEYS + 8, "procman.outbox");
  for (k = 1; k <= OUTBOX_ENVELOPE_KEYS; k++)  /* 6 .. 9 */
    lua_pushvalue(L, lua_upvalueindex(k));
  for (i = head; i <= tail; i++) {
    size_t len, pos = 0;
    const char *s;
    int pending;
    lua_rawgeti(L, 4, i);  /* 10 */
    if (!lua_toboolean(L, 10)) {  /* acked (false), or gone (nil) */
      lua_settop(L, 9);
      continue;
    }
    s = luaL_checklstring(L, 10, &len);  /* (never an envelope deferred by recovery) */
    lua_rawgeti(L, 5, i);  /* 11: the id */
    if (!codec_decode_shaped(L, s, len, &pos, 6, OUTBOX_ENVELOPE_KEYS) || pos != len)
      return luaL_error(L, "procman.outbox: pending command %s does not decode: %s",
                        lua_tostring(L, 11), pos != len ? "bytes left over" : lua_tostring(L, -1));
    lua_pushvalue(L, 2);  /* fn(command, envelope) */
    lua_pushvalue(L, 6);
    lua_rawget(L, 12);
    lua_pushvalue(L, 12);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
      lua_pushinteger(L, count);
      lua_insert(L, -2);
      return 2;
    }
    lua_rawgeti(L, 4, i);
    pending = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_pushvalue(L, 3);  /* after(id, pending) */
    lua_pushvalue(L, 11);
    lua_pushboolean(L, pending);
    lua_call(L, 2, 2);
    if (!lua_toboolean(L, -2)) {
      lua_pushinteger(L, count);
      lua_insert(L, -2);
      return 2;
    }
    count++;
    lua_settop(L, 9);
  }
  lua_pushinteger(L, count);
  return 1;
}

void outbox_register(lua_State *L) {
  int k;
  for (k = 0; k < OUTBOX_ENVELOPE_KEYS; k++)
    lua_pushstring(L, outbox_envelope_keys[k]);
  lua_pushcclosure(L, outbox_dispatch, OUTBOX_ENVELOPE_KEYS);
  lua_setfield(L, -2, "outbox_dispatch");
  for (k = 1; k < F_COUNT_; k++)
    lua_pushstring(L, field_names[k]);
  lua_pushcclosure(L, outbox_forget, F_COUNT_ - 1);
  lua_setfield(L, -2, "outbox_forget");
}
