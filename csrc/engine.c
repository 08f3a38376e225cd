/*
** engine.c - the procman.engine userdata: an event's common step through
** a router, in C, under one protected call.
**
**   engine = core.engine { router = r, specs = ..., live = ..., ... }
**   out, err, journaled = engine:step(event)
**
** The engine holds the very tables the router keeps (lua/procman/router.lua
** builds it), so the router's other paths (parking, timers, recovery,
** compaction, the tools) see the same state.  step() takes an event the
** common way: every target is a live or new flow of the newest version
** of its workflow, found by a correlate field; each handler succeeds,
** returns no timer directive and takes no procman.patched change.  Then
** it routes, runs the handlers (pm.c's own handle), encodes the journal
** record straight into a reused buffer, hands it to the log port (the
** router's journal; nothing in memory), settles (new flows, outbox,
** completion) and returns the envelopes.
**
** Anything else is "not mine": step() returns false having changed
** nothing (every target it ran is taken back; handlers are pure, so the
** router's Lua path may run them again), and the Lua path handles the
** event as it always did, errors and their messages included.  Returns:
**   envelopes              handled
**   false                  not mine: nothing changed
**   nil, message           the log refused the record: nothing changed
**   nil, error, true       failed after the log took the record (the
**                          router closes: see after_journaling)
**
** The record's bytes are those of core.encode(record) for the record the
** Lua path builds: keys are written in the codec's canonical order
** (strings bytewise), values through the codec itself.
*/
#include <stdint.h>
#include <string.h>

#include "lauxlib.h"
#include "buffer.h"
#include "codec.h"
#include "engine.h"
#include "journal_lua.h"
#include "outbox.h"
#include "pm.h"

/* Targets (flows of different workflows) one event may have here. */
#define MAX_TARGETS 16
/* Commands of one step whose length in their envelope is noted (more:
** found by walking the envelope's bytes). */
#define MAX_NOTED 64
/* A scratch buffer larger than this is not kept between steps. */
#define SCRATCH_KEEP (64 * 1024)
/* The journal's record type of an event (procman.records.EVENT). */
#define RECORD_EVENT 1

/* The router's tables and functions, in user values. */
enum {
  UV_ROUTER = 1,  /* the router table: seq, hooks, journal, finished_count */
  UV_ROUTES,      /* one route (R_*) per newest spec, in workflow order */
  UV_FINISHED_OF, /* name -> completed flows (a count, for metrics) */
  UV_OUTBOX,      /* the procman.outbox (outbox.h) */
  UV_PATCHES,     /* procman.patches: its context field */
  UV_LIVE_CTX,    /* patches.LIVE */
  UV_UNDO_CTX,    /* patches.UNDO */
  UV_UNDO,        /* core.undo */
  UV_COMPLETE,    /* function(name, flow_id, pm): the router's complete */
  UV_HANDLE,      /* procman.pm's handle method */
  UV_SCRATCH,     /* Buffer: the record, then each envelope */
  UV_TARGETS,     /* array of MAX_TARGETS slots: the flows run (for undo) */
  UV_WRAP,        /* { x }: see put_nested */
  UV_KEYS,        /* the field names the step reads and writes (K_*) */
  UV_JOURNAL,     /* the router's journal when the log last took a record (false: none) */
  UV_COUNT = UV_JOURNAL
};

/*
** The field names the step reads and writes, made once: an array of
** strings read by index.  lua_getfield and lua_setfield with a C string
** look the string up in the string cache (and compare it) each time.
*/
enum {
  K_SEQ = 1, K_HOOKS, K_CLOSED, K_JOURNAL, K_PM, K_RECORDED, K_CONTEXT, K_COMMAND, K_FLOW,
  K_ID, K_WORKFLOW, K_STATUS, K_IDS, K_FINISHED_COUNT, K_EVENT_TYPE, K_COMMAND_TYPE,
  K_COUNT = K_COMMAND_TYPE
};
static const char *const KEYS[K_COUNT] = {
  "seq", "hooks", "closed", "journal", "pm", "recorded", "context", "command", "flow",
  "id", "workflow", "status", "ids", "finished_count", "event_type", "command_type"
};

/*
** A route: what the step reads of one workflow, made once by core.engine
** (an array, read by index: no string key is hashed on the step's path).
** The tables are the router's own, by flow id; they are never replaced.
*/
enum {
  R_SPEC = 1,  /* the newest spec */
  R_NAME,      /* spec.name */
  R_VERSION,   /* spec.version */
  R_CORRELATE, /* spec.correlate when it names a field, else false */
  R_ON,        /* spec.on: event type -> handler */
  R_STARTS,    /* spec.starts_set: event type -> true (false: none) */
  R_TYPES,     /* types_of[name]: event type -> true (any version) */
  R_LIVE,      /* live[name]: flow id -> procman.pm */
  R_FINISHED,  /* finished[name]: flow id -> { status, ids } */
  R_PARKED,    /* parked_of[name]: flow id -> { events, error } */
  R_OLDER,     /* older[name]: flow id -> the older spec the flow runs */
  R_TIMERS,    /* schedule.by_flow[name]: flow id -> its timers */
  R_NAME_BYTES, /* the codec's bytes for the name */
  R_STATUS_FN, /* spec.status (nil: none) */
  R_DONE_FN,   /* spec.done (nil: none) */
  R_FLOW_MT,   /* the metatable of the workflow's flows (pm.c's) */
  R_COUNT = R_FLOW_MT
};

typedef struct Engine {
  int busy;  /* a step is running: a nested one is not mine */
} Engine;

enum { STEP_NOT_MINE, STEP_DONE, STEP_LOG_FAILED };

/* One target, in the protected call: stack indices and what it did. */
typedef struct Target {
  int route, id, pm;        /* stack indices */
  int spec, name;
  int noted;                /* index in Step.command_len of its first command, or -1 */
  unsigned char flow_len;   /* bytes in flow_bytes: the codec's for the id (0: not yet) */
  char flow_bytes[39];
  int commands, status;     /* stack indices, once run */
  int envelopes;            /* stack index of its first envelope's bytes */
  int is_new, committed, done;
  const char *name_bytes;   /* the codec's bytes for the name (NULL: not yet) */
  size_t name_len;
} Target;

/* A step, in the C frame of engine:step (it outlives a longjmp).  Only
** what it routed is set: each target when routed, before[k] when run. */
typedef struct Step {
  int result;                       /* STEP_* */
  int journaled;                    /* past the point of no return */
  int n;                            /* targets routed */
  lua_Integer before[MAX_TARGETS];  /* each flow's version before its run */
  int noted;                        /* command lengths noted */
  lua_Integer out;                  /* envelopes in P_OUT */
  const Buffer *scratch;            /* the engine's scratch buffer when the step began */
  int outside;                      /* no handler is running: the step may set the context */
  int box, staged;                  /* stack indices: the outbox, its buffer (0: no command) */
  int first;                        /* stack index of the first staged envelope's id */
  size_t command_len[MAX_NOTED];    /* each command's bytes in its envelope */
  Target t[MAX_TARGETS];
} Step;

/* Stack indices of the protected call.  P_OUT is nil until the step
** knows how many envelopes it returns. */
enum {
  P_ENGINE = 1, P_EVENT, P_STEP, P_KEYS, P_PATCHES, P_CTX, P_SCRATCH, P_OUT, P_TYPE, P_ROUTER,
  P_FIRST
};

