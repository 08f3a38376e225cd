/*
** interrupt.c - run Lua code that Ctrl-C (SIGINT) can interrupt.
**
** The way lua.c does it: a signal handler may not call Lua, so it only
** sets a hook; the hook, called at the next Lua instruction, raises the
** error.  The previous handler comes back when the call ends, however it
** ends.
**
** The hook that was set when the signal came (a workflow's budget, see
** budget.c, or a debugger's) is put back before the error is raised, so
** code that catches "interrupted!" with pcall is still under its budget.
*/
#define _POSIX_C_SOURCE 200809L
#include <signal.h>

#include "lauxlib.h"
#include "interrupt.h"

static lua_State *volatile interrupted_state = NULL;

/* The hook the signal replaced (none, or a budget's, or a debugger's). */
static volatile lua_Hook replaced_hook = NULL;
static volatile int replaced_mask = 0, replaced_count = 0;

/* The hook: put back the one it replaced, then raise in the running code. */
static void stop_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, replaced_hook, replaced_mask, replaced_count);
  luaL_error(L, "interrupted!");
}

static void on_sigint(int sig) {
  lua_State *L = interrupted_state;
  (void)sig;
  if (L == NULL)
    return;
  if (lua_gethook(L) != stop_hook) {  /* a second Ctrl-C keeps the first's */
    replaced_hook = lua_gethook(L);
    replaced_mask = lua_gethookmask(L);
    replaced_count = lua_gethookcount(L);
  }
  /* setting a hook is signal-safe in Lua */
  lua_sethook(L, stop_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

/* Run fn(...) (the stack) under pcall with our handler; restore theirs. */
int interrupt_call(lua_State *L) {
  struct sigaction ours, theirs;
  lua_Hook hook = lua_gethook(L);  /* put back at the end */
  int mask = lua_gethookmask(L), count = lua_gethookcount(L);
  int status, top;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  top = lua_gettop(L);
  ours.sa_handler = on_sigint;
  ours.sa_flags = 0;
  sigemptyset(&ours.sa_mask);
  replaced_hook = NULL;
  replaced_mask = replaced_count = 0;
  interrupted_state = L;
  sigaction(SIGINT, &ours, &theirs);
  status = lua_pcall(L, top - 1, LUA_MULTRET, 0);
  sigaction(SIGINT, &theirs, NULL);
  interrupted_state = NULL;
  lua_sethook(L, hook, mask, count);  /* a signal that came too late to fire */
  if (status != LUA_OK)
    return lua_error(L);
  return lua_gettop(L);
}
