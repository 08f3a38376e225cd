/*
** pm.c - the procman.pm userdata: one live flow of one workflow.
**
** A flow's state is the fold of the events it handled.  The flow keeps a
** log: a snapshot of its state (encoded by the codec; none while the
** history starts from init) followed by the events handled since, encoded;
** the state table is a cache of the fold.  That makes handle() atomic
** without copying the state per event: the handler mutates the state in
** place, and if anything fails before the event is committed the state is
** marked dirty and rebuilt by decoding the snapshot and replaying the
** history.  Every step that can fail (a Lua error or an out-of-memory
** longjmp) happens before the commit, and the commit itself allocates
** nothing, so an interrupted handle() leaves the committed history, version
** and dedup set exactly as they were.
**
** Memory is bounded by the state, not by the events handled: once the
** history outgrows snapshot_factor times the last snapshot (and at least
** SNAPSHOT_MIN bytes), the next handle() first encodes the committed state
** as the new snapshot and drops the history.  The period grows with the
** state, so the encoding costs O(1) amortised per byte of events.
**
** A flow remembers the event_ids it handled.  While its history holds them
** all (no snapshot dropped one) and is short, the history is the set: a
** redelivery is found by reading the encoded events (no table, no
** allocation).  Past SCAN_MAX events, or when a snapshot drops events that
** had ids, the ids move to a table.  A small flow is then the userdata,
** its state and one buffer of encoded bytes.
*/
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>

#include "lauxlib.h"
#include "budget.h"
#include "buffer.h"
#include "codec.h"
#include "pm.h"
#include "shorthand.h"

/* The flow's Lua values live in user values, not registry references;
** its workflow is its metatable's (see push_flow_metatable). */
enum {
  UV_ID = 1,        /* the flow id (a non-empty string or an integer); or,
                    ** once the flow has a seen table, { id, seen }: few
                    ** flows have one, so it has no user value of its own
                    ** (see push_id, push_seen_table, set_seen) */
  UV_STATE,         /* the state table (cache of the fold) */
  UV_LOG,           /* the log: snapshot, history, staged event; nil at
                    ** first.  While short (LOG_STRING_MAX: most flows are
                    ** small; PM.short_log), a userdata of exactly its
                    ** bytes, its events in shorthand (shorthand.h); a
                    ** Buffer (grown by doubling) of the codec's bytes once
                    ** longer or after a snapshot.  (Not a string: one that
                    ** short would take a slot in Lua's string table too.) */
  UV_COUNT = UV_LOG
};
/* The seen table: event_id -> true (handled) / false (tried), and LAST_ID
** -> the last commit's event_id (or false); none while the history holds
** every id handled. */

/* History bytes before a first snapshot, and the growth (a multiple of
** the last snapshot's size) that makes the next one: SNAPSHOT_FACTOR, or
** SNAPSHOT_FACTOR_LARGE from SNAPSHOT_LARGE bytes (see snapshot_factor). */
#define SNAPSHOT_MIN 4096
#define SNAPSHOT_FACTOR 4
#define SNAPSHOT_LARGE (1 << 20)
#define SNAPSHOT_FACTOR_LARGE 16

/* Events a history may hold and still be searched for an event_id. */
#define SCAN_MAX 4

/* An event without an event_id, in PM.id_at; offsets must be below it. */
#define NO_ID 0xffff

/* Committed bytes up to which a log stays short (UV_LOG). */
#define LOG_STRING_MAX 256

/* A short log writes in shorthand the events of at most LOG_STRING_MAX
** bytes that it stages while its committed bytes are fewer: so the
** events in shorthand take fewer than this (what expanding may add). */
#define SHORTHAND_BYTES (2 * LOG_STRING_MAX)

/* The largest event a flow takes, encoded (PM.last_len). */
#define EVENT_MAX 0xffffffffu

/* A Buffer log of at least LOG_AHEAD_CAP bytes with less than
** LOG_AHEAD_ROOM left grows at once to what it holds until the next
** snapshot (at most LOG_AHEAD_MAX times its size), not by doubling: see
** grow_log_ahead. */
#define LOG_AHEAD_CAP 65536
#define LOG_AHEAD_ROOM 4096
#define LOG_AHEAD_MAX 8

/* Scratch buffers larger than this are not kept for the next event. */
#define SCRATCH_KEEP 65536

/* Key in the seen table of the last commit's event_id (light userdata: no
** event_id can be one). */
static const char LAST_ID = 0;

/* handle and handle_fresh keep a scratch buffer in this upvalue (false
** while it is in use); other functions make their own. */
#define SCRATCH lua_upvalueindex(2)
/* and the keys they read per event, as strings made once (a literal would
** be looked up in the string table each time) */
#define KEY_EVENT_TYPE lua_upvalueindex(3)
#define KEY_EVENT_ID lua_upvalueindex(4)
#define KEY_ON lua_upvalueindex(5)
#define KEY_CORRELATE lua_upvalueindex(6)
#define KEY_COMMAND_TYPE lua_upvalueindex(7)
#define HANDLE_UPVALUES 7

/* 48 bytes: a flow's fixed cost is this, three user values and its log. */
typedef struct PM {
  lua_Integer version;   /* events committed */
  size_t base_len;       /* bytes of the log's snapshot (0: none, from init) */
  size_t history_len;    /* committed bytes of events after the snapshot */
  uint32_t last_len;     /* bytes of the last committed event (EVENT_MAX) */
  unsigned short id_at[SCAN_MAX];  /* without a seen table: where the event_id
                                   ** of each of those events is, from the
                                   ** history's start (NO_ID: none) */
  unsigned short events;       /* events in the history (saturating) */
  unsigned short history_ids;  /* of those, events with an event_id (saturating) */
  unsigned char snapshot_waits;  /* doublings of the next snapshot's threshold,
                                 ** after a state that was not data or a
                                 ** large event */
  unsigned short stagings;    /* stage_event calls: a finalizer may stage an
                              ** event of this flow while one is encoded */
  unsigned can_undo : 1;      /* the last commit may still be taken back */
  unsigned last_had_id : 1;   /* the last commit's event had an event_id */
  unsigned state_ok : 1;      /* 0: the state cache must be rebuilt */
  unsigned busy : 1;          /* a handler or replay of this flow is running */
  unsigned closed : 1;
  unsigned short_log : 1;     /* the log is short: see UV_LOG */
} PM;

/*
** A flow's metatable is its workflow's, one per workflow (made with the
** workflow's first flow, kept while the workflow lives): procman.pm's
** metamethods and __name, with procman.pm's metatable at MT_CLASS (how a
** method knows a flow), the workflow definition at MT_WORKFLOW and the
** dictionary of its short logs' shorthand at MT_DICTIONARY.  So a flow
** needs no user value for its workflow: 16 bytes less a flow.
*/
enum { MT_CLASS = 1, MT_WORKFLOW = 2, MT_DICTIONARY = 3 /* see shorthand.h */ };

/* Key in procman.pm's metatable of workflow -> its flows' metatable (weak
** keys: an entry goes with its workflow). */
static const char FLOW_METATABLES = 0;

/* The fields of procman.pm's metatable that every flow's metatable has. */
static const char *const class_fields[] = {
  "__name", "__index", "__gc", "__close", "__tostring", NULL
};

/* ===================================================================
** Helpers
** =================================================================== */

/*
** The procman.pm at index 1.  Every method has the metatable as its
** upvalue, so the check is a pointer comparison rather than luaL_checkudata's
** registry lookup: handle() is the hot path.
*/
static PM *to_pm(lua_State *L) {
  PM *p = (PM *)lua_touserdata(L, 1);
  int ok = p != NULL && lua_getmetatable(L, 1);
  if (ok) {
    lua_rawgeti(L, -1, MT_CLASS);
    ok = lua_rawequal(L, -1, lua_upvalueindex(1));
    lua_pop(L, 2);
  }
  if (!ok)
    luaL_typeerror(L, 1, PM_TYPENAME);
  return p;
}

/* ===================================================================
** The flow id, and the seen table in the same user value
** =================================================================== */

/* Push the flow id of the flow at 'pm'. */
static void push_id(lua_State *L, int pm) {
  if (lua_getiuservalue(L, pm, UV_ID) == LUA_TTABLE) {
    lua_rawgeti(L, -1, 1);
    lua_remove(L, -2);
  }
}

/* Push the seen table of the flow at 'pm', or nil; returns its type. */
static int push_seen_table(lua_State *L, int pm) {
  int t;
  if (lua_getiuservalue(L, pm, UV_ID) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_pushnil(L);
    return LUA_TNIL;
  }
  t = lua_rawgeti(L, -1, 2);
  lua_remove(L, -2);
  return t;
}