/* ===================================================================
** Helpers
** =================================================================== */

static int uv(lua_State *L, int engine, int n) {
  return lua_getiuservalue(L, engine, n);
}

/* Push t[K] for the table at 't' (an absolute index) and key K_*, with
** the keys at 'keys'; its type.  Raw: the tables the step reads have no
** __index or __newindex for these fields. */
static int get_key(lua_State *L, int keys, int t, int k) {
  lua_rawgeti(L, keys, k);
  return lua_rawget(L, t);
}

/* Push the key K (to set a field: the key, the value, then lua_rawset). */
static void push_key(lua_State *L, int keys, int k) {
  lua_rawgeti(L, keys, k);
}

/* Push t[k] for t, k at stack indices; its type. */
static int raw_get(lua_State *L, int t, int k) {
  t = lua_absindex(L, t);
  lua_pushvalue(L, k);
  return lua_rawget(L, t);
}

/* Does route field 'field' (a table) of the route at 'route' hold key k? */
static int route_has(lua_State *L, int route, int field, int k) {
  int found;
  lua_rawgeti(L, route, field);
  found = raw_get(L, -1, k) != LUA_TNIL;
  lua_pop(L, 2);
  return found;
}

/* Set patches.context to the context at the top, pointing it at the flow
** at 'pm' (or false when pm is 0); pops the context.  Existing keys only:
** allocates nothing (undo runs when memory may have run out). */
static void set_context(lua_State *L, int engine, int pm) {
  int ctx = lua_gettop(L), keys = ctx + 1, patches = ctx + 2;
  uv(L, engine, UV_KEYS);
  uv(L, engine, UV_PATCHES);
  push_key(L, keys, K_CONTEXT);
  if (pm == 0)
    lua_pushboolean(L, 0);
  else {
    push_key(L, keys, K_PM);
    lua_pushvalue(L, pm);
    lua_rawset(L, ctx);
    push_key(L, keys, K_RECORDED);
    lua_pushboolean(L, 0);
    lua_rawset(L, ctx);
    lua_pushvalue(L, ctx);
  }
  lua_rawset(L, patches);
  lua_pop(L, 3);
}

static void clear_context(lua_State *L, int engine) {
  lua_pushnil(L);  /* no context table */
  set_context(L, engine, 0);
}

/* The version of the flow at 'idx'. */
static lua_Integer version_of(lua_State *L, int idx) {
  return pm_version_at(L, idx);
}

/* ===================================================================
** Route: the targets, or not mine
** =================================================================== */

static int is_flow_id(lua_State *L, int idx) {
  return lua_isinteger(L, idx) ||
         (lua_type(L, idx) == LUA_TSTRING && lua_rawlen(L, idx) > 0);
}

/*
** Is the newest spec at 'spec' (name at 'name') a target, and which?
** Pushes the flow id and the live flow (or nil).  Returns 1 (a target),
** 0 (the workflow does not take the event type: nothing pushed kept) or
** -1 (not mine).
*/
static int route_one(lua_State *L, Target *t) {
  int r = t->route, found;
  if (!route_has(L, r, R_ON, P_TYPE))  /* the newest version's types are among its types */
    return route_has(L, r, R_TYPES, P_TYPE) ? -1 : 0;  /* an older version's: not mine */
  if (lua_rawgeti(L, r, R_CORRELATE) != LUA_TSTRING)
    return -1;  /* a correlate function: the Lua path calls it */
  lua_rawget(L, P_EVENT);
  t->id = lua_gettop(L);
  if (!is_flow_id(L, t->id) || route_has(L, r, R_PARKED, t->id))
    return -1;
  lua_rawgeti(L, r, R_LIVE);
  found = raw_get(L, -1, t->id) != LUA_TNIL;
  lua_remove(L, -2);
  t->pm = lua_gettop(L);
  t->is_new = !found;
  /* pinned to an older version, or completed (a late event, a redelivery) */
  if (route_has(L, r, found ? R_OLDER : R_FINISHED, t->id))
    return -1;
  if (t->is_new) {
    found = lua_rawgeti(L, r, R_STARTS) == LUA_TTABLE && raw_get(L, -1, P_TYPE) == LUA_TBOOLEAN &&
            lua_toboolean(L, -1);
    lua_settop(L, t->pm);
    if (!found)
      return -1;
  }
  lua_rawgeti(L, r, R_SPEC);
  t->spec = t->pm + 1;
  lua_rawgeti(L, r, R_NAME);
  t->name = t->pm + 2;
  return 1;
}

/* Find the targets in workflow order; 0 when the event is not mine. */
static int route(lua_State *L, Step *s) {
  lua_Integer i, n;
  int routes;
  uv(L, P_ENGINE, UV_ROUTES);
  routes = lua_gettop(L);
  n = (lua_Integer)lua_rawlen(L, routes);
  luaL_checkstack(L, (int)(n < MAX_TARGETS ? n : MAX_TARGETS) * 8 + 10, "procman.engine");
  for (i = 1; i <= n; i++) {
    Target *t = &s->t[s->n];
    int top, r;
    if (s->n == MAX_TARGETS)
      return 0;
    memset(t, 0, sizeof *t);
    lua_rawgeti(L, routes, i);
    top = lua_gettop(L);
    t->route = top;
    r = route_one(L, t);
    if (r < 0)
      return 0;
    if (r == 0)
      lua_settop(L, top - 1);
    else
      lua_settop(L, t->name), s->n++;
  }
  return s->n > 0;
}

/* ===================================================================
** Run: each target's handler, through pm.c's own handle
** =================================================================== */

/* Is the command at the top a timer directive (procman.after, .at, .cancel)? */
static int is_directive(lua_State *L) {
  size_t n;
  const char *ct;
  get_key(L, P_KEYS, lua_gettop(L), K_COMMAND_TYPE);  /* a string: pm.c checked it */
  ct = lua_tolstring(L, -1, &n);
  lua_pop(L, 1);
  if (ct == NULL || n < 10 || memcmp(ct, "procman.", 8) != 0)
    return 0;
  return strcmp(ct + 8, "after") == 0 || strcmp(ct + 8, "at") == 0 ||
         strcmp(ct + 8, "cancel") == 0;
}

