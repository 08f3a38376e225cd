/*
** interrupt.h - run Lua code that Ctrl-C (SIGINT) can interrupt.
*/
#ifndef PROCMAN_INTERRUPT_H
#define PROCMAN_INTERRUPT_H

#include "lua.h"

/* terminal.interruptible(fn, ...) -> fn(...): while fn runs, SIGINT raises the
** error "interrupted!" inside it instead of ending the process. */
int interrupt_call(lua_State *L);

#endif