/* Make the table at the top (or nil: none) the seen table of the flow at
** 'pm'; pops it.  Allocates only when the flow had none. */
static void set_seen(lua_State *L, int pm) {
  pm = lua_absindex(L, pm);
  if (lua_getiuservalue(L, pm, UV_ID) == LUA_TTABLE) {  /* seen, pair */
    if (lua_isnil(L, -2)) {
      lua_rawgeti(L, -1, 1);
      lua_setiuservalue(L, pm, UV_ID);                   /* the id alone */
      lua_pop(L, 2);
      return;
    }
    lua_insert(L, -2);                                   /* pair, seen */
    lua_rawseti(L, -2, 2);                               /* an existing slot */
    lua_pop(L, 1);
    return;
  }
  if (lua_isnil(L, -2)) {                                /* nil, id */
    lua_pop(L, 2);
    return;
  }
  lua_createtable(L, 2, 0);                              /* seen, id, pair */
  lua_insert(L, -3);                                     /* pair, seen, id */
  lua_rawseti(L, -3, 1);
  lua_rawseti(L, -2, 2);
  lua_setiuservalue(L, pm, UV_ID);
}

/* Push the workflow definition of the flow at 'pm'. */
static void push_workflow(lua_State *L, int pm) {
  lua_getmetatable(L, pm);
  lua_rawgeti(L, -1, MT_WORKFLOW);
  lua_remove(L, -2);
}

/* Push field 'name' of the flow's workflow definition. */
static int workflow_field(lua_State *L, int pm, const char *name) {
  int t;
  push_workflow(L, pm);
  t = lua_getfield(L, -1, name);
  lua_remove(L, -2);
  return t;
}

/* Push "workflow/flow_id", the flow's name in messages. */
static void push_label(lua_State *L, int pm) {
  const char *name, *id;
  workflow_field(L, pm, "name");
  push_id(L, pm);
  id = luaL_tolstring(L, -1, NULL);
  name = lua_tostring(L, -3);
  lua_pushfstring(L, "%s/%s", name, id);
  lua_replace(L, -4);
  lua_pop(L, 2);
}

/* Raise "workflow/flow: <message>" (the message is formatted like
** lua_pushfstring). */
static int flow_error(lua_State *L, int pm, const char *fmt, ...) {
  va_list ap;
  push_label(L, pm);
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_pushfstring(L, "%s: %s", lua_tostring(L, -2), lua_tostring(L, -1));
  return lua_error(L);
}

/* The flow at index 1, usable: open and not inside its own handler. */
static PM *check_usable(lua_State *L) {
  PM *p = to_pm(L);
  if (p->closed)
    flow_error(L, 1, "this procman.pm is closed");
  if (p->busy)
    flow_error(L, 1, "a handler may not use its own flow (pure handlers only)");
  return p;
}

/* ===================================================================
** Replay: the state is the fold of the history
** =================================================================== */

/* Push the handler for the event type at stack index 'type' (or nil)
** from the workflow definition at 'spec'; true if there is one.  'on' is
** the index of the string "on", or 0. */
static int push_handler_from(lua_State *L, int spec, int on, int type) {
  type = lua_absindex(L, type);
  if (on != 0) {
    lua_pushvalue(L, on);
    lua_gettable(L, spec);
  }
  else
    lua_getfield(L, spec, "on");
  lua_pushvalue(L, type);
  lua_rawget(L, -2);
  lua_remove(L, -2);
  return lua_type(L, -1) == LUA_TFUNCTION;
}

/* The same for the flow at 'pm'. */
static int push_handler(lua_State *L, int pm, int type) {
  int found;
  type = lua_absindex(L, type);
  push_workflow(L, pm);
  found = push_handler_from(L, lua_gettop(L), 0, type);
  lua_remove(L, -2);
  return found;
}

/* The bytes of the log (see UV_LOG) at 'idx' of the flow 'p'. */
static const char *log_data(lua_State *L, const PM *p, int idx) {
  return p->short_log ? (const char *)lua_touserdata(L, idx) : buffer_at(L, idx)->data;
}

/* Push a short log: a userdata of exactly the 'n' bytes at 's'. */
static void push_short_log(lua_State *L, const char *s, size_t n) {
  memcpy(lua_newuserdatauv(L, n, 0), s, n);
}

/* Push the flow's log and return its bytes; NULL with nil pushed when the
** flow has none. */
static const char *push_log(lua_State *L, int pm) {
  if (lua_getiuservalue(L, pm, UV_LOG) == LUA_TNIL)
    return NULL;
  return log_data(L, (const PM *)lua_touserdata(L, pm), -1);
}

/* The dictionary of the shorthand of the flow at 'pm' (NULL: none).  Its
** metatable, which the flow keeps, holds it. */
static const char *flow_dictionary(lua_State *L, int pm) {
  const char *dict;
  lua_getmetatable(L, pm);
  lua_rawgeti(L, -1, MT_DICTIONARY);
  dict = lua_tostring(L, -1);  /* a string or nil */
  lua_pop(L, 2);
  return dict;
}

/*
** Append to the Buffer at 'bidx' the codec's bytes of the events in
** log[from .. to) (a short log's, in shorthand: see stage_event).  When
** 'id_at' is given, it gets where (from the first event appended) the
** event_id of each of the first SCAN_MAX events is (NO_ID: none), and
** *last where the last event starts.
*/
static void expand_events(lua_State *L, int pm, const char *log, size_t from, size_t to, int bidx,
                          unsigned short *id_at, size_t *last) {
  const char *dict = flow_dictionary(L, pm);
  size_t n = to - from, words = (n < SHORTHAND_BYTES ? n : SHORTHAND_BYTES) / 2;
  Buffer *b = buffer_reserve(L, bidx, n + words * SHORTHAND_GROWTH);  /* log is anchored */
  size_t start = b->len, pos = from;
  unsigned i;
  for (i = 0; id_at != NULL && i < SCAN_MAX; i++)
    id_at[i] = NO_ID;
  for (i = 0; pos < to; i++) {
    size_t mark = (size_t)-1, at = b->len;
    pos = shorthand_expand(dict, log, to, pos, b->data + at, b->cap - at, &n,
                           id_at != NULL ? "event_id" : NULL, &mark);
    if (pos == 0)
      flow_error(L, pm, "the history is damaged: malformed bytes in event #%d", (int)i + 1);
    b->len += n;
    if (id_at != NULL && i < SCAN_MAX && mark != (size_t)-1 && at + mark - start < NO_ID)
      id_at[i] = (unsigned short)(at + mark - start);
    if (last != NULL)
      *last = at - start;
  }
}

/*
** Push the codec's bytes of the flow's history and return them, from
** *from to *to: a Buffer log's own (events are encoded into it as they
** are), a short log's expanded into a new Buffer.  NULL with nil pushed
** when the flow has no log.
*/
static const char *push_history(lua_State *L, PM *p, int pm, size_t *from, size_t *to) {
  const char *log;
  pm = lua_absindex(L, pm);
  log = push_log(L, pm);
  *from = p->base_len;
  *to = p->base_len + p->history_len;
  if (log == NULL || !p->short_log || p->history_len == 0)
    return log;
  buffer_new(L, 2 * p->history_len);
  expand_events(L, pm, log, *from, *to, lua_gettop(L), NULL, NULL);
  lua_remove(L, -2);
  *from = 0;
  *to = buffer_at(L, -1)->len;
  return buffer_at(L, -1)->data;
}

/* Push the snapshot state of the flow at 'pm' (decoded), or nil when its
** history starts from init. */
static void push_base(lua_State *L, int pm) {
  PM *p = (PM *)lua_touserdata(L, pm);
  size_t pos = 0;
  const char *log = push_log(L, pm);
  if (log != NULL && p->base_len == 0) {
    lua_pop(L, 1);
    lua_pushnil(L);
  }
  if (log == NULL || p->base_len == 0)
    return;
  if (!codec_decode(L, log, p->base_len, &pos))
    luaL_error(L, "the snapshot state is damaged: %s", lua_tostring(L, -1));
  lua_remove(L, -2);
}

/* Push the state the history starts from: the snapshot, else init(id),
** else {}. */
static void push_initial_state(lua_State *L, int pm) {
  push_base(L, pm);
  if (!lua_isnil(L, -1))
    return;
  lua_pop(L, 1);
  if (workflow_field(L, pm, "init") == LUA_TNIL) {
    lua_pop(L, 1);
    lua_newtable(L);
    return;
  }
  push_id(L, pm);
  lua_call(L, 1, 1);
  if (!lua_istable(L, -1))
    flow_error(L, pm, "init must return a table, got %s", luaL_typename(L, -1));
}