/*
** Run target k: make its flow if new, call its handler.  Returns 0 when
** the result is not mine (a patched change or a timer directive).
*/
static int run_one(lua_State *L, Step *s, int k) {
  Target *t = &s->t[k];
  lua_Integer i, n;
  int recorded;
  if (t->is_new) {  /* core.new's flow, made in this protected call */
    lua_rawgeti(L, t->route, R_FLOW_MT);
    pm_push_new(L, t->id, -1);
    lua_replace(L, t->pm);
    lua_pop(L, 1);
  }
  s->before[k] = version_of(L, t->pm);
  uv(L, P_ENGINE, UV_TARGETS);
  lua_pushvalue(L, t->pm);
  lua_rawseti(L, -2, k + 1);  /* a slot made with the table: no allocation */
  lua_pop(L, 1);
  push_key(L, P_KEYS, K_PM);  /* patches.context = LIVE, pointed at the flow */
  lua_pushvalue(L, t->pm);
  lua_rawset(L, P_CTX);
  push_key(L, P_KEYS, K_RECORDED);
  lua_pushboolean(L, 0);
  lua_rawset(L, P_CTX);
  push_key(L, P_KEYS, K_CONTEXT);
  lua_pushvalue(L, P_CTX);
  lua_rawset(L, P_PATCHES);
  uv(L, P_ENGINE, UV_HANDLE);  /* pm.c's handle: procman.patched tells it by identity */
  lua_pushvalue(L, t->pm);
  lua_pushvalue(L, P_EVENT);
  lua_call(L, 2, 1);
  t->commands = lua_gettop(L);
  push_key(L, P_KEYS, K_CONTEXT);
  lua_pushboolean(L, 0);
  lua_rawset(L, P_PATCHES);
  t->committed = version_of(L, t->pm) > s->before[k];
  get_key(L, P_KEYS, P_CTX, K_RECORDED);
  recorded = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (recorded)
    return 0;
  n = (lua_Integer)lua_rawlen(L, t->commands);
  for (i = 1; i <= n; i++) {
    int directive;
    lua_rawgeti(L, t->commands, i);
    directive = is_directive(L);
    lua_pop(L, 1);
    if (directive)
      return 0;
  }
  if (t->committed) {  /* journaled with the event: tools read flows without the code */
    int fns = lua_gettop(L) + 1;
    lua_rawgeti(L, t->route, R_STATUS_FN);
    lua_rawgeti(L, t->route, R_DONE_FN);
    t->done = pm_settled(L, t->pm, fns, fns + 1);
    lua_replace(L, fns);
    lua_settop(L, fns);
    t->status = fns;
  }
  return 1;
}

/* ===================================================================
** Encode: the envelopes and the record, into the scratch buffer
** =================================================================== */

static void put(lua_State *L, int bidx, const void *p, size_t n) {
  Buffer *b = (Buffer *)lua_touserdata(L, bidx);
  if (b->cap - b->len < n)
    b = buffer_reserve(L, bidx, n);
  memcpy(b->data + b->len, p, n);
  b->len += n;
}

/* A map key: a string of at most 31 bytes, as the codec writes it. */
static void put_key(lua_State *L, int bidx, const char *key) {
  char k[32];
  size_t n = strlen(key);
  k[0] = (char)(0xa0 | n);
  memcpy(k + 1, key, n);
  put(L, bidx, k, n + 1);
}

/* The header of an array or map of n items (0x90 or 0x80 family). */
static void put_header(lua_State *L, int bidx, unsigned fix, unsigned tag16, size_t n) {
  unsigned char h[5];
  if (n <= 15) {
    h[0] = (unsigned char)(fix | n);
    put(L, bidx, h, 1);
  }
  else if (n <= 0xffff) {
    h[0] = (unsigned char)tag16, h[1] = (unsigned char)(n >> 8), h[2] = (unsigned char)n;
    put(L, bidx, h, 3);
  }
  else {
    h[0] = (unsigned char)(tag16 + 1);
    h[1] = (unsigned char)(n >> 24), h[2] = (unsigned char)(n >> 16);
    h[3] = (unsigned char)(n >> 8), h[4] = (unsigned char)n;
    put(L, bidx, h, 5);
  }
}

/* A tag byte, then v's low 'width' bytes, big-endian. */
static void put_tagged(lua_State *L, int bidx, unsigned tag, unsigned long long v, int width) {
  unsigned char out[9];
  int i;
  out[0] = (unsigned char)tag;
  for (i = width; i >= 1; i--, v >>= 8)
    out[i] = (unsigned char)v;
  put(L, bidx, out, (size_t)width + 1);
}

/* An integer in the codec's canonical (shortest) form: docs/codec.md. */
static void put_integer(lua_State *L, int bidx, lua_Integer v) {
  unsigned long long u = (unsigned long long)v;
  if (v >= -32 && v <= 0x7f) {
    unsigned char c = (unsigned char)(u & 0xff);  /* positive or negative fixint */
    put(L, bidx, &c, 1);
  }
  else if (v > 0)
    put_tagged(L, bidx, u <= 0xff ? 0xcc : u <= 0xffff ? 0xcd : u <= 0xffffffffULL ? 0xce : 0xcf, u,
               u <= 0xff ? 1 : u <= 0xffff ? 2 : u <= 0xffffffffULL ? 4 : 8);
  else if (v >= INT8_MIN)
    put_tagged(L, bidx, 0xd0, u, 1);
  else if (v >= INT16_MIN)
    put_tagged(L, bidx, 0xd1, u, 2);
  else if (v >= INT32_MIN)
    put_tagged(L, bidx, 0xd2, u, 4);
  else
    put_tagged(L, bidx, 0xd3, u, 8);
}

/* A string as the codec writes it: a str when valid UTF-8, else a bin
** (codec_utf8_valid says which), with the shortest header. */
static void put_string(lua_State *L, int bidx, const char *s, size_t n) {
  if (!codec_utf8_valid((const unsigned char *)s, n)) {
    put_tagged(L, bidx, n <= 0xff ? 0xc4 : n <= 0xffff ? 0xc5 : 0xc6, n, n <= 0xff ? 1 : n <= 0xffff ? 2 : 4);
  }
  else if (n <= 31) {
    unsigned char c = (unsigned char)(0xa0 | n);
    put(L, bidx, &c, 1);
  }
  else
    put_tagged(L, bidx, n <= 0xff ? 0xd9 : n <= 0xffff ? 0xda : 0xdb, n, n <= 0xff ? 1 : n <= 0xffff ? 2 : 4);
  put(L, bidx, s, n);
}

/* The integer or string at 'idx' (a flow id, a status) as the codec
** writes it. */
static void put_scalar(lua_State *L, int bidx, int idx) {
  size_t n;
  const char *s;
  if (lua_isinteger(L, idx)) {
    put_integer(L, bidx, lua_tointeger(L, idx));
    return;
  }
  s = lua_tolstring(L, idx, &n);
  put_string(L, bidx, s, n);
}

/* The flow id of a target, written once a step. */
static void put_flow(lua_State *L, int bidx, Target *t) {
  size_t at, n;
  if (t->flow_len > 0) {
    put(L, bidx, t->flow_bytes, t->flow_len);
    return;
  }
  at = buffer_at(L, bidx)->len;
  put_scalar(L, bidx, t->id);  /* an integer or a non-empty string (route_one) */
  n = buffer_at(L, bidx)->len - at;
  if (n <= sizeof t->flow_bytes) {
    memcpy(t->flow_bytes, buffer_at(L, bidx)->data + at, n);
    t->flow_len = (unsigned char)n;
  }
}

/* The workflow name of a target: the route keeps its bytes (a string
** the route, on the stack throughout the step, anchors). */
static void put_name(lua_State *L, int bidx, Target *t) {
  if (t->name_bytes == NULL) {
    lua_rawgeti(L, t->route, R_NAME_BYTES);
    t->name_bytes = lua_tolstring(L, -1, &t->name_len);
    lua_pop(L, 1);
  }
  put(L, bidx, t->name_bytes, t->name_len);
}

static void reset_scratch(lua_State *L) {
  buffer_at(L, P_SCRATCH)->len = 0;
}

