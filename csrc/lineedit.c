/*
** lineedit.c - the procman.lineedit module: line editing for the REPL,
** through libedit (BSD licensed), with its own API (el_*, history).
**
**   local editor = lineedit.new { history = path, complete = fn }
**   editor:read(prompt) -> line | false (Ctrl-C: the line is dropped) | nil (Ctrl-D)
**   editor:close()      -- saves the history; also __gc and __close
**
** complete(text) -> array of candidates for the word before the cursor
** ("pm:ha" -> { "pm:handle" }).  Words break at spaces and operators, not
** at '.' or ':', so table paths and method calls complete as one word.
**
** Not libedit's readline-compatible functions: Debian's lua5.4 links GNU
** readline, whose symbols of the same names would be the ones called.
*/
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <limits.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/select.h>
#include <unistd.h>
#include <wchar.h>

#include <histedit.h>

#include "lauxlib.h"

#define EDITOR_TYPENAME "procman.lineedit"
#define HISTORY_MAX 1000
#define WORD_BREAKS " \t\n\"'`@$><=;|&{}()[],+-*/%^#~"

LUAMOD_API int luaopen_procman_lineedit(lua_State *L);

enum { UV_COMPLETE = 1, UV_HISTORY };

typedef struct Editor {
  EditLine *el;
  History *history;
  const char *prompt;   /* during read(): the prompt, a string on the stack */
  lua_State *L;         /* during read(): for completion */
  int index;            /* during read(): the editor's stack index */
  sigset_t waiting;     /* during read(): the signal mask while waiting for a key */
} Editor;

static volatile sig_atomic_t interrupted = 0;

static Editor *check_editor(lua_State *L) {
  return (Editor *)luaL_checkudata(L, 1, EDITOR_TYPENAME);
}

static Editor *editor_of(EditLine *el) {
  void *e = NULL;
  el_get(el, EL_CLIENTDATA, &e);
  return (Editor *)e;
}

static char *prompt_of(EditLine *el) {
  return (char *)editor_of(el)->prompt;
}

/* ---- completion ------------------------------------------------------ */