/*
** (pm) -> (): rebuild the state from init and the committed history.
** Runs under lua_pcall, so any error leaves the flow dirty, never broken.
*/
static int replay(lua_State *L) {
  PM *p = (PM *)lua_touserdata(L, 1);
  const char *bytes = NULL;
  size_t pos = p->base_len, end = p->base_len + p->history_len;
  lua_Integer n = 0;
  push_initial_state(L, 1);                          /* 2: state */
  bytes = push_history(L, p, 1, &pos, &end);         /* 3: the history */
  while (pos < end) {
    n++;
    if (!codec_decode(L, bytes, end, &pos))
      return luaL_error(L, "history event #%I is damaged: %s", n, lua_tostring(L, -1));
    lua_pushliteral(L, "event_type");
    lua_rawget(L, -2);                               /* event type */
    if (!push_handler(L, 1, -1))
      return luaL_error(L, "event #%I ('%s'): the workflow has no handler for it "
                        "any more", n, lua_tostring(L, -2));
    lua_rotate(L, -3, -1);                           /* type handler event */
    lua_pushvalue(L, 2);
    lua_insert(L, -2);                               /* type handler state event */
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
      const char *type = lua_tostring(L, -2);
      const char *why = luaL_tolstring(L, -1, NULL);
      return luaL_error(L, "event #%I ('%s') failed on replay: %s", n, type, why);
    }
    lua_pop(L, 1);                                   /* type */
  }
  lua_settop(L, 2);
  lua_setiuservalue(L, 1, UV_STATE);
  p->state_ok = 1;
  return 0;
}

/* Rebuild the state of the flow at 'pm'; 0 and a message pushed if that
** failed (the flow stays dirty and the next use tries again). */
static int try_replay(lua_State *L, int pm) {
  PM *p = (PM *)lua_touserdata(L, pm);
  int status;
  lua_pushcfunction(L, replay);
  lua_pushvalue(L, pm);
  p->busy = 1;
  status = lua_pcall(L, 1, 0, 0);
  p->busy = 0;
  return status == LUA_OK;
}

/* Make sure the state cache is valid, rebuilding it if it is dirty. */
static void ensure_state(lua_State *L, PM *p) {
  if (!p->state_ok && !try_replay(L, 1))
    flow_error(L, 1, "cannot rebuild the state: %s", lua_tostring(L, -1));
}

/* ===================================================================
** Snapshots: the history since the last one is all a flow keeps
** =================================================================== */

/*
** How many times the size of a snapshot (or of a large event) of 'size'
** bytes the history grows before the next snapshot.  Encoding a state
** costs far more a byte than an event when the state is large: its map
** is walked in hash order, a cache miss a key (0.5 s for a million keys,
** 16 MB, where the events of a batch of that size take 70 bytes each).
** With the factor 4 of small states, the snapshot alone would cost some
** 0.5 us an event there, more than a plain-Lua handler's whole event; a
** factor 16 makes it 0.14 us, for a history of at most 16 times the
** encoded state (a few times the state's own memory in Lua).
*/
static size_t snapshot_factor(size_t size) {
  return size >= SNAPSHOT_LARGE ? SNAPSHOT_FACTOR_LARGE : SNAPSHOT_FACTOR;
}

/* 'size' times its snapshot_factor, saturating. */
static size_t times_factor(size_t size) {
  size_t f = snapshot_factor(size);
  return size > ((size_t)-1) / f ? (size_t)-1 : size * f;
}

/* The history length at which to try the next snapshot, after one of
** 'base_len' bytes. */
static size_t next_snapshot_at(size_t base_len) {
  size_t at = times_factor(base_len);
  return at < SNAPSHOT_MIN ? SNAPSHOT_MIN : at;
}

/* The history length that makes the flow's next snapshot. */
static size_t snapshot_threshold(const PM *p) {
  size_t at = next_snapshot_at(p->base_len);
  unsigned i;
  for (i = 0; i < p->snapshot_waits && at <= ((size_t)-1) / 2; i++)
    at *= 2;
  return i < p->snapshot_waits ? (size_t)-1 : at;
}

/*
** A large event puts the next snapshot off until the history holds
** snapshot_factor times its size.  The flow holds that event anyway, and a
** state built from it tends to be as large (a batch's file list): a
** snapshot right after it would cost that much and save nothing.  So a
** flow holds at most about snapshot_factor times the larger of its last
** snapshot and its largest event since.  Allocates nothing (a commit).
*/
static void wait_after_event(PM *p, size_t n) {
  size_t want = times_factor(n);
  while (p->snapshot_waits < UCHAR_MAX && snapshot_threshold(p) < want)
    p->snapshot_waits++;
}

/*
** Push a new log holding the committed state of the flow at index 1,
** encoded, as the snapshot for the next commit to take; nil when the state
** is not data (the history is kept, and the next try waits until it has
** doubled).  Allocates, but changes nothing the flow shows: a failure here
** leaves it as it was.
*/
static void push_snapshot(lua_State *L, PM *p) {
  int top = lua_gettop(L);
  lua_getiuservalue(L, 1, UV_STATE);
  buffer_new(L, (p->base_len > 0 ? p->base_len : SNAPSHOT_MIN / SNAPSHOT_FACTOR) + 64);  /* about the last one */
  if (!codec_encode_snapshot(L, top + 1, top + 2, "state")) {
    size_t wait = next_snapshot_at(p->history_len);
    while (snapshot_threshold(p) < wait && p->snapshot_waits < UCHAR_MAX)
      p->snapshot_waits++;
    lua_settop(L, top);
    lua_pushnil(L);
    return;
  }
  lua_remove(L, top + 1);
}

/*
** A large log about to be full grows at once to the size it reaches at
** the next snapshot (its bytes then, and room for an event), rather than
** by doubling as the codec grows a buffer: each doubling of a log of tens
** of megabytes is a copy, an allocation that runs malloc_consolidate and
** a debt that makes the collector run, for bytes the flow will hold
** anyway.  A log that is not large, or whose snapshot is far off (a state
** that is not data), doubles as before.
*/
static void grow_log_ahead(lua_State *L, const PM *p, int log) {
  const Buffer *b = buffer_at(L, log);
  size_t want = snapshot_threshold(p), most;
  if (b->cap < LOG_AHEAD_CAP || b->cap - b->len >= LOG_AHEAD_ROOM)
    return;
  most = b->cap > ((size_t)-1) / LOG_AHEAD_MAX ? (size_t)-1 : b->cap * LOG_AHEAD_MAX;
  want = want > most - p->base_len - LOG_AHEAD_ROOM ? most
                                                    : p->base_len + want + LOG_AHEAD_ROOM;
  if (want > b->cap + LOG_AHEAD_ROOM)
    buffer_resize(L, log, want);
}

/*
** Make the log at 'snap' (a snapshot of 'base_len' bytes, then the event
** being committed, if any) the flow's log.  Allocates nothing: part of a
** commit.
*/
static void switch_to_snapshot(lua_State *L, PM *p, int snap, size_t base_len) {
  Buffer *log = buffer_at(L, snap);
  p->base_len = base_len;
  p->history_len = log->len - base_len;
  p->last_len = (uint32_t)p->history_len;  /* the event, at most EVENT_MAX */
  p->snapshot_waits = 0;
  p->events = p->history_len > 0;
  p->history_ids = 0;
  p->short_log = 0;
  lua_pushvalue(L, snap);
  lua_setiuservalue(L, 1, UV_LOG);
}

/* ===================================================================
** Remembered event ids
** =================================================================== */

/*
** Has the flow at index 1 handled the event_id at 'id'?  For a flow
** without a seen table: its history holds every id it handled.
*/
static int history_has_id(lua_State *L, PM *p, int id) {
  const char *log;
  size_t end = p->base_len + p->history_len;
  unsigned i, n = p->events < SCAN_MAX ? p->events : SCAN_MAX;
  int found = 0;
  if (p->history_ids == 0)
    return 0;
  log = push_log(L, 1);
  for (i = 0; i < n && !found; i++)
    found = p->id_at[i] != NO_ID &&
            codec_value_is(L, id, log, end, p->base_len + p->id_at[i]);
  lua_pop(L, 1);
  return found;
}

/*
** Push the event_id of each event in the history (nil for one without),
** calling 'each' with the flow at index 1 and the id at the top.
*/
static void for_history_ids(lua_State *L, PM *p, void (*each)(lua_State *L, int arg), int arg) {
  size_t pos = p->base_len, end = p->base_len + p->history_len;
  const char *bytes = push_log(L, 1), *dict;
  int log = lua_gettop(L);
  if (bytes == NULL) {
    lua_pop(L, 1);
    return;
  }
  dict = p->short_log ? flow_dictionary(L, 1) : NULL;
  while (pos < end) {  /* read where they are, in shorthand or not */
    size_t at = pos, vpos = (size_t)-1;
    pos = shorthand_find(dict, bytes, end, pos, "event_id", &vpos);
    if (pos == 0 || (vpos != (size_t)-1 && !codec_decode(L, bytes, end, &vpos)))
      flow_error(L, 1, "the history is damaged: malformed bytes at byte %I", (lua_Integer)at);
    if (vpos != (size_t)-1)
      each(L, arg);
    lua_settop(L, log);
  }
  lua_pop(L, 1);
}

/* Note the id at the top as handled, and as the last one so far. */
static void mark_handled(lua_State *L, int seen) {
  lua_pushvalue(L, -1);
  lua_rawsetp(L, seen, &LAST_ID);
  lua_pushboolean(L, 1);
  lua_rawset(L, seen);
}