/* Write v in decimal (as LUA_INTEGER_FMT does) at p; returns the end. */
static char *put_decimal(char *p, lua_Integer v) {
  char digits[24];
  int n = 0;
  unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
  do
    digits[n++] = (char)('0' + u % 10);
  while ((u /= 10) > 0);
  if (v < 0)
    *p++ = '-';
  while (n > 0)
    *p++ = digits[--n];
  return p;
}

/* Push the command id "workflow/flow/version/i" (records.command_id). */
static void push_command_id(lua_State *L, Target *t, lua_Integer version, lua_Integer i) {
  char id[256], *p = id;
  size_t name_len, flow_len = 0;
  const char *name = lua_tolstring(L, t->name, &name_len);
  const char *flow = lua_type(L, t->id) == LUA_TSTRING ? lua_tolstring(L, t->id, &flow_len) : NULL;
  if (name_len + flow_len > sizeof id - 80) {  /* long: Lua formats it */
    lua_pushvalue(L, t->name);
    lua_pushliteral(L, "/");
    lua_pushvalue(L, t->id);
    lua_pushfstring(L, "/%I/%I", version, i);
    lua_concat(L, 4);
    return;
  }
  memcpy(p, name, name_len), p += name_len;
  *p++ = '/';
  if (flow != NULL)
    memcpy(p, flow, flow_len), p += flow_len;
  else  /* an integer id, as tostring writes it */
    p = put_decimal(p, lua_tointeger(L, t->id));
  *p++ = '/';
  p = put_decimal(p, version);
  *p++ = '/';
  p = put_decimal(p, i);
  lua_pushlstring(L, id, (size_t)(p - id));
}

/* The envelope's keys, in canonical order, as the codec writes them: a
** map of four, then "command"; "flow"; "id"; "workflow". */
#define ENVELOPE_HEAD "\x84\xa7" "command"
#define ENVELOPE_FLOW "\xa4" "flow"
#define ENVELOPE_ID "\xa2" "id"
#define ENVELOPE_WORKFLOW "\xa8" "workflow"

/* The caller's copy of an envelope, as core.encode_copy makes it: the
** command's copy at 'copy', the id at 'id'.  Pushed. */
static void push_envelope(lua_State *L, Target *t, int copy, int id) {
  lua_createtable(L, 0, 4);
  push_key(L, P_KEYS, K_COMMAND);
  lua_pushvalue(L, copy);
  lua_rawset(L, -3);
  push_key(L, P_KEYS, K_FLOW);
  lua_pushvalue(L, t->id);
  lua_rawset(L, -3);
  push_key(L, P_KEYS, K_ID);
  lua_pushvalue(L, id);
  lua_rawset(L, -3);
  push_key(L, P_KEYS, K_WORKFLOW);
  lua_pushvalue(L, t->name);
  lua_rawset(L, -3);
}

/*
** The envelopes of a committed target's commands: each is encoded
** straight into the outbox's buffer (s->staged: see outbox_stage), after
** what the outbox uses, where put_commands finds it for the record and
** settle commits it; its id, where it starts and its length stay on the
** stack (3 slots per command) and a copy goes to 'out'.  Encoded before
** the log, so commands that are not data are found while everything can
** still be taken back (the bytes staged so far are dropped by the next
** outbox_stage).  0 when one is not data.
*/
static int encode_envelopes(lua_State *L, Step *s, Target *t) {
  lua_Integer i, n = (lua_Integer)lua_rawlen(L, t->commands);
  lua_Integer version = version_of(L, t->pm);
  luaL_checkstack(L, 8, "procman.engine");
  t->envelopes = lua_gettop(L) + 1;
  t->noted = n <= MAX_NOTED - s->noted ? s->noted : -1;
  for (i = 1; i <= n; i++) {
    int id, copy;
    size_t start = buffer_at(L, s->staged)->len;
    push_command_id(L, t, version, i);
    id = lua_gettop(L);
    lua_rawgeti(L, t->commands, i);
    put(L, s->staged, ENVELOPE_HEAD, sizeof ENVELOPE_HEAD - 1);
    if (!codec_encode_copy(L, id + 1, s->staged, "value"))
      return 0;
    copy = lua_gettop(L);
    if (t->noted >= 0)
      s->command_len[s->noted++] = buffer_at(L, s->staged)->len - start - (sizeof ENVELOPE_HEAD - 1);
    put(L, s->staged, ENVELOPE_FLOW, sizeof ENVELOPE_FLOW - 1);
    put_flow(L, s->staged, t);
    put(L, s->staged, ENVELOPE_ID, sizeof ENVELOPE_ID - 1);
    put_scalar(L, s->staged, id);  /* a string */
    put(L, s->staged, ENVELOPE_WORKFLOW, sizeof ENVELOPE_WORKFLOW - 1);
    put_name(L, s->staged, t);
    push_envelope(L, t, copy, id);
    lua_rawseti(L, P_OUT, ++s->out);
    lua_pop(L, 2);  /* the copy and the command */
    lua_pushinteger(L, (lua_Integer)start);
    lua_pushinteger(L, (lua_Integer)(buffer_at(L, s->staged)->len - start));
    outbox_will_index(L, s->box, id);
    luaL_checkstack(L, 8, "procman.engine");
  }
  /* the buffer (maybe grown) is the outbox's, with room for the step's
  ** commands: committing them after the log allocates nothing */
  if (n > 0)
    outbox_keep(L, s->box, s->staged, (size_t)s->out);
  return 1;
}

/* A staged envelope of a target (its i-th command, from 0): where it
** starts in s->staged, and its length. */
static const char *staged_envelope(lua_State *L, Step *s, Target *t, lua_Integer i, size_t *len) {
  int at = t->envelopes + 3 * (int)i + 1;
  *len = (size_t)lua_tointeger(L, at + 1);
  return buffer_at(L, s->staged)->data + lua_tointeger(L, at);
}

/*
** The value at 'idx' as the record holds it, one table deep: the codec's
** depth limit counts the tables around it, so it is encoded inside a
** reused wrapper { value } whose array header (0x91) is then cut.  0 when
** it is not data.
*/
static int put_nested(lua_State *L, int idx) {
  size_t at = buffer_at(L, P_SCRATCH)->len;
  int ok;
  Buffer *b;
  uv(L, P_ENGINE, UV_WRAP);
  lua_pushvalue(L, idx);
  lua_rawseti(L, -2, 1);  /* an existing slot: no allocation */
  ok = codec_encode(L, -1, P_SCRATCH, "value");
  if (!ok)
    lua_pop(L, 1);
  lua_pushboolean(L, 0);
  lua_rawseti(L, -2, 1);
  lua_pop(L, 1);
  if (!ok)
    return 0;
  b = buffer_at(L, P_SCRATCH);
  memmove(b->data + at, b->data + at + 1, b->len - at - 1);
  b->len--;
  return 1;
}

