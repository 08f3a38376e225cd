/*
** procman.c - the procman.core module: the process-manager userdata and
** the codec, for lua/procman/init.lua to wrap.
*/
#define _POSIX_C_SOURCE 200809L
#include <time.h>

#include "lauxlib.h"
#include "budget.h"
#include "buffer.h"
#include "codec.h"
#include "engine.h"
#include "journal_lua.h"
#include "outbox.h"
#include "fold_scan.h"
#include "pattern_lua.h"
#include "pm.h"

#define PROCMAN_CORE_VERSION "0.1.0"

LUAMOD_API int luaopen_procman_core(lua_State *L);

/* Scratch buffers larger than this are not kept between calls. */
#define SCRATCH_KEEP (64 * 1024)

/*
** Push the scratch buffer of encode/copy (upvalue 1), emptied, taking it
** out of the upvalue meanwhile: a nested call (from a finalizer run by the
** garbage collector while encoding) finds none and makes its own.  Reusing
** it saves growing a fresh buffer 0, 64, 128, 256... for every call.
*/
static void push_scratch(lua_State *L) {
  if (lua_type(L, lua_upvalueindex(1)) != LUA_TUSERDATA) {
    buffer_new(L, 256);
    return;
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  buffer_at(L, -1)->len = 0;
  lua_pushnil(L);
  lua_replace(L, lua_upvalueindex(1));
}

/* Give the scratch buffer at 'idx' back, unless it grew too large. */
static void keep_scratch(lua_State *L, int idx) {
  if (buffer_at(L, idx)->cap > SCRATCH_KEEP)
    return;
  lua_pushvalue(L, idx);
  lua_replace(L, lua_upvalueindex(1));
}

/*
** Encode argument 1 into the scratch buffer (index 2); with 'copy', also
** push the copy (index 3).  Errors name the Lua function, 'who'.
*/
static void encode_argument(lua_State *L, const char *who, int copy) {
  int ok;
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  push_scratch(L);
  ok = copy ? codec_encode_copy(L, 1, 2, "value") : codec_encode(L, 1, 2, "value");
  if (!ok)
    luaL_error(L, "%s: %s", who, lua_tostring(L, -1));
}

/* procman.encode(v) -> the MessagePack bytes of v. */
static int core_encode(lua_State *L) {
  encode_argument(L, "procman.encode", 0);
  lua_pushlstring(L, buffer_at(L, 2)->data, buffer_at(L, 2)->len);
  keep_scratch(L, 2);  /* after the copy: the string is made */
  return 1;
}

/* procman.copy(v) -> a deep copy of the data v: decode(encode(v)), faster
** (and without the bytes). */
static int core_copy(lua_State *L) {
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  if (!codec_copy(L, 1, "value"))
    luaL_error(L, "procman.copy: %s", lua_tostring(L, -1));
  return 1;
}

/* core.encode_copy(v) -> the bytes of v and a copy of v, in one pass. */
static int core_encode_copy(lua_State *L) {
  encode_argument(L, "procman.encode", 1);
  lua_pushlstring(L, buffer_at(L, 2)->data, buffer_at(L, 2)->len);
  lua_insert(L, 3);
  keep_scratch(L, 2);
  return 2;
}

/* The end of a decode of all of s: its value, or its error. */
static int decoded(lua_State *L, int ok, size_t pos, size_t len) {
  if (!ok)
    return luaL_error(L, "procman.decode: %s", lua_tostring(L, -1));
  if (pos != len)
    return luaL_error(L, "procman.decode: %I bytes left over after the value "
                      "that ends at byte %I", (lua_Integer)(len - pos),
                      (lua_Integer)pos);
  return 1;
}

/* procman.decode(s) -> the one value that s encodes. */
static int core_decode(lua_State *L) {
  size_t len, pos = 0;
  const char *s = luaL_checklstring(L, 1, &len);
  int ok = codec_decode(L, s, len, &pos);
  return decoded(L, ok, pos, len);
}


/* core.decode_envelope(s) -> exactly procman.decode(s), faster for an
** envelope { command, flow, id, workflow } (the outbox decodes one per
** command it hands out): its keys are the upvalues' strings. */
static int core_decode_envelope(lua_State *L) {
  size_t len, pos = 0;
  const char *s = luaL_checklstring(L, 1, &len);
  CodecShape shape;
  int i, ok;
  lua_settop(L, 1);
  luaL_checkstack(L, OUTBOX_ENVELOPE_KEYS, "procman.decode");
  for (i = 1; i <= OUTBOX_ENVELOPE_KEYS; i++)
    lua_pushvalue(L, lua_upvalueindex(i));
  codec_shape_init(L, &shape, 2, OUTBOX_ENVELOPE_KEYS);
  ok = codec_decode_shaped(L, s, len, &pos, &shape);
  return decoded(L, ok, pos, len);
}

/* core.budget_call(budget, fn, ...) -> true, results | false, error: like
** pcall, with at most 'budget' instructions (<= 0: no limit). */
static int core_budget_call(lua_State *L) {
  lua_Integer budget = luaL_checkinteger(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_pushboolean(L, 1);
  lua_replace(L, 1);  /* the 'true' of success */
  if (budget_pcall(L, lua_gettop(L) - 2, LUA_MULTRET, budget) != LUA_OK) {
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  return lua_gettop(L);
}

/* core.monotonic() -> seconds on a clock that never goes back: for
** measuring durations (the router's hooks), never for handlers. */
static int core_monotonic(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
  return 1;
}

static const luaL_Reg core_functions[] = {
  { "new", pm_new },
  { "engine", engine_new },
  { "decode", core_decode },
  { "journal_open", journal_lua_open },
  { "journal_create", journal_lua_create },
  { "journal_replace", journal_lua_replace },
  { "journal_scan", journal_lua_scan },
  { "fold_scan", fold_scan_lua },
#ifdef PROCMAN_FAULTS  /* test builds only: see faults.h */
  { "journal_faults", journal_lua_faults },
#endif
  { "budget_call", core_budget_call },
  { "guard", budget_guard },
  { "budget_charge", budget_lua_charge },
  { "budget_left", budget_lua_left },
  { "set_sandbox_string_methods", budget_lua_set_string_methods },
  { "is_guard", budget_lua_is_guard },
  { "pattern_find", pattern_lua_find },
  { "pattern_match", pattern_lua_match },
  { "pattern_gmatch", pattern_lua_gmatch },
  { "pattern_gsub", pattern_lua_gsub },
  { "monotonic", core_monotonic },
  { NULL, NULL }
};

LUAMOD_API int luaopen_procman_core(lua_State *L) {
  int i;
  journal_lua_register(L);
  fold_scan_register(L);
  engine_register(L);
  luaL_newlib(L, core_functions);
  outbox_register(L);
  lua_pushnil(L);  /* the scratch buffer, made at the first call */
  lua_pushcclosure(L, core_encode, 1);
  lua_setfield(L, -2, "encode");
  lua_pushnil(L);
  lua_pushcclosure(L, core_copy, 1);
  lua_setfield(L, -2, "copy");
  lua_pushnil(L);
  lua_pushcclosure(L, core_encode_copy, 1);
  lua_setfield(L, -2, "encode_copy");
  for (i = 0; i < OUTBOX_ENVELOPE_KEYS; i++)
    lua_pushstring(L, outbox_envelope_keys[i]);
  lua_pushcclosure(L, core_decode_envelope, OUTBOX_ENVELOPE_KEYS);
  lua_setfield(L, -2, "decode_envelope");
  pm_register(L, -1);
  lua_pushinteger(L, CODEC_MAX_DEPTH);
  lua_setfield(L, -2, "max_depth");
  lua_createtable(L, 0, 2);  /* core.guard's flags */
  lua_pushinteger(L, BUDGET_SANDBOX);
  lua_setfield(L, -2, "sandbox");
  lua_pushinteger(L, BUDGET_COPY);
  lua_setfield(L, -2, "copy");
  lua_setfield(L, -2, "guard_flags");
  lua_pushinteger(L, BUDGET_BYTES_PER_UNIT);
  lua_setfield(L, -2, "bytes_per_unit");
  lua_pushliteral(L, PROCMAN_CORE_VERSION);
  lua_setfield(L, -2, "version");
  return 1;
}