/*
** Give the flow at index 1 a seen table, built from its history (the ids
** it holds), with LAST_ID the id of the last commit while it may be taken
** back.  Before a snapshot drops the history, or once it is too long to
** search.  Allocates; changes nothing the flow shows.
*/
static void make_seen_table(lua_State *L, PM *p) {
  int seen;
  lua_createtable(L, 0, (int)(p->history_ids < SCAN_MAX ? SCAN_MAX : SCAN_MAX * 2));
  seen = lua_gettop(L);
  for_history_ids(L, p, mark_handled, seen);  /* LAST_ID: the last event's id, if it had one */
  if (!(p->can_undo && p->last_had_id)) {
    lua_pushboolean(L, 0);
    lua_rawsetp(L, seen, &LAST_ID);
  }
  set_seen(L, 1);
}

/* Push the flow's seen table, making it first when 'make' (else nil). */
static void push_seen(lua_State *L, PM *p, int make) {
  if (push_seen_table(L, 1) != LUA_TNIL || !make)
    return;
  lua_pop(L, 1);
  make_seen_table(L, p);
  push_seen_table(L, 1);
}

/* ===================================================================
** handle(event)
** =================================================================== */

/* Check the event at index 2 and push its non-empty event_type. */
static const char *check_event_type(lua_State *L) {
  int t;
  if (!lua_istable(L, 2))
    flow_error(L, 1, "event must be a table, got %s", luaL_typename(L, 2));
  lua_pushvalue(L, KEY_EVENT_TYPE);
  t = lua_rawget(L, 2);
  if (t == LUA_TSTRING && lua_rawlen(L, -1) > 0)
    return lua_tostring(L, -1);
  flow_error(L, 1, "event.event_type must be a non-empty string, got %s",
             t == LUA_TSTRING ? "an empty string" : lua_typename(L, t));
  return NULL;  /* not reached: flow_error raises */
}

/* One flow per process manager: refuse an event naming another flow.
** 'spec' is the stack index of the workflow definition. */
static void check_correlation(lua_State *L, int spec, const char *type) {
  int t;
  lua_pushvalue(L, KEY_CORRELATE);
  t = lua_gettable(L, spec);                         /* field or function */
  if (t == LUA_TNIL) {
    lua_pop(L, 1);
    return;
  }
  if (t == LUA_TSTRING) {
    lua_pushvalue(L, -1);
    lua_rawget(L, 2);
  }
  else {
    lua_pushvalue(L, 2);
    lua_call(L, 1, 1);
    lua_pushnil(L);
    lua_insert(L, -2);  /* no field name to report */
  }
  if (lua_isnil(L, -1)) {  /* an event without the field is accepted */
    lua_pop(L, 2);
    return;
  }
  push_id(L, 1);                                     /* field, flow, id */
  if (!lua_rawequal(L, -1, -2)) {
    const char *other = luaL_tolstring(L, -2, NULL);  /* field, flow, id, other */
    const char *field = lua_tostring(L, -4);
    const char *types = lua_type(L, -3) == lua_type(L, -2) ? "" :  /* 7 and "7" print alike */
      lua_pushfstring(L, "; ids of different types are different flows: the event's is a %s, "
                      "this flow's a %s", luaL_typename(L, -3), luaL_typename(L, -2));
    flow_error(L, 1, "event '%s' belongs to flow '%s'%s%s%s, not to this one%s",
               type, other, field ? " (event." : "", field ? field : "",
               field ? ")" : "", types);
  }
  lua_pop(L, 3);
}

/* Push the event's event_id (nil if none); check its type. */
static void push_event_id(lua_State *L) {
  int t;
  lua_pushvalue(L, KEY_EVENT_ID);
  t = lua_rawget(L, 2);
  if (t != LUA_TNIL && t != LUA_TSTRING && !lua_isinteger(L, -1))
    flow_error(L, 1, "event.event_id must be a string or an integer, got %s",
               t == LUA_TNUMBER ? "a float" : luaL_typename(L, -1));
}

/*
** Claim the event id at 'id' for this attempt and push the flow's seen
** table (nil while the history holds every id).  Returns 1 if the flow has
** handled that id already.  With a table, a new id is noted as tried
** (false), so that the commit only flips it to true, and LAST_ID is made
** to exist: assigning an existing key never allocates, and an abandoned
** attempt leaves an id that still counts as new.  'make' asks for the
** table now (a snapshot is due: it drops the history).
*/
/* Claim the id at 'id' in the seen table at the top; see claim_event_id. */
static int claim_in_table(lua_State *L, int id) {
  int t, handled;
  if (lua_isnil(L, id))  /* (LAST_ID exists: made with the table) */
    return 0;
  lua_pushvalue(L, id);
  t = lua_rawget(L, -2);
  handled = t == LUA_TBOOLEAN && lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (t == LUA_TNIL) {
    lua_pushvalue(L, id);
    lua_pushboolean(L, 0);
    lua_rawset(L, -3);
  }
  return handled;
}

static int claim_event_id(lua_State *L, PM *p, int id, int make) {
  int has_id = !lua_isnil(L, id);
  if (has_id && p->events >= SCAN_MAX)
    make = 1;  /* no room to note where its id is */
  push_seen(L, p, make && (has_id || p->history_ids > 0));
  if (lua_isnil(L, -1))
    return has_id && history_has_id(L, p, id);
  return claim_in_table(L, id);
}

/* Take the scratch buffer of handle (a finalizer that handles an event
** while this one is encoded gets a new one), emptied; push it. */
static void take_scratch(lua_State *L, int shared) {
  if (shared && lua_type(L, SCRATCH) == LUA_TUSERDATA) {
    lua_pushvalue(L, SCRATCH);
    buffer_at(L, -1)->len = 0;
    lua_pushboolean(L, 0);
    lua_replace(L, SCRATCH);
    return;
  }
  buffer_new(L, 256);
}

/* Give back the scratch buffer at 'idx', unless it grew too large. */
static void keep_scratch(lua_State *L, int idx) {
  if (buffer_at(L, idx)->cap > SCRATCH_KEEP)
    return;
  lua_pushvalue(L, idx);
  lua_replace(L, SCRATCH);
}

/*
** Stage the event at index 2: encode it after the committed history, in
** the log at 'snap' (a new snapshot) or else in the flow's log, and push a
** copy of it (what decoding it gives): the handler gets that copy, so it
** sees exactly what a replay will see and cannot keep references into the
** caller's tables.  A 'fresh' event (just decoded from a journal, held by
** no one else) is that copy already: the handler gets it as it is.
** Returns the event's size; *id_at is where its event_id is, from the
** history's start ((size_t)-1: none).
**
** The event is encoded straight into the log while it is a Buffer (grown
** by doubling, so O(1) amortised per byte).  A short log is a string of
** exactly its size (most flows are small): the event is staged in the
** scratch buffer after a copy of the committed bytes, and the log becomes
** a new string of those bytes and the event's; past LOG_STRING_MAX
** committed bytes it becomes a Buffer (at once when the flow's first
** event is larger than SCRATCH_KEEP: the scratch buffer is that Buffer).
** An attempt that fails leaves bytes past the committed history, which
** the next one drops.
**
** A short log keeps its small events in shorthand (shorthand.h: the words
** of the workflow's dictionary in two bytes; a batch_created of 3 files
** takes 24 bytes, not 59), and the event_id where it was written, so
** that history_has_id reads it as it is.  It is expanded back to the
** codec's bytes wherever it is read, and when it becomes a Buffer.
*/
static size_t stage_event(lua_State *L, PM *p, int snap, const char *type, int fresh,
                          size_t *id_at) {
  int log, small, expanded;
  size_t at, n, mark, history_len, last_at = 0;
  unsigned short ids[SCAN_MAX];
  unsigned short mine;
  const char *dict;
again:
  mine = ++p->stagings;
  small = expanded = 0;
  history_len = p->history_len;
  if (!lua_isnil(L, snap))
    lua_pushvalue(L, snap);
  else {
    const char *old = push_log(L, 1);
    if (old == NULL || p->short_log) {  /* none yet, or a short one */
      /* (what the old log holds: a finalizer may commit meanwhile, and
      ** the stagings check below then starts again) */
      size_t base = p->base_len, committed = base + p->history_len;
      small = committed < LOG_STRING_MAX;
      if (small) {
        take_scratch(L, 1);
        if (committed > 0)
          buffer_append(L, -1, old, committed);
      }
      else {  /* from now on a Buffer, of the codec's bytes */
        buffer_new(L, 2 * committed);
        buffer_append(L, -1, old, base);
        expand_events(L, 1, old, base, committed, lua_gettop(L), ids, &last_at);
        history_len = buffer_at(L, -1)->len - base;
        expanded = 1;
      }
      lua_remove(L, -2);  /* the old log */
    }
  }
  log = lua_gettop(L);
  at = lua_isnil(L, snap) ? p->base_len + history_len : buffer_at(L, log)->len;
  buffer_at(L, log)->len = at;  /* drop an aborted attempt */
  if (!small && lua_isnil(L, snap))
    grow_log_ahead(L, p, log);
  if (!codec_encode_marking(L, 2, log, "event", !fresh, "event_id", &mark))
    flow_error(L, 1, "event '%s' is not data: %s", type, lua_tostring(L, -1));
  if (p->stagings != mine && lua_isnil(L, snap)) {
    lua_settop(L, log - 1);  /* a finalizer wrote into this log meanwhile */
    goto again;
  }
  if (fresh)
    lua_pushvalue(L, 2);
  lua_insert(L, log++);  /* the copy, below the log */
  n = buffer_at(L, log)->len - at;
  if (small && n <= LOG_STRING_MAX && (dict = flow_dictionary(L, 1)) != NULL) {
    Buffer *b = buffer_at(L, log);
    size_t m = mark == (size_t)-1 ? mark : mark - at;
    n = shorthand_compact(dict, b->data + at, n, &m);
    b->len = at + n;
    mark = m == (size_t)-1 ? m : m + at;
  }
  /* from the history's start: after the committed events, or first */
  *id_at = mark == (size_t)-1 ? mark : mark - (lua_isnil(L, snap) ? p->base_len : at);
  if (small && at == 0 && n > SCRATCH_KEEP) {
    /* a large first event (a batch of many files): the scratch buffer,
    ** which is not kept for the next event anyway, becomes the log as it
    ** is (the codec's bytes), rather than a short log of a copy that the
    ** next event copies and expands again */
    lua_setiuservalue(L, 1, UV_LOG);
    p->short_log = 0;
  }
  else if (small) {  /* a short log: exactly its size */
    push_short_log(L, buffer_at(L, log)->data, at + n);
    if (p->stagings != mine) {  /* (it allocated) */
      lua_settop(L, log - 2);
      goto again;
    }
    lua_setiuservalue(L, 1, UV_LOG);
    p->short_log = 1;
    keep_scratch(L, log);
    lua_pop(L, 1);
  }
  else if (!lua_isnil(L, snap))
    lua_replace(L, snap);
  else {
    lua_setiuservalue(L, 1, UV_LOG);  /* it may have grown */
    p->short_log = 0;
    if (expanded) {  /* the same history, as the codec wrote it */
      if (p->history_len > 0)
        p->last_len = (uint32_t)(history_len - last_at);
      p->history_len = history_len;
      memcpy(p->id_at, ids, sizeof ids);
    }
  }
  return n;
}