/*
** The end of the MessagePack value at p (the codec's own output, which
** ends before 'end'), counting in *deepest the tables nested in it (from
** 'level'); NULL for anything the codec does not write.  The record
** reuses bytes the codec made for a shallower place (the flow's history,
** an envelope): this says whether they fit under the depth limit there.
*/
static const unsigned char *skip_value(const unsigned char *p, const unsigned char *end,
                                       int level, int *deepest) {
  unsigned c;
  size_t n = 0, items = 0;
  int w = 0, table = 0;
  if (p >= end || level >= CODEC_MAX_DEPTH)
    return NULL;
  c = *p++;
  if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3)
    return p;
  if (c >= 0x80 && c <= 0x9f)
    table = 1, items = (c & 0x0f) * (c < 0x90 ? 2 : 1);
  else if (c >= 0xa0 && c <= 0xbf)
    n = c & 0x1f;
  else switch (c) {
    case 0xcc: case 0xd0: n = 1; break;
    case 0xcd: case 0xd1: n = 2; break;
    case 0xce: case 0xd2: n = 4; break;
    case 0xcb: case 0xcf: case 0xd3: n = 8; break;
    case 0xc4: case 0xd9: w = 1; break;
    case 0xc5: case 0xda: w = 2; break;
    case 0xc6: case 0xdb: w = 4; break;
    case 0xdc: case 0xde: table = 1, w = 2; break;
    case 0xdd: case 0xdf: table = 1, w = 4; break;
    default: return NULL;
  }
  if (w > 0) {
    if ((size_t)(end - p) < (size_t)w)
      return NULL;
    for (; w > 0; w--)
      n = n << 8 | *p++;
    if (table)
      items = c >= 0xde ? 2 * n : n, n = 0;
  }
  if (!table)
    return (size_t)(end - p) < n ? NULL : p + n;
  if (++level > *deepest)
    *deepest = level;
  while (items-- > 0)
    if ((p = skip_value(p, end, level, deepest)) == NULL)
      return NULL;
  return p;
}

/* Do the tables of the one value in bytes[0 .. len), 'around' more tables
** deep, fit the codec's depth limit? */
static int fits_nested(const char *bytes, size_t len, int around) {
  const unsigned char *p = (const unsigned char *)bytes;
  int deepest = 0;
  /* a table takes a byte at least: bytes this short cannot nest too deep */
  return len + (size_t)around <= CODEC_MAX_DEPTH ||
         (skip_value(p, p + len, 0, &deepest) == p + len && deepest + around <= CODEC_MAX_DEPTH);
}

/* The event, as the first committed flow encoded it into its history
** (the codec's bytes for it, which pm.c appends), else through the codec. */
static void put_event(lua_State *L, Step *s) {
  int k;
  for (k = 0; k < s->n; k++) {
    size_t at = buffer_at(L, P_SCRATCH)->len;
    Buffer *b;
    if (!s->t[k].committed)
      continue;
    if (!pm_put_last_event(L, s->t[k].pm, P_SCRATCH))
      break;
    b = buffer_at(L, P_SCRATCH);
    if (fits_nested(b->data + at, b->len - at, 1))
      return;
    b->len = at;
    break;
  }
  if (!put_nested(L, P_EVENT))
    luaL_error(L, "procman.engine: the event is not data");
}

/* A target's commands, from the bytes of its envelopes (each is
** ENVELOPE_HEAD, then the command's bytes), 3 tables deep in the record. */
static void put_commands(lua_State *L, Step *s, Target *t) {
  lua_Integer i, n = (lua_Integer)lua_rawlen(L, t->commands);
  if (n == 0) {
    put(L, P_SCRATCH, "\x80", 1);  /* {}: the codec writes an empty table as a map */
    return;
  }
  put_header(L, P_SCRATCH, 0x90, 0xdc, (size_t)n);
  for (i = 0; i < n; i++) {
    size_t len;
    const char *env = staged_envelope(L, s, t, i, &len);
    const unsigned char *cmd = (const unsigned char *)env + sizeof ENVELOPE_HEAD - 1, *after;
    int deepest = 0;
    if (t->noted >= 0 && s->command_len[t->noted + i] + 4 <= CODEC_MAX_DEPTH) {
      put(L, P_SCRATCH, cmd, s->command_len[t->noted + i]);  /* too short to nest too deep */
      continue;
    }
    after = skip_value(cmd, (const unsigned char *)env + len, 0, &deepest);
    if (after == NULL || deepest + 4 > CODEC_MAX_DEPTH)  /* record, flows, entry, commands */
      luaL_error(L, "procman.engine: commands nested too deep for the record");
    put(L, P_SCRATCH, cmd, (size_t)(after - cmd));
  }
}

/* A committed target's entry in the record's flows (keys in codec order). */
static void put_entry(lua_State *L, Step *s, Target *t) {
  lua_Integer version;
  int pinned;
  lua_rawgeti(L, t->route, R_VERSION);
  version = lua_tointeger(L, -1);
  lua_pop(L, 1);
  pinned = t->is_new && version != 1;
  /* a map of 4 to 6 keys (a fixmap), "commands" first */
  put(L, P_SCRATCH, pinned ? (t->done ? "\x86\xa8" "commands" : "\x85\xa8" "commands")
                : (t->done ? "\x85\xa8" "commands" : "\x84\xa8" "commands"), 10);
  put_commands(L, s, t);
  if (t->done)
    put(L, P_SCRATCH, "\xa4" "done" "\xc3", 6);
  put(L, P_SCRATCH, "\xa4" "flow", 5);
  put_flow(L, P_SCRATCH, t);
  put(L, P_SCRATCH, "\xa6" "status", 7);
  put_scalar(L, P_SCRATCH, t->status);  /* a string: pm_settled checked it */
  put(L, P_SCRATCH, "\xa8" "workflow", 9);
  put_name(L, P_SCRATCH, t);
  if (pinned) {
    put_key(L, P_SCRATCH, "workflow_version");
    put_integer(L, P_SCRATCH, version);
  }
}

/* The record { event, flows, seq } into the scratch buffer. */
static void encode_record(lua_State *L, Step *s, int committed, lua_Integer seq) {
  int k;
  reset_scratch(L);
  put(L, P_SCRATCH, "\x83\xa5" "event", 7);  /* { event, flows, seq } */
  put_event(L, s);
  put(L, P_SCRATCH, "\xa5" "flows", 6);
  put_header(L, P_SCRATCH, 0x90, 0xdc, (size_t)committed);
  for (k = 0; k < s->n; k++)
    if (s->t[k].committed)
      put_entry(L, s, &s->t[k]);
  put(L, P_SCRATCH, "\xa3" "seq", 4);
  put_integer(L, P_SCRATCH, seq);
}

/* ===================================================================
** Log and settle
** =================================================================== */

/*
** The log port: hand the record in the scratch buffer to the router's
** journal (none: a router in memory keeps no log).  1, or 0 with the
** journal's message pushed.
*/
static int log_record(lua_State *L) {
  if (get_key(L, P_KEYS, P_ROUTER, K_JOURNAL) == LUA_TUSERDATA) {
    const Buffer *b = buffer_at(L, P_SCRATCH);
    int journal = lua_gettop(L), known, ok;
    uv(L, P_ENGINE, UV_JOURNAL);  /* the same as last time: a procman.journal */
    known = lua_rawequal(L, journal, -1);
    lua_pop(L, 1);
    ok = known ? journal_lua_append_known(L, journal, RECORD_EVENT, b->data, b->len)
               : journal_lua_append_at(L, journal, RECORD_EVENT, b->data, b->len);
    if (!ok) {
      lua_replace(L, -2);  /* the message */
      return 0;
    }
    if (!known) {  /* (compaction, recovery replace the router's journal) */
      lua_pushvalue(L, journal);
      lua_setiuservalue(L, P_ENGINE, UV_JOURNAL);
    }
  }
  lua_pop(L, 1);
  return 1;
}

