/*
** terminal.c - the procman.terminal module: what the procman command needs
** of a terminal and of its input, apart from the library's core.
**
**   terminal.is_terminal(fd) -> is that descriptor (0, 1, 2) a terminal?
**   terminal.line_reader(fd) -> lines with a timeout (line_reader.c)
**   terminal.interruptible(fn, ...) -> fn(...) that Ctrl-C can stop
**                                      (interrupt.c)
**
** Line editing (libedit) is procman.lineedit, a rock of its own; this
** module links nothing but Lua, so that `procman run` and the REPL's
** plain lines work without it.
*/
#define _POSIX_C_SOURCE 200809L
#include <unistd.h>

#include "lauxlib.h"
#include "interrupt.h"
#include "line_reader.h"

LUAMOD_API int luaopen_procman_terminal(lua_State *L);

static int terminal_is_terminal(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  luaL_argcheck(L, fd >= 0 && fd <= 2, 1, "0, 1 or 2 expected");
  lua_pushboolean(L, isatty((int)fd));
  return 1;
}

static const luaL_Reg terminal_functions[] = {
  { "is_terminal", terminal_is_terminal },
  { "line_reader", line_reader_new },
  { "interruptible", interrupt_call },
  { NULL, NULL }
};

LUAMOD_API int luaopen_procman_terminal(lua_State *L) {
  line_reader_register(L);
  luaL_newlib(L, terminal_functions);
  return 1;
}
