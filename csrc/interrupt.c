/*
** interrupt.c - run Lua code that Ctrl-C (SIGINT) can interrupt.
**
** The way lua.c does it: a signal handler may not call Lua, so it only
** sets a hook; the hook, called at the next Lua instruction, raises the
** error.  The previous handler comes back when the call ends, however it
** ends.
*/
#define _POSIX_C_SOURCE 200809L
#include <signal.h>

#include "lauxlib.h"
#include "interrupt.h"

static lua_State *volatile interrupted_state = NULL;

/* The hook: unset itself, then raise in the running code. */
static void stop_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  luaL_error(L, "interrupted!");
}

static void on_sigint(int sig) {
  (void)sig;
  if (interrupted_state != NULL)  /* setting a hook is signal-safe in Lua */
    lua_sethook(interrupted_state, stop_hook,
                LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

/* Run fn(...) (the stack) under pcall with our handler; restore theirs. */
int interrupt_call(lua_State *L) {
  struct sigaction ours, theirs;
  int status, top;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  top = lua_gettop(L);
  ours.sa_handler = on_sigint;
  ours.sa_flags = 0;
  sigemptyset(&ours.sa_mask);
  interrupted_state = L;
  sigaction(SIGINT, &ours, &theirs);
  status = lua_pcall(L, top - 1, LUA_MULTRET, 0);
  sigaction(SIGINT, &theirs, NULL);
  interrupted_state = NULL;
  lua_sethook(L, NULL, 0, 0);  /* a signal that came too late to fire */
  if (status != LUA_OK)
    return lua_error(L);
  return lua_gettop(L);
}