/* Commit a target's staged envelopes: they are pending in the outbox
** (procman.outbox's push). */
static void emit(lua_State *L, Step *s, Target *t) {
  lua_Integer i, n = (lua_Integer)lua_rawlen(L, t->commands);
  for (i = 0; i < n; i++) {
    int id = t->envelopes + 3 * (int)i;
    outbox_commit(L, s->box, (size_t)lua_tointeger(L, id + 1), (size_t)lua_tointeger(L, id + 2), id);
  }
}

/* Add 'delta' to the integer t[K] of the table at 't' (see get_key). */
static void count_field(lua_State *L, int t, int k, lua_Integer delta) {
  lua_Integer n;
  get_key(L, P_KEYS, t, k);
  n = lua_tointeger(L, -1);
  lua_pop(L, 1);
  push_key(L, P_KEYS, k);
  lua_pushinteger(L, n + delta);
  lua_rawset(L, t);
}

/*
** A flow is done (procman.fold's complete, for the flows the step takes:
** neither parked nor pinned to an older version): it leaves the live set
** and is remembered with its final status and the ids it handled, as the
** codec's bytes for them (core.encoded_event_ids: no table of ids).  One
** with timers goes through the router's complete (the schedule drops them).
** The record is logged: the scratch buffer is free.
*/
static void complete(lua_State *L, Target *t) {
  size_t start;
  int entry;
  if (route_has(L, t->route, R_TIMERS, t->id)) {
    uv(L, P_ENGINE, UV_COMPLETE);
    lua_pushvalue(L, t->name);
    lua_pushvalue(L, t->id);
    lua_pushvalue(L, t->pm);
    lua_call(L, 3, 0);
    return;
  }
  lua_createtable(L, 0, 2);  /* { status = s, ids = bytes (none: nil) } */
  entry = lua_gettop(L);
  push_key(L, P_KEYS, K_STATUS);
  lua_pushvalue(L, t->status);
  lua_rawset(L, entry);
  reset_scratch(L);
  if (pm_encode_event_ids(L, t->pm, P_SCRATCH, &start) > 0) {
    const Buffer *b = buffer_at(L, P_SCRATCH);
    push_key(L, P_KEYS, K_IDS);
    lua_pushlstring(L, b->data + start, b->len - start);
    lua_rawset(L, entry);
  }
  lua_rawgeti(L, t->route, R_FINISHED);
  lua_pushvalue(L, t->id);
  lua_pushvalue(L, entry);
  lua_rawset(L, -3);
  lua_rawgeti(L, t->route, R_LIVE);  /* after the last allocation: it leaves */
  lua_pushvalue(L, t->id);
  lua_pushnil(L);
  lua_rawset(L, -3);
  count_field(L, P_ROUTER, K_FINISHED_COUNT, 1);
  uv(L, P_ENGINE, UV_FINISHED_OF);
  raw_get(L, -1, t->name);
  lua_pushvalue(L, t->name);
  lua_pushinteger(L, lua_tointeger(L, -2) + 1);
  lua_rawset(L, -4);
  lua_settop(L, entry - 1);
}

/* After the log took the record: flows, outbox, completion (procman.fold's
** settle, for this kind of event). */
static void settle(lua_State *L, Step *s) {
  int k;
  for (k = 0; k < s->n; k++) {
    Target *t = &s->t[k];
    if (!t->committed)
      continue;
    if (t->is_new) {
      lua_rawgeti(L, t->route, R_LIVE);
      lua_pushvalue(L, t->id);
      lua_pushvalue(L, t->pm);
      lua_rawset(L, -3);
      lua_pop(L, 1);
    }
    emit(L, s, t);
  }
  for (k = 0; k < s->n; k++)
    if (s->t[k].committed && s->t[k].done)
      complete(L, &s->t[k]);
}

/* ===================================================================
** step(event)
** =================================================================== */

/* Is the router in a state the engine covers: open, without hooks (they
** report each stage)?  And is the event's type a non-empty string?  Else
** r:handle's own checks say what is wrong. */
static int covered(lua_State *L) {
  int open;
  if (lua_type(L, P_TYPE) != LUA_TSTRING || lua_rawlen(L, P_TYPE) == 0)
    return 0;
  open = get_key(L, P_KEYS, P_ROUTER, K_HOOKS) == LUA_TNIL &&
         get_key(L, P_KEYS, P_ROUTER, K_CLOSED) == LUA_TBOOLEAN && !lua_toboolean(L, -1);
  lua_settop(L, P_FIRST - 1);
  return open;
}

/* The table of envelopes the step returns, at P_OUT, made once the
** handlers ran: sized for the commands of the flows that committed.  With
** commands, the outbox and its buffer are pushed, ready to stage their
** envelopes (s->box, s->staged: most events emit nothing, and then the
** outbox is not read). */
static void make_out(lua_State *L, Step *s) {
  size_t n = 0;
  int k;
  for (k = 0; k < s->n; k++)
    if (s->t[k].committed)
      n += lua_rawlen(L, s->t[k].commands);
  lua_createtable(L, n < 1024 ? (int)n : 1024, 0);
  lua_replace(L, P_OUT);
  s->box = s->staged = 0;
  if (n == 0)
    return;
  uv(L, P_ENGINE, UV_OUTBOX);
  s->box = lua_gettop(L);
  outbox_hold(L, s->box, 1);  /* until engine_step's end */
  outbox_stage(L, s->box);
  s->staged = lua_gettop(L);
  s->first = s->staged + 1;  /* encode_envelopes pushes them from here */
}

/* The step is taken back after staging: the ids it staged (strings from
** s->first up; other strings there are not in the index) leave the
** outbox's index, where outbox_will_index put them. */
static void unindex_staged(lua_State *L, Step *s) {
  int i, top = lua_gettop(L);
  if (s->box == 0)
    return;
  for (i = s->first; i <= top; i++)
    if (lua_type(L, i) == LUA_TSTRING)
      outbox_unindex(L, s->box, i);
}

/* Run, encode, log: STEP_* (the message of a failed log pushed). */
static int prepare(lua_State *L, Step *s, lua_Integer *seq, int *committed) {
  int k;
  for (k = 0; k < s->n; k++)
    if (!run_one(L, s, k))
      return STEP_NOT_MINE;
  make_out(L, s);
  for (k = 0; k < s->n; k++) {
    if (!s->t[k].committed)
      continue;
    ++*committed;
    if (!encode_envelopes(L, s, &s->t[k])) {
      unindex_staged(L, s);
      return STEP_NOT_MINE;
    }
  }
  if (*committed == 0)
    return STEP_DONE;  /* a redelivery everywhere: no record */
  get_key(L, P_KEYS, P_ROUTER, K_SEQ);
  *seq = lua_tointeger(L, -1) + 1;
  lua_pop(L, 1);
  /* also without a journal: the record is what says the event and the
  ** commands are data (nested within it, for instance) */
  encode_record(L, s, *committed, *seq);
  if (log_record(L))
    return STEP_DONE;
  unindex_staged(L, s);
  return STEP_LOG_FAILED;
}