/*
** Without a seen table, the commit notes where the event's id is in the
** history; when that offset does not fit in PM.id_at, the ids move to a
** table now (before the handler: this allocates) and the id is claimed
** there.  Stack: 6 the event_id, 7 the seen table or nil.
*/
static void note_id_at(lua_State *L, PM *p, size_t id_at) {
  if (lua_isnil(L, 6) || !lua_isnil(L, 7) || id_at < NO_ID)
    return;
  push_seen(L, p, 1);
  claim_in_table(L, 6);  /* new: history_has_id said so */
  lua_replace(L, 7);
}

/* Check what a handler returned (at 'r'); NULL or a message pushed. */
static const char *check_commands(lua_State *L, int r, const char *type) {
  lua_Integer i, n;
  if (!lua_istable(L, r))
    return lua_pushfstring(L, "handler for '%s' must return an array of "
                           "commands or nil, got %s", type, luaL_typename(L, r));
  n = (lua_Integer)lua_rawlen(L, r);
  for (i = 1; i <= n; i++) {
    int ok = 0;
    if (lua_rawgeti(L, r, i) == LUA_TTABLE) {
      lua_pushvalue(L, KEY_COMMAND_TYPE);
      ok = lua_rawget(L, -2) == LUA_TSTRING && lua_rawlen(L, -1) > 0;
    }
    lua_settop(L, r);
    if (!ok)
      return lua_pushfstring(L, "handler for '%s' returned a bad command at "
                             "[%I]: each command must be a table with a "
                             "non-empty string command_type", type, i);
  }
  lua_pushnil(L);
  for (i = 0; lua_next(L, r); i++)
    lua_pop(L, 1);
  if (i != n && n == 0) {  /* { command_type = ... } instead of { { ... } } */
    lua_pushliteral(L, "command_type");
    if (lua_rawget(L, r) == LUA_TSTRING)
      return lua_pushfstring(L, "handler for '%s' returned one command "
                             "(command_type '%s') where a list of commands "
                             "is needed: return { command }", type,
                             lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  if (i != n)
    return lua_pushfstring(L, "handler for '%s' must return an array of "
                           "commands; its table has keys other than 1..%I",
                           type, n);
  return NULL;
}

/*
** Undo a failed handle and raise the error at the top: the state is
** rebuilt from the committed history (if that fails too, it stays dirty
** and the next use rebuilds it).  'status' is the handler's pcall status,
** or LUA_OK when the handler ran but returned bad commands.
*/
static int abort_handle(lua_State *L, int status, const char *type) {
  if (!try_replay(L, 1))
    lua_pop(L, 1);
  if (status == LUA_OK)
    return flow_error(L, 1, "%s", lua_tostring(L, -1));
  /* memory errors and error objects pass as they are; a number is a
  ** message, as Lua's own message handler takes it */
  if (status == LUA_ERRMEM || !lua_isstring(L, -1))
    return lua_error(L);
  return flow_error(L, 1, "handler for '%s' failed: %s", type, lua_tostring(L, -1));
}

/*
** pm:handle(event) -> commands (fresh: see pm_handle_fresh).  Stack: 1 pm, 2 event, 3 workflow,
** 4 event_type, 5 handler, 6 event_id, 7 seen ids (or nil), 8 the new log
** (snapshot) to take with this commit (or nil), 9 commands.
*/
static int handle_event(lua_State *L, int fresh) {
  PM *p = check_usable(L);
  const char *type;
  size_t base_len = 0, n, id_at;
  int status, snapshot_due;
  unsigned short staged;
  lua_settop(L, 2);
  push_workflow(L, 1);
  type = check_event_type(L);
  if (!push_handler_from(L, 3, KEY_ON, 4))
    return flow_error(L, 1, "workflow has no handler for event type '%s'", type);
  check_correlation(L, 3, type);
  push_event_id(L);
  snapshot_due = p->history_len >= snapshot_threshold(p);
  if (claim_event_id(L, p, 6, snapshot_due)) {
    lua_newtable(L);
    return 1;  /* at-least-once delivery: a redelivery changes nothing */
  }
  ensure_state(L, p);
  if (snapshot_due)
    push_snapshot(L, p);
  else
    lua_pushnil(L);
  if (!lua_isnil(L, 8))
    base_len = buffer_at(L, 8)->len;
  lua_pushvalue(L, 5);
  lua_getiuservalue(L, 1, UV_STATE);
  n = stage_event(L, p, 8, type, fresh, &id_at);
  if (n > EVENT_MAX)
    return flow_error(L, 1, "event '%s' is too large: %I bytes encoded, at most %I", type,
                      (lua_Integer)n, (lua_Integer)EVENT_MAX);
  staged = p->stagings;
  note_id_at(L, p, id_at);
  p->state_ok = 0;  /* dirty until committed: any error below replays */
  p->busy = 1;
  status = budget_pcall_function(L, 2, 1);  /* under the handler's own guard (anchored at 5) */
  p->busy = 0;
  if (status != LUA_OK)
    return abort_handle(L, status, type);
  if (lua_isnil(L, 9)) {  /* no commands: nothing to check */
    lua_newtable(L);
    lua_replace(L, 9);
  }
  else if (check_commands(L, 9, type) != NULL)
    return abort_handle(L, LUA_OK, type);
  if (p->stagings != staged) {  /* a finalizer staged an event of this flow */
    lua_pushliteral(L, "a finalizer handled an event of this flow meanwhile; handle it again");
    return abort_handle(L, LUA_OK, type);
  }
  /* commit: nothing below allocates */
  if (!lua_isnil(L, 8))
    switch_to_snapshot(L, p, 8, base_len);
  else {
    p->last_len = (uint32_t)n;
    p->history_len += n;
    if (p->events < USHRT_MAX)
      p->events++;
  }
  wait_after_event(p, n);
  p->can_undo = 1;
  p->last_had_id = !lua_isnil(L, 6);
  if (p->events <= SCAN_MAX)  /* read only without a seen table */
    p->id_at[p->events - 1] = (unsigned short)(p->last_had_id && id_at < NO_ID ? id_at : NO_ID);
  if (p->last_had_id && p->history_ids < USHRT_MAX)
    p->history_ids++;
  p->version++;
  p->state_ok = 1;
  if (lua_istable(L, 7)) {
    if (p->last_had_id) {
      lua_pushvalue(L, 6);
      lua_pushboolean(L, 1);
      lua_rawset(L, 7);  /* the key exists: no allocation */
    }
    if (p->last_had_id)
      lua_pushvalue(L, 6);
    else
      lua_pushboolean(L, 0);
    lua_rawsetp(L, 7, &LAST_ID);  /* made by claim_event_id */
  }
  lua_settop(L, 9);
  return 1;
}

static int pm_handle(lua_State *L) {
  return handle_event(L, 0);
}

/*
** core.handle_fresh(pm, event): pm:handle for an event that no one else
** holds or will look at again (decoded from a journal, for one flow): the
** handler gets it without a copy.  For recovery.
*/
static int pm_handle_fresh(lua_State *L) {
  return handle_event(L, 1);
}

/* ===================================================================
** Queries
** =================================================================== */

/* Push the state as the workflow shows it: view(state), or the state. */
static void push_view(lua_State *L, PM *p) {
  ensure_state(L, p);
  if (workflow_field(L, 1, "view") == LUA_TNIL) {
    lua_pop(L, 1);
    lua_getiuservalue(L, 1, UV_STATE);
    return;
  }
  lua_getiuservalue(L, 1, UV_STATE);
  lua_call(L, 1, 1);
}

/* Replace the value at the top by a deep copy, checking that it is data. */
static void deep_copy(lua_State *L, const char *what) {
  if (!codec_copy(L, -1, what))
    flow_error(L, 1, "%s is not data: %s", what, lua_tostring(L, -1));
  lua_replace(L, -2);
}

static int pm_state(lua_State *L) {
  PM *p = check_usable(L);
  push_view(L, p);
  deep_copy(L, "state");
  return 1;
}

/* Push the status of the flow at 'pm', whose state is valid: status(state)
** with the workflow's status function at 'fn' (nil: state.status); a
** string, "none" for nil. */
static void status_with(lua_State *L, int pm, int fn) {
  int t;
  if (lua_isnil(L, fn)) {
    lua_getiuservalue(L, pm, UV_STATE);
    lua_pushliteral(L, "status");
    lua_rawget(L, -2);  /* no metamethod of the workflow's runs unguarded */
    lua_remove(L, -2);
  }
  else {
    lua_pushvalue(L, fn);
    lua_getiuservalue(L, pm, UV_STATE);
    budget_call_function(L, 1, 1);  /* guarded without a call of its own: anchored at fn */
  }
  t = lua_type(L, -1);
  if (t == LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushliteral(L, "none");
  }
  else if (t != LUA_TSTRING)
    flow_error(L, pm, "status must be a string or nil, got %s", lua_typename(L, t));
}

/* done(state) for the flow at 'pm', whose state is valid, with the
** workflow's done function at 'fn' (nil: never done). */
static int done_with(lua_State *L, int pm, int fn) {
  int done;
  if (lua_isnil(L, fn))
    return 0;
  lua_pushvalue(L, fn);
  lua_getiuservalue(L, pm, UV_STATE);
  budget_call_function(L, 1, 1);  /* guarded without a call of its own: anchored at fn */
  done = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return done;
}

/* Push the flow's status string: status(state), or state.status. */
static void push_status(lua_State *L, PM *p) {
  ensure_state(L, p);
  workflow_field(L, 1, "status");
  status_with(L, 1, lua_gettop(L));
  lua_remove(L, -2);
}

/* pm:done() -> true once the workflow's done(state) says so. */
static int pm_done(lua_State *L) {
  PM *p = check_usable(L);
  ensure_state(L, p);
  workflow_field(L, 1, "done");
  lua_pushboolean(L, done_with(L, 1, lua_gettop(L)));
  return 1;
}

/*
** core.undo(pm): take back the flow's last committed event, forgetting its
** event_id.  For the router, whose handle() is atomic across the flows of
** several workflows.  Everything that can fail comes before the change.
*/
static int pm_undo(lua_State *L) {
  PM *p = check_usable(L);
  if (!p->can_undo)
    return flow_error(L, 1, "no committed event to take back");
  /* nothing allocates until the replay, which is protected: undo works
  ** when memory has run out, which is when callers need it most */
  lua_settop(L, 1);
  p->history_len -= p->last_len;
  if (p->events > 0 && p->events < USHRT_MAX)
    p->events--;
  if (p->last_had_id && p->history_ids > 0 && p->history_ids < USHRT_MAX)
    p->history_ids--;
  p->version--;
  p->can_undo = 0;
  p->state_ok = 0;
  if (push_seen_table(L, 1) == LUA_TTABLE &&                /* 2 */
      lua_rawgetp(L, 2, &LAST_ID) != LUA_TBOOLEAN) {        /* 3 */
    lua_pushnil(L);
    lua_rawset(L, 2);  /* removing a key never allocates */
    lua_pushboolean(L, 0);
    lua_rawsetp(L, 2, &LAST_ID);
  }
  lua_settop(L, 1);
  if (!try_replay(L, 1))
    lua_pop(L, 1);  /* stays dirty: the next use replays */
  return 0;
}

/*
** core.trim(pm) -> true if the flow's history is now empty: snapshot its
** state now, so that it keeps no event (compaction made them redundant).
** False when the state is not data (the history stays).
*/
static int pm_trim(lua_State *L) {
  PM *p = check_usable(L);
  lua_settop(L, 1);
  ensure_state(L, p);
  if (p->history_len > 0) {
    push_snapshot(L, p);                              /* 2 */
    if (!lua_isnil(L, 2)) {
      push_seen(L, p, p->history_ids > 0);            /* the history's ids */
      switch_to_snapshot(L, p, 2, buffer_at(L, 2)->len);
      p->can_undo = 0;
    }
  }
  lua_pushboolean(L, p->history_len == 0);
  return 1;
}

static int pm_status(lua_State *L) {
  push_status(L, check_usable(L));
  return 1;
}

static int pm_version(lua_State *L) {
  lua_pushinteger(L, to_pm(L)->version);
  return 1;
}

static int pm_id(lua_State *L) {
  to_pm(L);
  push_id(L, 1);
  return 1;
}

/* The handled events since the snapshot, decoded, in order. */
static int pm_history(lua_State *L) {
  PM *p = check_usable(L);
  size_t pos, end;
  lua_Integer n = 0;
  const char *bytes;
  lua_settop(L, 1);
  lua_createtable(L, (int)p->events, 0);  /* 2: a hint (saturating) */
  if ((bytes = push_history(L, p, 1, &pos, &end)) == NULL) {                  /* 3 */
    lua_pop(L, 1);
    return 1;
  }
  while (pos < end) {
    if (!codec_decode(L, bytes, end, &pos))
      return flow_error(L, 1, "history event #%I is damaged: %s", n + 1,
                        lua_tostring(L, -1));
    lua_rawseti(L, 2, ++n);
  }
  lua_settop(L, 2);
  return 1;
}

/* "procman.pm: batch/batch1 (success, v4)"; never raises for the flow. */
static int pm_tostring(lua_State *L) {
  PM *p = to_pm(L);
  push_label(L, 1);
  if (p->closed || p->busy)
    lua_pushfstring(L, "%s: %s (%s)", PM_TYPENAME, lua_tostring(L, -1),
                    p->closed ? "closed" : "running");
  else {
    lua_pushvalue(L, lua_upvalueindex(1));  /* pm_status checks its self */
    lua_pushcclosure(L, pm_status, 1);
    lua_pushvalue(L, 1);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
      lua_pop(L, 1);
      lua_pushliteral(L, "status unknown");
    }
    lua_pushfstring(L, "%s: %s (%s, v%I)", PM_TYPENAME, lua_tostring(L, -2),
                    lua_tostring(L, -1), p->version);
  }
  return 1;
}

/* __gc and __close: release the state and history; safe to call twice. */
static int pm_close(lua_State *L) {
  PM *p = to_pm(L);
  if (p->busy)  /* never for __gc: a running flow is on the stack */
    flow_error(L, 1, "a handler may not close its own flow");
  p->closed = 1;
  lua_pushnil(L);
  lua_setiuservalue(L, 1, UV_STATE);
  lua_pushnil(L);
  lua_setiuservalue(L, 1, UV_LOG);
  p->short_log = 0;
  lua_pushnil(L);
  set_seen(L, 1);  /* keeps the id: pm:id() and tostring still tell */
  return 0;
}

/* ===================================================================
** Construction and registration
** =================================================================== */

/* Push the metatable of the flows of the workflow at 'spec', making it
** at the workflow's first flow. */
static void push_flow_metatable(lua_State *L, int spec) {
  int class_mt, cache, i;
  spec = lua_absindex(L, spec);
  luaL_getmetatable(L, PM_TYPENAME);
  class_mt = lua_gettop(L);
  lua_rawgetp(L, class_mt, &FLOW_METATABLES);
  cache = class_mt + 1;
  lua_pushvalue(L, spec);
  if (lua_rawget(L, cache) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_createtable(L, 2, 5);
    for (i = 0; class_fields[i] != NULL; i++) {
      lua_getfield(L, class_mt, class_fields[i]);
      lua_setfield(L, -2, class_fields[i]);
    }
    lua_pushvalue(L, class_mt);
    lua_rawseti(L, -2, MT_CLASS);
    lua_pushvalue(L, spec);
    lua_rawseti(L, -2, MT_WORKFLOW);
    shorthand_dictionary(L, spec);
    lua_rawseti(L, -2, MT_DICTIONARY);
    lua_pushvalue(L, spec);
    lua_pushvalue(L, -2);
    lua_rawset(L, cache);
  }
  lua_replace(L, class_mt);
  lua_settop(L, class_mt);
}

/* Push a new flow of workflow 'spec' (index 1) with id (index 2). */
static PM *push_flow(lua_State *L) {
  PM *p;
  int id_ok = lua_isinteger(L, 2) ||
              (lua_type(L, 2) == LUA_TSTRING && lua_rawlen(L, 2) > 0);
  luaL_checktype(L, 1, LUA_TTABLE);
  if (!id_ok && lua_type(L, 2) == LUA_TNUMBER)  /* 1.5 and "" say more than their type */
    luaL_argerror(L, 2, lua_pushfstring(L, "non-empty string or integer flow id expected, got the "
                                        "float %f: pass an integer, or the id as a string",
                                        lua_tonumber(L, 2)));
  if (!id_ok && lua_type(L, 2) == LUA_TSTRING)
    luaL_argerror(L, 2, "non-empty string or integer flow id expected, got an empty string");
  luaL_argexpected(L, id_ok, 2, "non-empty string or integer flow id");
  push_flow_metatable(L, 1);
  p = (PM *)lua_newuserdatauv(L, sizeof(PM), UV_COUNT);
  memset(p, 0, sizeof *p);
  lua_insert(L, -2);
  lua_setmetatable(L, -2);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, -2, UV_ID);
  return p;
}

