/*
** line_reader.h - terminal.line_reader(fd): lines from a file descriptor, with
** a timeout (see line_reader.c).
*/
#ifndef PROCMAN_LINE_READER_H
#define PROCMAN_LINE_READER_H

#include "lua.h"

/* Create the procman.line_reader metatable (once per lua_State). */
void line_reader_register(lua_State *L);

/* terminal.line_reader(fd) -> reader */
int line_reader_new(lua_State *L);

#endif
