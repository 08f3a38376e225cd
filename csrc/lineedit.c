/*
** lineedit.c - the procman.lineedit module: line editing for the REPL,
** through libedit (BSD licensed) and its readline-compatible interface.
**
**   local editor = lineedit.new { history = path, complete = fn }
**   editor:read(prompt) -> line | false (Ctrl-C: the line is dropped) | nil (Ctrl-D)
**   editor:close()      -- writes the history; also __gc and __close
**
** complete(text) -> array of candidates for the word before the cursor
** ("pm:ha" -> { "pm:handle" }).  Words break at spaces and operators, not
** at '.' or ':', so table paths and method calls complete as one word.
**
** libedit keeps one global state, so one editor at a time reads.  The Lua
** state and the editor are kept in statics only while read() runs, which
** is when libedit may call the completion back.
*/
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <editline/readline.h>

#include "lauxlib.h"

#define EDITOR_TYPENAME "procman.lineedit"
#define HISTORY_MAX 1000

LUAMOD_API int luaopen_procman_lineedit(lua_State *L);

enum { UV_COMPLETE = 1, UV_HISTORY, UV_CANDIDATES };

typedef struct Editor {
  int open;
} Editor;

static lua_State *reading_state = NULL;  /* set during read() only */
static int reading_editor = 0;           /* its stack index */
static volatile sig_atomic_t interrupted = 0;

/* ---- completion ------------------------------------------------------ */

/* Call complete(text) and keep its candidates in the editor; 0 if none. */
static int fetch_candidates(lua_State *L, const char *text) {
  int ok;
  lua_getiuservalue(L, reading_editor, UV_COMPLETE);
  lua_pushstring(L, text);
  ok = lua_pcall(L, 1, 1, 0) == LUA_OK && lua_istable(L, -1);
  if (!ok) {
    lua_pop(L, 1);
    return 0;
  }
  lua_setiuservalue(L, reading_editor, UV_CANDIDATES);
  return 1;
}

/* readline's generator: the state-th candidate, malloc'd, or NULL. */
static char *candidate(const char *text, int state) {
  lua_State *L = reading_state;
  char *copy = NULL;
  if (L == NULL)
    return NULL;
  if (state == 0 && !fetch_candidates(L, text))
    return NULL;
  if (lua_getiuservalue(L, reading_editor, UV_CANDIDATES) == LUA_TTABLE &&
      lua_rawgeti(L, -1, state + 1) == LUA_TSTRING) {
    const char *s = lua_tostring(L, -1);
    copy = malloc(strlen(s) + 1);
    if (copy != NULL)
      strcpy(copy, s);
    lua_pop(L, 1);
  } else if (lua_istable(L, -1)) {
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return copy;
}

static char **complete(const char *text, int start, int end) {
  (void)start;
  (void)end;
  rl_attempted_completion_over = 1;  /* never fall back to file names */
  return rl_completion_matches(text, candidate);
}

/* ---- reading --------------------------------------------------------- */

static void on_sigint(int sig) {
  (void)sig;
  interrupted = 1;
}

static int push_string(lua_State *L) {
  lua_pushstring(L, (const char *)lua_touserdata(L, 1));
  return 1;
}

/* Push the malloc'd 'line' and free it, even if pushing raises (memory). */
static int push_and_free(lua_State *L, char *line) {
  int status;
  lua_pushcfunction(L, push_string);
  lua_pushlightuserdata(L, line);
  status = lua_pcall(L, 1, 1, 0);
  free(line);
  if (status != LUA_OK)
    return lua_error(L);
  return 1;
}

/* editor:read(prompt) -> line | false (interrupted) | nil (end of input) */
static int editor_read(lua_State *L) {
  Editor *e = (Editor *)luaL_checkudata(L, 1, EDITOR_TYPENAME);
  const char *prompt = luaL_optstring(L, 2, "> ");
  struct sigaction ours, theirs;
  char *line;
  if (!e->open)
    return luaL_error(L, "procman.lineedit: the editor is closed");
  lua_settop(L, 2);
  ours.sa_handler = on_sigint;
  ours.sa_flags = 0;  /* no SA_RESTART: Ctrl-C ends the read */
  sigemptyset(&ours.sa_mask);
  interrupted = 0;
  sigaction(SIGINT, &ours, &theirs);
  reading_state = L;
  reading_editor = 1;
  line = readline(prompt);
  reading_state = NULL;
  sigaction(SIGINT, &theirs, NULL);
  if (interrupted) {
    free(line);
    fputc('\n', stdout);
    fflush(stdout);
    lua_pushboolean(L, 0);
    return 1;
  }
  if (line == NULL) {
    lua_pushnil(L);
    return 1;
  }
  if (line[0] != '\0')
    add_history(line);
  return push_and_free(L, line);
}

/* ---- life ------------------------------------------------------------- */

/* __gc, __close and close: write the history; safe twice. */
static int editor_close(lua_State *L) {
  Editor *e = (Editor *)luaL_checkudata(L, 1, EDITOR_TYPENAME);
  if (!e->open)
    return 0;
  e->open = 0;
  if (lua_getiuservalue(L, 1, UV_HISTORY) == LUA_TSTRING)
    write_history(lua_tostring(L, -1));
  return 0;
}

/* lineedit.new { history = path?, complete = fn? } -> editor */
static int editor_new(lua_State *L) {
  Editor *e;
  luaL_checktype(L, 1, LUA_TTABLE);
  e = (Editor *)lua_newuserdatauv(L, sizeof(Editor), 3);
  e->open = 0;
  luaL_setmetatable(L, EDITOR_TYPENAME);
  if (lua_getfield(L, 1, "complete") != LUA_TNIL) {
    luaL_argexpected(L, lua_isfunction(L, -1), 1, "complete: a function");
    lua_setiuservalue(L, -2, UV_COMPLETE);
    rl_attempted_completion_function = complete;
  } else {
    lua_pop(L, 1);
    rl_attempted_completion_function = NULL;
  }
  if (lua_getfield(L, 1, "history") != LUA_TNIL) {
    luaL_argexpected(L, lua_isstring(L, -1), 1, "history: a file path");
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, -3, UV_HISTORY);
    read_history(lua_tostring(L, -1));  /* a missing file is a first session */
  }
  lua_pop(L, 1);
  stifle_history(HISTORY_MAX);
  rl_readline_name = "procman";
  rl_basic_word_break_characters = " \t\n\"'`@$><=;|&{}()[],+-*/%^#~";
  rl_completion_append_character = '\0';
  e->open = 1;
  return 1;
}

static const luaL_Reg editor_methods[] = {
  { "read", editor_read },
  { "close", editor_close },
  { NULL, NULL }
};

LUAMOD_API int luaopen_procman_lineedit(lua_State *L) {
  if (luaL_newmetatable(L, EDITOR_TYPENAME)) {
    lua_pushcfunction(L, editor_close);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "__gc");
    lua_setfield(L, -2, "__close");
    luaL_newlib(L, editor_methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushcfunction(L, editor_new);
  lua_setfield(L, -2, "new");
  return 1;
}