/* Leave only the flow (at the top) and build its state, or raise. */
static int finish_flow(lua_State *L) {
  lua_replace(L, 1);
  lua_settop(L, 1);
  if (!try_replay(L, 1))  /* runs init(id), or decodes the snapshot */
    return lua_error(L);
  return 1;
}

int pm_new(lua_State *L) {
  push_flow(L);
  return finish_flow(L);
}

/* Push an array of the event ids the flow at index 1 has handled. */
static void append_id(lua_State *L, int ids) {
  lua_rawseti(L, ids, (lua_Integer)lua_rawlen(L, ids) + 1);
}

static void push_event_ids(lua_State *L) {
  PM *p = (PM *)lua_touserdata(L, 1);
  int ids, seen;
  lua_Integer n = 0;
  lua_newtable(L);
  ids = lua_gettop(L);
  if (push_seen_table(L, 1) == LUA_TTABLE) {
    seen = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, seen)) {
      /* handled, not merely tried; LAST_ID's value is an id or false */
      if (lua_type(L, -1) == LUA_TBOOLEAN && lua_toboolean(L, -1)) {
        lua_pushvalue(L, -2);
        lua_rawseti(L, ids, ++n);
      }
      lua_pop(L, 1);
    }
  }
  else {
    lua_pop(L, 1);
    for_history_ids(L, p, append_id, ids);
  }
  lua_settop(L, ids);
}

