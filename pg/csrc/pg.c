/*
** pg.c - procman.pg.core: a small libpq binding for procman.pg.
**
**   local conn = core.connect(conninfo)          -- or nil, message
**   local rows, count = conn:exec(sql, ...)       -- or nil, message, sqlstate
**   conn:script(sql)                              -- several statements, no
**                                                 -- parameters: true | nil, message, sqlstate
**   conn:wait(seconds)                            -- true when a NOTIFY came
**                                                 -- (LISTEN first), false when
**                                                 -- the time passed | nil, message
**   core.sleep(seconds)                           -- a pause (reconnect backoff)
**   conn:alive()                                  -- false once the connection broke
**   conn:in_transaction()                         -- inside BEGIN ... COMMIT?
**   conn:close()                                  -- also __gc and __close
**
** Parameters are always sent as parameters ($1, $2, ...), never spliced
** into SQL: nil is NULL, booleans are true/false, integers as their digits,
** floats as "%.17g" (exact: a double survives the round trip through
** double precision), strings as text, and core.bytes(s) as the bytes of s
** (binary format, for bytea: keys and payloads go as they are, NUL and
** non-UTF-8 bytes included).  Any number of parameters (up to libpq's
** 65535) may be sent: set-based writes send a batch in one statement.  Rows come back as arrays of
** tables by column name, with int2/int4/int8 as integers, float4/float8 as numbers, booleans as
** booleans, bytea as raw bytes, NULL as nil, the rest as strings; 'count'
** is the number of rows a command affected.
*/
#define _POSIX_C_SOURCE 200809L  /* poll */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "lauxlib.h"

#define CONN_TYPENAME "procman.pg.connection"
#define BYTES_TYPENAME "procman.pg.bytes"
#define MAX_PARAMS 65535

/* Type OIDs (pg_type.h is a server header; these are stable). */
#define OID_BOOL 16
#define OID_BYTEA 17
#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23
#define OID_FLOAT4 700
#define OID_FLOAT8 701

LUAMOD_API int luaopen_procman_pg_core(lua_State *L);

typedef struct Conn {
  PGconn *pg;
} Conn;

static Conn *check_conn(lua_State *L) {
  Conn *c = (Conn *)luaL_checkudata(L, 1, CONN_TYPENAME);
  if (c->pg == NULL)
    luaL_error(L, "procman.pg: the connection is closed");
  return c;
}

static void ignore_notice(void *arg, const char *message) {
  (void)arg;
  (void)message;
}

/* core.connect(conninfo) -> connection | nil, message */
static int pg_connect(lua_State *L) {
  const char *info = luaL_checkstring(L, 1);
  Conn *c = (Conn *)lua_newuserdatauv(L, sizeof(Conn), 0);
  c->pg = NULL;
  luaL_setmetatable(L, CONN_TYPENAME);  /* from here on, __gc frees it */
  c->pg = PQconnectdb(info);
  if (c->pg == NULL) {
    lua_pushnil(L);
    lua_pushliteral(L, "procman.pg: out of memory connecting");
    return 2;
  }
  if (PQstatus(c->pg) != CONNECTION_OK) {
    lua_pushnil(L);
    lua_pushfstring(L, "procman.pg: cannot connect: %s", PQerrorMessage(c->pg));
    PQfinish(c->pg);
    c->pg = NULL;
    return 2;
  }
  PQsetNoticeProcessor(c->pg, ignore_notice, NULL);  /* no notices on stderr */
  return 1;
}

/* __gc, __close and close: safe twice. */
static int pg_close(lua_State *L) {
  Conn *c = (Conn *)luaL_checkudata(L, 1, CONN_TYPENAME);
  if (c->pg != NULL) {
    PQfinish(c->pg);
    c->pg = NULL;
  }
  return 0;
}