/* The length of the longest common prefix of the n candidates at the top. */
static size_t common_prefix(lua_State *L, int list, lua_Integer n) {
  size_t len, i;
  const char *first;
  lua_Integer k;
  lua_rawgeti(L, list, 1);
  first = lua_tolstring(L, -1, &len);
  for (k = 2; k <= n; k++) {
    size_t other_len;
    const char *other;
    lua_rawgeti(L, list, k);
    other = lua_tolstring(L, -1, &other_len);
    for (i = 0; i < len && i < other_len && first[i] == other[i]; i++) {
    }
    len = i;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return len;
}

/* Show the candidates under the line, as a shell does. */
static void list_candidates(lua_State *L, int list, lua_Integer n) {
  lua_Integer k;
  fputc('\n', stdout);
  for (k = 1; k <= n; k++) {
    lua_rawgeti(L, list, k);
    fputs(lua_tostring(L, -1), stdout);
    fputs(k < n ? "  " : "\n", stdout);
    lua_pop(L, 1);
  }
  fflush(stdout);
}

/* How many candidates the completion returned at 'list': 0 unless it is
** an array of strings (anything else: no completion, a beep). */
static lua_Integer count_candidates(lua_State *L, int list) {
  lua_Integer n, k;
  if (!lua_istable(L, list))
    return 0;
  n = (lua_Integer)lua_rawlen(L, list);
  for (k = 1; k <= n; k++) {
    int is_string = lua_rawgeti(L, list, k) == LUA_TSTRING;
    lua_pop(L, 1);
    if (!is_string)
      return 0;
  }
  return n;
}

/* The completion's work, in a protected call (complete_word): any error,
** out of memory included, must not jump out of el_gets(). Arguments: the
** editor's userdata, the EditLine (light userdata). Returns the libedit
** result code. */
static int complete_protected(lua_State *L) {
  EditLine *el = (EditLine *)lua_touserdata(L, 2);
  const LineInfo *li = el_line(el);
  const char *start = li->cursor;
  int result = CC_REFRESH_BEEP;
  lua_Integer n;
  size_t typed, common;
  while (start > li->buffer && strchr(WORD_BREAKS, start[-1]) == NULL)
    start--;
  typed = (size_t)(li->cursor - start);
  lua_getiuservalue(L, 1, UV_COMPLETE);  /* 3 */
  lua_pushlstring(L, start, typed);
  if (!lua_isfunction(L, 3) || lua_pcall(L, 1, 1, 0) != LUA_OK)
    lua_pushnil(L);  /* no completion, or it failed: a beep */
  n = count_candidates(L, 3);
  if (n > 0) {
    common = common_prefix(L, 3, n);
    lua_rawgeti(L, 3, 1);
    if (common > typed) {  /* insert what all candidates share */
      lua_pushlstring(L, lua_tostring(L, -1) + typed, common - typed);
      el_insertstr(el, lua_tostring(L, -1));
      result = CC_REFRESH;
    } else if (n > 1) {
      list_candidates(L, 3, n);
      result = CC_REDISPLAY;
    }
  }
  lua_pushinteger(L, result);
  return 1;
}

/* Bound to Tab: complete the word before the cursor. */
static unsigned char complete_word(EditLine *el, int ch) {
  Editor *e = editor_of(el);
  lua_State *L = e->L;
  unsigned char result = CC_REFRESH_BEEP;
  int top;
  (void)ch;
  if (L == NULL)
    return CC_ERROR;
  top = lua_gettop(L);
  if (!lua_checkstack(L, 8))
    return result;
  lua_pushcfunction(L, complete_protected);
  lua_pushvalue(L, e->index);
  lua_pushlightuserdata(L, el);
  if (lua_pcall(L, 2, 1, 0) == LUA_OK)
    result = (unsigned char)lua_tointeger(L, -1);
  lua_settop(L, top);
  return result;
}

/* ---- reading --------------------------------------------------------- */

/* Ctrl-C at the prompt: installed without SA_RESTART (and with libedit's
** own signal handling off), it sets 'interrupted'; read_key() then fails,
** el_gets() returns, and editor_read() drops the line. */
static void on_sigint(int sig) {
  (void)sig;
  interrupted = 1;
}

/* Is a Ctrl-C waiting, blocked? (Delivered when editor_read() restores
** the signal mask.) */
static int sigint_pending(void) {
  sigset_t pending;
  return sigpending(&pending) == 0 && sigismember(&pending, SIGINT);
}

/* libedit's character reader (EL_GETCFN). SIGINT is blocked while libedit
** works (redrawing, completing) and let through only while this waits for
** a key, atomically (pselect): a Ctrl-C that comes while libedit is busy
** is then seen before the next key is read, even when keys were typed
** ahead. pselect does not report a signal that came with input ready:
** hence the look at the pending signals, before waiting and again before
** reading (the terminal's Ctrl-C flushes what was typed before it, so
** input still there was typed after it, for the next line). libedit's own
** reader would miss the Ctrl-C and read on to the end of the next line,
** which editor_read() would then drop: the Ctrl-C would eat the line typed
** after it. */
static int read_key(EditLine *el, wchar_t *key) {
  Editor *e = editor_of(el);
  int fd = fileno(stdin);
  char bytes[MB_LEN_MAX];
  size_t n = 0;
  for (;;) {
    fd_set readable;
    ssize_t got;
    size_t used;
    mbstate_t state;
    if (interrupted || sigint_pending()) {
      errno = EINTR;
      return -1;
    }
    FD_ZERO(&readable);
    FD_SET(fd, &readable);
    if (pselect(fd + 1, &readable, NULL, NULL, NULL, &e->waiting) < 0) {
      if (errno == EINTR)
        continue;  /* 'interrupted' says whether it was Ctrl-C */
      return -1;
    }
    if (sigint_pending())
      continue;  /* a Ctrl-C came while pselect found input */
    got = read(fd, bytes + n, 1);
    if (got == 0)
      return 0;  /* end of input */
    if (got < 0) {
      if (errno == EINTR || errno == EAGAIN)
        continue;
      return -1;
    }
    n++;
    memset(&state, 0, sizeof state);  /* UTF-8 is stateless: decode from the start */
    used = mbrtowc(key, bytes, n, &state);
    if (used == (size_t)-2 && n < sizeof bytes)
      continue;  /* a character of several bytes: read on */
    if (used == (size_t)-1 || used == (size_t)-2) {
      n = 0;  /* not a character: drop the bytes, as libedit's reader does */
      continue;
    }
    return 1;
  }
}

/* editor:read(prompt) -> line | false (interrupted) | nil (end of input) */
static int editor_read(lua_State *L) {
  Editor *e = check_editor(L);
  struct sigaction ours, theirs;
  sigset_t sigint, saved;
  const char *line;
  int count = 0;
  if (e->el == NULL)
    return luaL_error(L, "procman.lineedit: the editor is closed");
  e->prompt = luaL_optstring(L, 2, "> ");
  lua_settop(L, 2);  /* the prompt stays on the stack while reading */
  ours.sa_handler = on_sigint;
  ours.sa_flags = 0;
  sigemptyset(&ours.sa_mask);
  sigemptyset(&sigint);
  sigaddset(&sigint, SIGINT);
  interrupted = 0;
  e->L = L;
  e->index = 1;
  sigaction(SIGINT, &ours, &theirs);
  sigprocmask(SIG_BLOCK, &sigint, &saved);
  e->waiting = saved;
  sigdelset(&e->waiting, SIGINT);
  line = el_gets(e->el, &count);
  sigprocmask(SIG_SETMASK, &saved, NULL);  /* a Ctrl-C still pending lands in on_sigint */
  sigaction(SIGINT, &theirs, NULL);
  e->L = NULL;
  if (interrupted) {
    el_reset(e->el);
    fputc('\n', stdout);
    fflush(stdout);
    lua_pushboolean(L, 0);
    return 1;
  }
  if (line == NULL || count <= 0) {
    lua_pushnil(L);
    return 1;
  }
  if (count > 0 && line[count - 1] == '\n')
    count--;
  lua_pushlstring(L, line, (size_t)count);  /* libedit owns 'line' */
  if (count > 0) {
    HistEvent ev;
    history(e->history, &ev, H_ENTER, lua_tostring(L, -1));
  }
  return 1;
}

/* ---- life ------------------------------------------------------------- */

/* __gc, __close and close: save the history, free libedit's state; safe
** twice. */
static int editor_close(lua_State *L) {
  Editor *e = check_editor(L);
  HistEvent ev;
  if (e->el == NULL)
    return 0;
  if (lua_getiuservalue(L, 1, UV_HISTORY) == LUA_TSTRING)
    history(e->history, &ev, H_SAVE, lua_tostring(L, -1));
  el_end(e->el);
  history_end(e->history);
  e->el = NULL;
  e->history = NULL;
  return 0;
}

/* libedit works in wide characters through the C library's locale; in
** Lua's "C" locale it drops every non-ASCII character typed. */
static void use_utf8_locale(void) {
  const char *now = setlocale(LC_CTYPE, "");
  if (now == NULL || strcmp(now, "C") == 0 || strcmp(now, "POSIX") == 0)
    setlocale(LC_CTYPE, "C.UTF-8");
}

/* Set up the editor's EditLine and History (e->el NULL on failure). */
static void start_libedit(Editor *e, const char *history_file) {
  HistEvent ev;
  use_utf8_locale();
  e->history = history_init();
  e->el = el_init("procman", stdin, stdout, stderr);
  if (e->history == NULL || e->el == NULL) {
    if (e->el != NULL)
      el_end(e->el);
    if (e->history != NULL)
      history_end(e->history);
    e->el = NULL;
    e->history = NULL;
    return;
  }
  history(e->history, &ev, H_SETSIZE, HISTORY_MAX);
  history(e->history, &ev, H_SETUNIQUE, 1);
  if (history_file != NULL)
    history(e->history, &ev, H_LOAD, history_file);  /* none yet: a first session */
  el_set(e->el, EL_CLIENTDATA, (void *)e);
  el_set(e->el, EL_EDITOR, "emacs");
  el_set(e->el, EL_SIGNAL, 0);  /* SIGINT is ours while reading */
  el_set(e->el, EL_GETCFN, read_key);
  el_set(e->el, EL_PROMPT, prompt_of);
  el_set(e->el, EL_HIST, history, e->history);
  el_set(e->el, EL_ADDFN, "procman-complete", "Complete a Lua name", complete_word);
  el_set(e->el, EL_BIND, "^I", "procman-complete", NULL);
  el_source(e->el, NULL);  /* the user's ~/.editrc, if any */
}

/* lineedit.new { history = path?, complete = fn? } -> editor, or nil,
** message when libedit cannot start (no terminal description). */
static int editor_new(lua_State *L) {
  Editor *e;
  const char *history_file = NULL;
  luaL_checktype(L, 1, LUA_TTABLE);
  e = (Editor *)lua_newuserdatauv(L, sizeof(Editor), 2);
  memset(e, 0, sizeof *e);
  luaL_setmetatable(L, EDITOR_TYPENAME);
  if (lua_getfield(L, 1, "complete") != LUA_TNIL)
    luaL_argexpected(L, lua_isfunction(L, -1), 1, "complete: a function");
  lua_setiuservalue(L, -2, UV_COMPLETE);  /* nil: Tab beeps */
  if (lua_getfield(L, 1, "history") != LUA_TNIL) {
    luaL_argexpected(L, lua_type(L, -1) == LUA_TSTRING, 1, "history: a file path");
    history_file = lua_tostring(L, -1);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, -3, UV_HISTORY);
  }
  start_libedit(e, history_file);
  lua_pop(L, 1);
  if (e->el == NULL) {
    lua_pushnil(L);
    lua_pushstring(L, "procman.lineedit: libedit cannot start on this terminal");
    return 2;
  }
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