/* core.event_ids(pm) -> the event ids the flow has handled (an array). */
static int pm_event_ids(lua_State *L) {
  check_usable(L);
  lua_settop(L, 1);
  push_event_ids(L);
  return 1;
}

/* ===================================================================
** A completed flow's ids: bytes, made into ids only when asked for
** =================================================================== */

/* Bytes of the string or integer the codec wrote at s[0 .. n); 0 for
** any other value, or bytes that end early. */
static size_t id_len(const unsigned char *s, size_t n) {
  size_t head = 1, len = 0;
  if (n == 0)
    return 0;
  if (s[0] <= 0x7f || s[0] >= 0xe0)
    return 1;
  if (s[0] >= 0xa0 && s[0] <= 0xbf)
    len = s[0] & 0x1f;
  else switch (s[0]) {
    case 0xcc: case 0xd0: len = 1; break;
    case 0xcd: case 0xd1: len = 2; break;
    case 0xce: case 0xd2: len = 4; break;
    case 0xcf: case 0xd3: len = 8; break;
    case 0xc4: case 0xd9: head = 2; break;
    case 0xc5: case 0xda: head = 3; break;
    case 0xc6: case 0xdb: head = 5; break;
    default: return 0;
  }
  if (head > 1) {
    size_t i;
    if (n < head)
      return 0;
    for (i = 1; i < head; i++)
      len = len << 8 | s[i];
  }
  return n - head < len ? 0 : head + len;
}

/* The header of an array of n items, as the codec writes it, at h; its
** length. */
static size_t array_header(unsigned char *h, size_t n) {
  if (n <= 15) {
    h[0] = (unsigned char)(0x90 | n);
    return 1;
  }
  if (n <= 0xffff) {
    h[0] = 0xdc, h[1] = (unsigned char)(n >> 8), h[2] = (unsigned char)n;
    return 3;
  }
  h[0] = 0xdd, h[1] = (unsigned char)(n >> 24), h[2] = (unsigned char)(n >> 16);
  h[3] = (unsigned char)(n >> 8), h[4] = (unsigned char)n;
  return 5;
}

/*
** Append to the Buffer at 'bidx' the event ids the flow at 'idx' has
** handled, as the codec encodes the array core.event_ids gives; returns
** how many, with *start where the bytes begin (the array's header is
** written last, before the ids).  Without a seen table the ids are
** copied from the history where the flow noted them: nothing is decoded.
*/
static size_t encode_event_ids(lua_State *L, int idx, int bidx, size_t *start) {
  PM *p = (PM *)lua_touserdata(L, idx);
  size_t at, n = 0, hlen;
  unsigned char h[5];
  Buffer *b;
  idx = lua_absindex(L, idx);
  bidx = lua_absindex(L, bidx);
  at = buffer_append(L, bidx, "\0\0\0\0\0", 5)->len;  /* room for the header */
  if (push_seen_table(L, idx) == LUA_TTABLE) {
    int seen = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, seen)) {
      /* handled, not merely tried; LAST_ID's value is an id or false */
      if (lua_type(L, -1) == LUA_TBOOLEAN && lua_toboolean(L, -1)) {
        if (!codec_encode(L, -2, bidx, "event_id"))
          lua_error(L);  /* (not reached: a string or an integer) */
        n++;
      }
      lua_pop(L, 1);
    }
  }
  else if (p->history_ids > 0) {
    unsigned i, events = p->events < SCAN_MAX ? p->events : SCAN_MAX;
    const unsigned char *log = (const unsigned char *)push_log(L, idx);
    size_t end = p->base_len + p->history_len;
    for (i = 0; i < events; i++) {
      size_t pos = p->base_len + p->id_at[i], len;
      if (p->id_at[i] == NO_ID)
        continue;
      len = id_len(log + pos, end - pos);
      if (len == 0)
        luaL_error(L, "the history is damaged: no event id where one was noted");
      buffer_append(L, bidx, log + pos, len);  /* (another userdata: the log stays) */
      n++;
    }
  }
  lua_pop(L, 1);
  b = buffer_at(L, bidx);
  hlen = array_header(h, n);
  *start = at - hlen;
  memcpy(b->data + *start, h, hlen);
  return n;
}

/* For the engine (engine.c): see pm.h. */
size_t pm_encode_event_ids(lua_State *L, int idx, int bidx, size_t *start) {
  return encode_event_ids(L, idx, bidx, start);
}

/* core.encoded_event_ids(pm) -> the bytes of core.event_ids(pm) as the
** codec encodes them, or nil when the flow remembers none: what a
** completed flow keeps. */
static int pm_encoded_event_ids(lua_State *L) {
  size_t start;
  check_usable(L);
  lua_settop(L, 1);
  buffer_new(L, 64);
  if (encode_event_ids(L, 1, 2, &start) == 0)
    lua_pushnil(L);
  else
    lua_pushlstring(L, buffer_at(L, 2)->data + start, buffer_at(L, 2)->len - start);
  return 1;
}

/* core.ids_include(bytes, id) -> is 'id' (a string or an integer) in the
** array of ids 'bytes' (core.encoded_event_ids's)?  Reads the bytes where
** they are: a completed flow's ids are never made into a table. */
static int pm_ids_include(lua_State *L) {
  size_t n, pos = 0, count = 0, i;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
  int t = lua_type(L, 2), found = 0;
  if (n > 0 && (s[0] & 0xf0) == 0x90)
    count = s[0] & 0x0f, pos = 1;
  else if (n >= 3 && s[0] == 0xdc)
    count = (size_t)s[1] << 8 | s[2], pos = 3;
  else if (n >= 5 && s[0] == 0xdd)
    count = (size_t)s[1] << 24 | (size_t)s[2] << 16 | (size_t)s[3] << 8 | s[4], pos = 5;
  else
    return luaL_argerror(L, 1, "an array of event ids expected");
  if (t != LUA_TSTRING && !lua_isinteger(L, 2)) {
    lua_pushboolean(L, 0);  /* no event_id is anything else */
    return 1;
  }
  for (i = 0; i < count && !found; i++) {
    size_t len = id_len(s + pos, n - pos);
    if (len == 0)
      return luaL_argerror(L, 1, "damaged array of event ids");
    found = codec_value_is(L, 2, (const char *)s, n, pos);
    pos += len;
  }
  lua_pushboolean(L, found);
  return 1;
}