static int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Push the bytes of a bytea in PostgreSQL's hex output ("\x0a1b..."),
** decoded into Lua's memory (a memory error cannot leak anything). */
static void push_bytea(lua_State *L, const char *v, size_t len) {
  luaL_Buffer b;
  size_t i, n;
  char *out;
  if (len < 2 || v[0] != '\\' || v[1] != 'x')
    luaL_error(L, "procman.pg: bytea not in hex output (set bytea_output = 'hex')");
  n = (len - 2) / 2;
  out = luaL_buffinitsize(L, &b, n);
  for (i = 0; i < n; i++) {
    int hi = hex_digit(v[2 + 2 * i]), lo = hex_digit(v[3 + 2 * i]);
    if (hi < 0 || lo < 0)
      luaL_error(L, "procman.pg: a malformed bytea value");
    out[i] = (char)(hi * 16 + lo);
  }
  luaL_pushresultsize(&b, n);
}

/* Push one field of a result, converted by its column type. */
static void push_field(lua_State *L, PGresult *res, int row, int col) {
  const char *v;
  if (PQgetisnull(res, row, col)) {
    lua_pushnil(L);
    return;
  }
  v = PQgetvalue(res, row, col);
  switch (PQftype(res, col)) {
    case OID_BOOL:
      lua_pushboolean(L, v[0] == 't');
      break;
    case OID_INT2: case OID_INT4: case OID_INT8:
      lua_pushinteger(L, (lua_Integer)strtoll(v, NULL, 10));
      break;
    case OID_FLOAT4: case OID_FLOAT8:  /* shortest exact text since PostgreSQL 12 */
      lua_pushnumber(L, (lua_Number)strtod(v, NULL));
      break;
    case OID_BYTEA:
      push_bytea(L, v, (size_t)PQgetlength(res, row, col));
      break;
    default:
      lua_pushlstring(L, v, (size_t)PQgetlength(res, row, col));
  }
}

/* The rows of a result (at the top of the stack, a light userdata). */
static int push_rows(lua_State *L) {
  PGresult *res = (PGresult *)lua_touserdata(L, 1);
  int rows = PQntuples(res), cols = PQnfields(res), r, c;
  lua_createtable(L, rows, 0);
  for (r = 0; r < rows; r++) {
    lua_createtable(L, 0, cols);
    for (c = 0; c < cols; c++) {
      push_field(L, res, r, c);
      lua_setfield(L, -2, PQfname(res, c));
    }
    lua_rawseti(L, -2, r + 1);
  }
  return 1;
}

static int failure(lua_State *L, Conn *c, PGresult *res);

/* A number as text that PostgreSQL reads back to the same value: integers
** as digits, floats with 17 significant digits (Lua's tostring keeps 14,
** which rounds 1700000030.000049 to 1700000030). */
static void push_number_text(lua_State *L, int idx) {
  if (lua_isinteger(L, idx)) {
    lua_pushfstring(L, "%I", (LUAI_UACINT)lua_tointeger(L, idx));
  } else {
    char buf[64];
    lua_Number x = lua_tonumber(L, idx);
    if (x != x) snprintf(buf, sizeof buf, "NaN");
    else if (x == (lua_Number)HUGE_VAL) snprintf(buf, sizeof buf, "Infinity");
    else if (x == -(lua_Number)HUGE_VAL) snprintf(buf, sizeof buf, "-Infinity");
    else snprintf(buf, sizeof buf, "%.17g", (double)x);
    lua_pushstring(L, buf);
  }
}

