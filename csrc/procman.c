/*
** procman.c - the procman.core module: the process-manager userdata and
** the codec, for lua/procman/init.lua to wrap.
*/
#define _POSIX_C_SOURCE 200809L
#include <unistd.h>

#include "lauxlib.h"
#include "budget.h"
#include "buffer.h"
#include "codec.h"
#include "interrupt.h"
#include "journal_lua.h"
#include "line_reader.h"
#include "pattern_lua.h"
#include "pm.h"

#define PROCMAN_CORE_VERSION "0.1.0"

LUAMOD_API int luaopen_procman_core(lua_State *L);

/*
** Encode argument 1 into a new buffer (index 2); with 'copy', also push
** the copy (index 3).  Errors name the Lua function, 'who'.
*/
static void encode_argument(lua_State *L, const char *who, int copy) {
  int ok;
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  buffer_new(L, 0);
  ok = copy ? codec_encode_copy(L, 1, 2, "value") : codec_encode(L, 1, 2, "value");
  if (!ok)
    luaL_error(L, "%s: %s", who, lua_tostring(L, -1));
}

/* procman.encode(v) -> the MessagePack bytes of v. */
static int core_encode(lua_State *L) {
  encode_argument(L, "procman.encode", 0);
  lua_pushlstring(L, buffer_at(L, 2)->data, buffer_at(L, 2)->len);
  return 1;
}

/* procman.copy(v) -> a deep copy of the data v: decode(encode(v)), faster. */
static int core_copy(lua_State *L) {
  encode_argument(L, "procman.copy", 1);
  return 1;
}

/* procman.decode(s) -> the one value that s encodes. */
static int core_decode(lua_State *L) {
  size_t len, pos = 0;
  const char *s = luaL_checklstring(L, 1, &len);
  if (!codec_decode(L, s, len, &pos))
    return luaL_error(L, "procman.decode: %s", lua_tostring(L, -1));
  if (pos != len)
    return luaL_error(L, "procman.decode: %I bytes left over after the value "
                      "that ends at byte %I", (lua_Integer)(len - pos),
                      (lua_Integer)pos);
  return 1;
}

/* core.is_terminal(fd) -> is that file descriptor (0, 1, 2) a terminal? */
static int core_is_terminal(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  luaL_argcheck(L, fd >= 0 && fd <= 2, 1, "0, 1 or 2 expected");
  lua_pushboolean(L, isatty((int)fd));
  return 1;
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

static const luaL_Reg core_functions[] = {
  { "new", pm_new },
  { "encode", core_encode },
  { "decode", core_decode },
  { "copy", core_copy },
  { "journal_open", journal_lua_open },
  { "journal_create", journal_lua_create },
  { "journal_replace", journal_lua_replace },
  { "journal_scan", journal_lua_scan },
  { "journal_faults", journal_lua_faults },
  { "interruptible", interrupt_call },
  { "is_terminal", core_is_terminal },
  { "line_reader", line_reader_new },
  { "budget_call", core_budget_call },
  { "guard", budget_guard },
  { "budget_charge", budget_lua_charge },
  { "budget_left", budget_lua_left },
  { "set_sandbox_string_methods", budget_lua_set_string_methods },
  { "pattern_find", pattern_lua_find },
  { "pattern_match", pattern_lua_match },
  { "pattern_gmatch", pattern_lua_gmatch },
  { "pattern_gsub", pattern_lua_gsub },
  { NULL, NULL }
};

LUAMOD_API int luaopen_procman_core(lua_State *L) {
  journal_lua_register(L);
  line_reader_register(L);
  luaL_newlib(L, core_functions);
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