/*
** core.snapshot(pm) -> state, version, event_ids: the flow's raw state (a
** copy), its version and the event ids it remembers, for compaction.
*/
static int pm_snapshot(lua_State *L) {
  PM *p = check_usable(L);
  lua_settop(L, 1);
  ensure_state(L, p);
  lua_getiuservalue(L, 1, UV_STATE);
  deep_copy(L, "state");                              /* 2 */
  lua_pushinteger(L, p->version);                     /* 3 */
  push_event_ids(L);                                  /* 4 */
  return 3;
}

/*
** core.restore(spec, id, state, version, seen_ids) -> a flow that starts
** from a snapshot: its history (and pm:history()) holds only the events
** handled after it; replay starts from the snapshot's state.
*/
/*
** core.origin(pm) -> spec, base state or nil: where the flow's history
** starts, so tools can replay it step by step (the REPL's .timeline).  The
** base is the snapshot a restored flow started from.
*/
static int pm_origin(lua_State *L) {
  to_pm(L);
  lua_settop(L, 1);
  push_workflow(L, 1);                                       /* 2 */
  push_base(L, 1);                                           /* 3 */
  return 2;
}

static int pm_restore(lua_State *L) {
  lua_Integer version = luaL_checkinteger(L, 4);
  lua_Integer i, n;
  PM *p;
  luaL_checktype(L, 3, LUA_TTABLE);
  luaL_checktype(L, 5, LUA_TTABLE);
  luaL_argcheck(L, version >= 0, 4, "version must not be negative");
  lua_settop(L, 5);
  p = push_flow(L);                                   /* 6 */
  p->version = version;
  take_scratch(L, 0);                                 /* 7 */
  if (!codec_encode_snapshot(L, 3, 7, "state"))
    return luaL_error(L, "core.restore: %s", lua_tostring(L, -1));
  p->base_len = buffer_at(L, 7)->len;
  push_short_log(L, buffer_at(L, 7)->data, p->base_len);  /* 8: exactly its size */
  lua_setiuservalue(L, 6, UV_LOG);
  p->short_log = 1;
  lua_settop(L, 6);
  n = (lua_Integer)lua_rawlen(L, 5);
  if (n == 0)  /* no id to remember: the (empty) history holds them all */
    return finish_flow(L);
  lua_createtable(L, 0, (int)(n < 1 << 20 ? n : 1 << 20));  /* 7: seen */
  for (i = 1; i <= n; i++) {
    int t = lua_rawgeti(L, 5, i);
    if (t != LUA_TSTRING && !lua_isinteger(L, -1))
      return luaL_error(L, "core.restore: seen_ids[%I] must be a string or an integer", i);
    lua_pushboolean(L, 1);
    lua_rawset(L, 7);
  }
  lua_pushboolean(L, 0);
  lua_rawsetp(L, 7, &LAST_ID);  /* every seen table has it: see claim_in_table */
  set_seen(L, 6);
  return finish_flow(L);
}

static const luaL_Reg pm_methods[] = {  /* and handle, with a scratch buffer */
  { "state", pm_state },
  { "status", pm_status },
  { "version", pm_version },
  { "id", pm_id },
  { "history", pm_history },
  { "done", pm_done },
  { NULL, NULL }
};

static const luaL_Reg pm_metamethods[] = {
  { "__tostring", pm_tostring },
  { "__gc", pm_close },
  { "__index", NULL },  /* placeholder, set to the methods table */
  { NULL, NULL }
};

/* Push handle's upvalues after the metatable: see SCRATCH. */
static void push_handle_upvalues(lua_State *L) {
  lua_pushboolean(L, 0);  /* the scratch buffer, made at first use */
  lua_pushliteral(L, "event_type");
  lua_pushliteral(L, "event_id");
  lua_pushliteral(L, "on");
  lua_pushliteral(L, "correlate");
  lua_pushliteral(L, "command_type");
}

void pm_register(lua_State *L, int core) {
  core = lua_absindex(L, core);
  luaL_newmetatable(L, PM_TYPENAME);
  lua_createtable(L, 0, 4);  /* workflow -> its flows' metatable */
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, -2, &FLOW_METATABLES);
  lua_pushvalue(L, -1);
  luaL_setfuncs(L, pm_metamethods, 1);
  luaL_newlibtable(L, pm_methods);
  lua_pushvalue(L, -2);
  luaL_setfuncs(L, pm_methods, 1);
  lua_pushvalue(L, -2);
  push_handle_upvalues(L);
  lua_pushcclosure(L, pm_handle, HANDLE_UPVALUES);
  lua_setfield(L, -2, "handle");
  lua_getfield(L, -2, "__gc");  /* one function: __gc, __close and close */
  lua_pushvalue(L, -1);
  lua_setfield(L, -4, "__close");
  lua_setfield(L, -2, "close");
  lua_setfield(L, -2, "__index");
  lua_pushvalue(L, -1);
  lua_pushvalue(L, -1);
  lua_pushvalue(L, -1);
  lua_pushvalue(L, -1);
  lua_pushvalue(L, -1);
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, pm_event_ids, 1);  /* the metatable is their upvalue */
  lua_setfield(L, core, "event_ids");
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, pm_encoded_event_ids, 1);
  lua_setfield(L, core, "encoded_event_ids");
  lua_pushcclosure(L, pm_undo, 1);
  lua_setfield(L, core, "undo");
  lua_pushcclosure(L, pm_snapshot, 1);
  lua_setfield(L, core, "snapshot");
  lua_pushcclosure(L, pm_restore, 1);
  lua_setfield(L, core, "restore");
  lua_pushcclosure(L, pm_origin, 1);
  lua_setfield(L, core, "origin");
  lua_pushcclosure(L, pm_trim, 1);
  lua_setfield(L, core, "trim");
  push_handle_upvalues(L);  /* its own scratch buffer */
  lua_pushcclosure(L, pm_handle_fresh, HANDLE_UPVALUES);
  lua_setfield(L, core, "handle_fresh");
  lua_pushcfunction(L, pm_ids_include);
  lua_setfield(L, core, "ids_include");
}

/* For the engine (engine.c): push the metatable its new flows of the
** workflow at 'spec' get (made once a workflow, kept by the engine). */
void pm_push_flow_metatable(lua_State *L, int spec) {
  push_flow_metatable(L, spec);
}

/* For the engine (engine.c): push a new flow with the id at 'id' (an
** integer or a non-empty string: the engine checked) and the flows'
** metatable at 'mt' (pm_push_flow_metatable's), its state from init as
** core.new builds it, unprotected: the engine's step is, and drops the
** flow when this raises (core.new then says why, on the Lua path). */
void pm_push_new(lua_State *L, int id, int mt) {
  PM *p;
  int pm;
  id = lua_absindex(L, id);
  mt = lua_absindex(L, mt);
  p = (PM *)lua_newuserdatauv(L, sizeof(PM), UV_COUNT);
  memset(p, 0, sizeof *p);
  pm = lua_gettop(L);
  lua_pushvalue(L, mt);
  lua_setmetatable(L, pm);
  lua_pushvalue(L, id);
  lua_setiuservalue(L, pm, UV_ID);
  lua_pushcfunction(L, replay);  /* runs init(id) */
  lua_pushvalue(L, pm);
  p->busy = 1;
  lua_call(L, 1, 0);
  p->busy = 0;
}

/* For the engine (engine.c): the version of the procman.pm at 'idx'
** (unchecked: the engine passes only flows). */
lua_Integer pm_version_at(lua_State *L, int idx) {
  return ((const PM *)lua_touserdata(L, idx))->version;
}

/* For the engine (engine.c): append to the Buffer at 'bidx' the codec's
** bytes of the event that the flow at 'idx' committed last (expanded from
** a short log's shorthand); 0, appending nothing, when it can no longer
** tell. */
int pm_put_last_event(lua_State *L, int idx, int bidx) {
  const PM *p = (const PM *)lua_touserdata(L, idx);
  size_t from = p->base_len + p->history_len - p->last_len, to = p->base_len + p->history_len;
  idx = lua_absindex(L, idx);
  bidx = lua_absindex(L, bidx);
  if (!p->can_undo || lua_getiuservalue(L, idx, UV_LOG) == LUA_TNIL) {
    lua_pop(L, 1);
    return 0;
  }
  if (p->short_log)
    expand_events(L, idx, lua_touserdata(L, -1), from, to, bidx, NULL, NULL);
  else
    buffer_append(L, bidx, buffer_at(L, -1)->data + from, to - from);  /* anchored below */
  lua_pop(L, 1);
  return 1;
}

/* For the engine (engine.c): push the status of the flow at 'idx', which
** has just committed an event, and return whether it is done, as
** pm:status() and pm:done() tell, with its workflow's status and done
** functions at 'status_fn' and 'done_fn' (nil: none), read once by the
** engine rather than by name per event. */
int pm_settled(lua_State *L, int idx, int status_fn, int done_fn) {
  const PM *p = (const PM *)lua_touserdata(L, idx);
  if (!p->state_ok || p->closed || p->busy)
    return luaL_error(L, "procman.engine: the flow is not usable");  /* (not reached) */
  status_with(L, idx, status_fn);
  return done_with(L, idx, done_fn);
}