/* conn:exec(sql, ...) -> rows, count | nil, message, sqlstate */
static int pg_exec(lua_State *L) {
  Conn *c = check_conn(L);
  const char *sql = luaL_checkstring(L, 2);
  int n = lua_gettop(L) - 2, i, status;
  const char **values;
  int *lengths, *formats;
  PGresult *res;
  ExecStatusType st;
  luaL_argcheck(L, n <= MAX_PARAMS, MAX_PARAMS + 3, "too many parameters");
  luaL_checkstack(L, 4, "too many parameters");
  /* the arrays live in a userdata above the parameters: an error frees them */
  values = (const char **)lua_newuserdatauv(L, (size_t)(n > 0 ? n : 1) * (sizeof *values + 2 * sizeof(int)), 0);
  lengths = (int *)(void *)(values + (n > 0 ? n : 1));
  formats = lengths + (n > 0 ? n : 1);
  for (i = 0; i < n; i++) {
    int idx = i + 3;
    size_t len = 0;
    formats[i] = 0;
    switch (lua_type(L, idx)) {
      case LUA_TNIL:
        values[i] = NULL;
        lengths[i] = 0;
        continue;
      case LUA_TBOOLEAN:
        values[i] = lua_toboolean(L, idx) ? "true" : "false";
        lengths[i] = 0;
        continue;
      case LUA_TNUMBER:
        push_number_text(L, idx);  /* as exact text, in place of the number */
        lua_replace(L, idx);
        values[i] = lua_tolstring(L, idx, &len);
        lengths[i] = (int)len;
        continue;
      case LUA_TSTRING:
        values[i] = lua_tolstring(L, idx, &len);
        lengths[i] = (int)len;
        continue;
      case LUA_TUSERDATA:
        if (luaL_testudata(L, idx, BYTES_TYPENAME) != NULL) {
          lua_getiuservalue(L, idx, 1);
          lua_replace(L, idx);  /* the string stays on the stack */
          values[i] = lua_tolstring(L, idx, &len);
          lengths[i] = (int)len;
          formats[i] = 1;  /* bytes as they are */
          continue;
        }
        /* fall through */
      default:
        return luaL_argerror(L, idx, "nil, boolean, number, string or core.bytes expected");
    }
  }
  res = PQexecParams(c->pg, sql, n, NULL, values, lengths, formats, 0);
  st = PQresultStatus(res);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
    return failure(L, c, res);
  /* convert under pcall so that a memory error cannot leak the result */
  lua_pushcfunction(L, push_rows);
  lua_pushlightuserdata(L, res);
  status = lua_pcall(L, 1, 1, 0);
  lua_pushinteger(L, (lua_Integer)strtoll(PQcmdTuples(res), NULL, 10));
  PQclear(res);
  if (status != LUA_OK) {
    lua_pop(L, 1);
    return lua_error(L);
  }
  return 2;
}

/* Push nil, message, sqlstate for a failed result (cleared first). */
static int failure(lua_State *L, Conn *c, PGresult *res) {
  char state[6] = "";
  const char *s = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
  if (s != NULL)
    strncpy(state, s, sizeof state - 1);
  PQclear(res);  /* before anything that may raise */
  lua_pushnil(L);
  lua_pushfstring(L, "procman.pg: %s", PQerrorMessage(c->pg));
  lua_pushstring(L, state);
  return 3;
}

/* conn:script(sql) -> true | nil, message, sqlstate: statements separated
** by ';', without parameters (migrations, BEGIN, COMMIT). */
static int pg_script(lua_State *L) {
  Conn *c = check_conn(L);
  PGresult *res = PQexec(c->pg, luaL_checkstring(L, 2));
  ExecStatusType st = PQresultStatus(res);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
    return failure(L, c, res);
  PQclear(res);
  lua_pushboolean(L, 1);
  return 1;
}

/* nil, message for a connection that broke (the server went away). */
static int lost(lua_State *L, Conn *c) {
  const char *why = PQerrorMessage(c->pg);
  lua_pushnil(L);
  lua_pushfstring(L, "procman.pg: the connection is lost: %s",
                  why != NULL && why[0] != '\0' ? why : "the server closed it");
  lua_pushliteral(L, "08006");  /* connection_failure */
  return 3;
}

/* conn:in_transaction() -> true inside BEGIN ... COMMIT (or a failed one). */
static int pg_in_transaction(lua_State *L) {
  Conn *c = check_conn(L);
  PGTransactionStatusType t = PQtransactionStatus(c->pg);
  lua_pushboolean(L, t == PQTRANS_INTRANS || t == PQTRANS_INERROR || t == PQTRANS_ACTIVE);
  return 1;
}