/* (engine, event, step) -> envelopes | message: the protected part. */
static int protected_step(lua_State *L) {
  Step *s = (Step *)lua_touserdata(L, P_STEP);
  lua_Integer seq = 0;
  int committed = 0;
  /* nothing here allocates */
  uv(L, P_ENGINE, UV_KEYS);                              /* P_KEYS */
  uv(L, P_ENGINE, UV_PATCHES);                           /* P_PATCHES */
  uv(L, P_ENGINE, UV_LIVE_CTX);                          /* P_CTX */
  uv(L, P_ENGINE, UV_SCRATCH);                           /* P_SCRATCH */
  s->scratch = buffer_at(L, P_SCRATCH);
  lua_pushnil(L);                                        /* P_OUT: see make_out */
  /* from a handler (of any router), r:handle refuses the event: the step
  ** must not even clear the context the handler runs in (see engine_step) */
  get_key(L, P_KEYS, P_PATCHES, K_CONTEXT);
  if (lua_toboolean(L, -1))
    return 0;
  s->outside = 1;
  lua_pop(L, 1);
  get_key(L, P_KEYS, P_EVENT, K_EVENT_TYPE);             /* P_TYPE */
  uv(L, P_ENGINE, UV_ROUTER);                            /* P_ROUTER */
  if (!covered(L) || !route(L, s))
    return 0;
  s->result = prepare(L, s, &seq, &committed);
  if (s->result != STEP_DONE)
    return s->result == STEP_LOG_FAILED ? 1 : 0;
  if (committed == 0) {  /* a redelivery everywhere: no record, {} */
    lua_pushvalue(L, P_OUT);
    return 1;
  }
  s->journaled = 1;  /* the log has it: the router must follow (settle) */
  push_key(L, P_KEYS, K_SEQ);
  lua_pushinteger(L, seq);
  lua_rawset(L, P_ROUTER);  /* an existing key: no allocation */
  settle(L, s);
  if (buffer_at(L, P_SCRATCH) != s->scratch && buffer_at(L, P_SCRATCH)->cap <= SCRATCH_KEEP) {
    lua_pushvalue(L, P_SCRATCH);
    lua_setiuservalue(L, P_ENGINE, UV_SCRATCH);  /* it grew */
  }
  lua_pushvalue(L, P_OUT);
  return 1;
}

/* Take back every flow the step ran, newest first (the router's undo),
** and empty the targets' slots. */
static void undo_targets(lua_State *L, int engine, Step *s) {
  int k, targets;
  uv(L, engine, UV_TARGETS);
  targets = lua_gettop(L);
  for (k = s->n - 1; k >= 0; k--) {
    if (lua_rawgeti(L, targets, k + 1) == LUA_TUSERDATA && version_of(L, -1) > s->before[k]) {
      int pm = lua_gettop(L);
      uv(L, engine, UV_UNDO_CTX);  /* pm.c replays the history: patched() as it was */
      set_context(L, engine, pm);
      uv(L, engine, UV_UNDO);
      lua_pushvalue(L, pm);
      lua_call(L, 1, 0);
      clear_context(L, engine);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

static void clear_targets(lua_State *L, int engine, Step *s) {
  int k;
  uv(L, engine, UV_TARGETS);
  for (k = 0; k < s->n; k++) {
    lua_pushboolean(L, 0);
    lua_rawseti(L, -2, k + 1);
  }
  lua_pop(L, 1);
}

/* The engine at index 1: a method's closure has the metatable as its
** upvalue (one comparison, not luaL_checkudata's lookup by name). */
static Engine *to_engine(lua_State *L) {
  int same = lua_getmetatable(L, 1) && lua_rawequal(L, -1, lua_upvalueindex(1));
  if (!same)
    luaL_typeerror(L, 1, ENGINE_TYPENAME);
  lua_pop(L, 1);
  return (Engine *)lua_touserdata(L, 1);
}

/* engine:step(event) -> see the top of this file. */
static int engine_step(lua_State *L) {
  Engine *e = to_engine(L);
  Step s;
  int status;
  if (lua_type(L, 2) != LUA_TTABLE || e->busy) {
    lua_pushboolean(L, 0);  /* r:handle says what is wrong */
    return 1;
  }
  lua_settop(L, 2);
  s.result = s.journaled = s.n = s.noted = s.outside = 0;  /* each target: when routed */
  s.out = 0;
  lua_pushcfunction(L, protected_step);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  lua_pushlightuserdata(L, &s);
  e->busy = 1;
  status = lua_pcall(L, 3, 1, 0);
  e->busy = 0;
  lua_getiuservalue(L, 1, UV_OUTBOX);  /* the outbox's methods work again */
  outbox_hold(L, lua_gettop(L), 0);
  lua_pop(L, 1);
  if (status != LUA_OK && s.outside)
    clear_context(L, 1);  /* a handler raised: the step clears it after each one */
  if (s.journaled) {
    clear_targets(L, 1, &s);
    if (status == LUA_OK)
      return 1;
    lua_pushnil(L);
    lua_insert(L, -2);
    lua_pushboolean(L, 1);
    return 3;  /* nil, error, true: the router closes */
  }
  undo_targets(L, 1, &s);
  clear_targets(L, 1, &s);
  if (status == LUA_OK && s.result == STEP_DONE)
    return 1;  /* no flow committed: nothing to log */
  if (status == LUA_OK && s.result == STEP_LOG_FAILED) {
    lua_pushfstring(L, "procman.router: %s", lua_tostring(L, -1));
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushboolean(L, 0);  /* not mine, or failed before the log: the Lua path says why */
  return 1;
}

/* ===================================================================
** Construction and registration
** =================================================================== */

/* Set user value 'n' of the engine at the top from field 'key' of the
** parts at index 1, which must have type 'type'. */
static void take_part(lua_State *L, const char *key, int type, int n) {
  if (lua_getfield(L, 1, key) != type)
    luaL_error(L, "core.engine: parts.%s must be a %s, got %s", key, lua_typename(L, type),
               luaL_typename(L, -1));
  lua_setiuservalue(L, -2, n);
}

/* Push the array of field names (K_*). */
static void make_keys(lua_State *L) {
  int k;
  lua_createtable(L, K_COUNT, 0);
  for (k = 1; k <= K_COUNT; k++) {
    lua_pushstring(L, KEYS[k - 1]);
    lua_rawseti(L, -2, k);
  }
}

static void take_method(lua_State *L, const char *name, int n) {
  luaL_getmetatable(L, PM_TYPENAME);
  lua_getfield(L, -1, "__index");
  lua_getfield(L, -1, name);
  lua_setiuservalue(L, -4, n);
  lua_pop(L, 2);
}

/* Set route field 'field' (at the top) from by_name[name], a table. */
static void route_table(lua_State *L, int parts, const char *key, int name, int field) {
  if (lua_getfield(L, parts, key) != LUA_TTABLE)
    luaL_error(L, "core.engine: parts.%s must be a table, got %s", key, luaL_typename(L, -1));
  lua_pushvalue(L, name);
  if (lua_rawget(L, -2) != LUA_TTABLE)
    luaL_error(L, "core.engine: parts.%s has no table for workflow %s", key, lua_tostring(L, name));
  lua_rawseti(L, -3, field);
  lua_pop(L, 1);
}

/* Set route field 'field' of the route at the top to spec[key] when it
** has type 'type', else to false; whether it had. */
static int route_field(lua_State *L, int spec, const char *key, int field, int type) {
  int found = lua_getfield(L, spec, key) == type;
  if (!found) {
    lua_pop(L, 1);
    lua_pushboolean(L, 0);
  }
  lua_rawseti(L, -2, field);
  return found;
}

/* The routes (see R_*) of the specs in parts.specs, pushed as an array. */
static void make_routes(lua_State *L, int parts) {
  lua_Integer i, n;
  int specs;
  if (lua_getfield(L, parts, "specs") != LUA_TTABLE)
    luaL_error(L, "core.engine: parts.specs must be a table, got %s", luaL_typename(L, -1));
  specs = lua_gettop(L);
  n = (lua_Integer)lua_rawlen(L, specs);
  lua_createtable(L, (int)n, 0);
  for (i = 1; i <= n; i++) {
    int spec, name, route;
    lua_rawgeti(L, specs, i);
    spec = lua_gettop(L);
    lua_getfield(L, spec, "name");
    name = spec + 1;
    if (lua_type(L, name) != LUA_TSTRING)
      luaL_error(L, "core.engine: specs[%d].name must be a string", (int)i);
    lua_createtable(L, R_COUNT, 0);
    route = name + 1;
    lua_pushvalue(L, spec);
    lua_rawseti(L, route, R_SPEC);
    lua_pushvalue(L, name);
    lua_rawseti(L, route, R_NAME);
    if (!route_field(L, spec, "version", R_VERSION, LUA_TNUMBER))
      luaL_error(L, "core.engine: specs[%d].version must be an integer", (int)i);
    route_field(L, spec, "correlate", R_CORRELATE, LUA_TSTRING);  /* false: a function */
    if (!route_field(L, spec, "on", R_ON, LUA_TTABLE))
      luaL_error(L, "core.engine: specs[%d].on must be a table", (int)i);
    route_field(L, spec, "starts_set", R_STARTS, LUA_TTABLE);
    lua_getfield(L, spec, "status");
    lua_rawseti(L, route, R_STATUS_FN);
    lua_getfield(L, spec, "done");
    lua_rawseti(L, route, R_DONE_FN);
    pm_push_flow_metatable(L, spec);
    lua_rawseti(L, route, R_FLOW_MT);
    route_table(L, parts, "types_of", name, R_TYPES);
    route_table(L, parts, "live", name, R_LIVE);
    route_table(L, parts, "finished", name, R_FINISHED);
    route_table(L, parts, "parked_of", name, R_PARKED);
    route_table(L, parts, "older", name, R_OLDER);
    route_table(L, parts, "timers", name, R_TIMERS);
    buffer_new(L, 64);
    codec_encode(L, name, lua_gettop(L), "name");  /* a string: data */
    lua_pushlstring(L, buffer_at(L, -1)->data, buffer_at(L, -1)->len);
    lua_rawseti(L, route, R_NAME_BYTES);
    lua_pop(L, 1);
    lua_rawseti(L, specs + 1, i);
    lua_settop(L, specs + 1);
  }
  lua_remove(L, specs);
}

/*
** core.engine(parts) -> procman.engine.  parts: { router, specs, live,
** finished, finished_of, parked_of, older, types_of, timers (the
** schedule's by_flow), outbox, patches, undo, complete } (the
** router's own tables; see lua/procman/router.lua).
*/
int engine_new(lua_State *L) {
  static const struct { const char *key; int type, n; } parts[] = {
    { "router", LUA_TTABLE, UV_ROUTER }, { "finished_of", LUA_TTABLE, UV_FINISHED_OF },
    { "outbox", LUA_TUSERDATA, UV_OUTBOX }, { "patches", LUA_TTABLE, UV_PATCHES },
    { "undo", LUA_TFUNCTION, UV_UNDO }, { "complete", LUA_TFUNCTION, UV_COMPLETE },
  };
  Engine *e;
  size_t i;
  int k;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  e = (Engine *)lua_newuserdatauv(L, sizeof(Engine), UV_COUNT);
  e->busy = 0;
  luaL_setmetatable(L, ENGINE_TYPENAME);
  for (i = 0; i < sizeof parts / sizeof parts[0]; i++)
    take_part(L, parts[i].key, parts[i].type, parts[i].n);
  make_routes(L, 1);
  lua_setiuservalue(L, 2, UV_ROUTES);
  lua_getiuservalue(L, 2, UV_PATCHES);
  lua_getfield(L, -1, "LIVE");
  lua_setiuservalue(L, 2, UV_LIVE_CTX);
  lua_getfield(L, -1, "UNDO");
  lua_setiuservalue(L, 2, UV_UNDO_CTX);
  lua_pop(L, 1);
  take_method(L, "handle", UV_HANDLE);
  make_keys(L);
  lua_setiuservalue(L, 2, UV_KEYS);
  buffer_new(L, 256);
  lua_setiuservalue(L, 2, UV_SCRATCH);
  lua_createtable(L, MAX_TARGETS, 0);
  for (k = 1; k <= MAX_TARGETS; k++) {
    lua_pushboolean(L, 0);
    lua_rawseti(L, -2, k);
  }
  lua_setiuservalue(L, 2, UV_TARGETS);
  lua_createtable(L, 1, 0);  /* { false } */
  lua_pushboolean(L, 0);
  lua_rawseti(L, -2, 1);
  lua_setiuservalue(L, 2, UV_WRAP);
  lua_pushboolean(L, 0);
  lua_setiuservalue(L, 2, UV_JOURNAL);
  return 1;
}

/*
** engine:ack_record(id) -> the journal record of an ack, { id = id }, as
** core.encode writes it: a map of one key, then the id through the codec
** (without a table to build, or keys to sort, for each command acked).
*/
static int engine_ack_record(lua_State *L) {
  Engine *e = to_engine(L);
  Buffer *b;
  luaL_checktype(L, 2, LUA_TSTRING);
  if (e->busy)
    return luaL_error(L, "procman.engine: ack_record during a step");
  lua_settop(L, 2);
  lua_getiuservalue(L, 1, UV_SCRATCH);  /* 3 */
  b = buffer_at(L, 3);
  b->len = 0;
  if (!outbox_ack_record(L, 2, 3))
    return lua_error(L);
  b = buffer_at(L, 3);
  lua_pushlstring(L, b->data, b->len);
  if (b->cap <= SCRATCH_KEEP) {
    lua_pushvalue(L, 3);
    lua_setiuservalue(L, 1, UV_SCRATCH);  /* it may have grown */
  }
  return 1;
}

static const luaL_Reg engine_methods[] = {
  { "step", engine_step },
  { "ack_record", engine_ack_record },
  { NULL, NULL }
};

void engine_register(lua_State *L) {
  luaL_newmetatable(L, ENGINE_TYPENAME);
  luaL_newlibtable(L, engine_methods);
  lua_pushvalue(L, -2);
  luaL_setfuncs(L, engine_methods, 1);  /* each method's upvalue: the metatable */
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}