/* conn:alive() -> false once libpq saw the connection break. */
static int pg_alive(lua_State *L) {
  Conn *c = check_conn(L);
  lua_pushboolean(L, PQstatus(c->pg) == CONNECTION_OK);
  return 1;
}

/* Take every notification that arrived; whether there was one. */
static int drain_notifications(Conn *c) {
  PGnotify *n;
  int got = 0;
  while ((n = PQnotifies(c->pg)) != NULL) {
    got = 1;
    PQfreemem(n);
  }
  return got;
}

/*
** conn:wait(seconds) -> true when a notification arrived on a channel this
** connection LISTENs to (all that came are taken), false when 'seconds'
** passed without one; nil, message when the connection broke.  This is how
** an idle worker sleeps: woken by the NOTIFY of an append's commit, not by
** polling the table.
*/
static double monotonic_seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int pg_wait(lua_State *L) {
  Conn *c = check_conn(L);
  lua_Number seconds = luaL_checknumber(L, 2);
  double deadline;
  luaL_argcheck(L, seconds == seconds && seconds >= 0, 2, "seconds must be >= 0");
  deadline = monotonic_seconds() + (seconds > 86400 ? 86400 : (double)seconds);
  for (;;) {  /* readable without a notification (a server's last words): look again */
    struct pollfd p;
    double left;
    int ready;
    if (PQstatus(c->pg) == CONNECTION_BAD || PQsocket(c->pg) < 0)
      return lost(L, c);
    if (!PQconsumeInput(c->pg) || PQstatus(c->pg) == CONNECTION_BAD)
      return lost(L, c);
    if (drain_notifications(c)) {
      lua_pushboolean(L, 1);
      return 1;
    }
    left = deadline - monotonic_seconds();
    if (left <= 0)
      break;
    p.fd = PQsocket(c->pg);
    p.events = POLLIN;
    p.revents = 0;
    ready = poll(&p, 1, (int)(left * 1000.0) + 1);
    if (ready < 0 && errno != EINTR)
      return luaL_error(L, "procman.pg: cannot wait: %s", strerror(errno));
    if (ready == 0)
      break;
  }
  lua_pushboolean(L, 0);
  return 1;
}

/* core.sleep(seconds): a pause without a connection (reconnect backoff). */
static int pg_sleep(lua_State *L) {
  lua_Number seconds = luaL_checknumber(L, 1);
  luaL_argcheck(L, seconds == seconds && seconds >= 0, 1, "seconds must be >= 0");
  poll(NULL, 0, seconds > 86400 ? 86400000 : (int)(seconds * 1000.0));
  return 0;
}

/* core.bytes(s) -> a parameter sent as the raw bytes of s (for bytea). */
static int pg_bytes(lua_State *L) {
  luaL_checktype(L, 1, LUA_TSTRING);
  lua_newuserdatauv(L, 0, 1);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  luaL_setmetatable(L, BYTES_TYPENAME);
  return 1;
}

static const luaL_Reg conn_methods[] = {
  { "exec", pg_exec },
  { "script", pg_script },
  { "wait", pg_wait },
  { "alive", pg_alive },
  { "in_transaction", pg_in_transaction },
  { "close", pg_close },
  { NULL, NULL }
};

LUAMOD_API int luaopen_procman_pg_core(lua_State *L) {
  if (luaL_newmetatable(L, CONN_TYPENAME)) {
    lua_pushcfunction(L, pg_close);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "__gc");
    lua_setfield(L, -2, "__close");
    luaL_newlib(L, conn_methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  luaL_newmetatable(L, BYTES_TYPENAME);
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushcfunction(L, pg_connect);
  lua_setfield(L, -2, "connect");
  lua_pushcfunction(L, pg_bytes);
  lua_setfield(L, -2, "bytes");
  lua_pushcfunction(L, pg_sleep);
  lua_setfield(L, -2, "sleep");
  return 1;
}
