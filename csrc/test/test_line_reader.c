/*
** test_line_reader.c - terminal.line_reader(fd) over a pipe: whole lines, a
** last line without its newline, empty lines, a line longer than many
** chunks (from a file), a timeout while the writer is quiet (and the line that comes
** after it), the end of input, a closed reader, bad arguments.
*/
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "lauxlib.h"
#include "lualib.h"

LUAMOD_API int luaopen_procman_terminal(lua_State *L);

typedef struct Fixture {
  lua_State *L;
  int fds[2];  /* a pipe: the reader reads fds[0], the test writes fds[1] */
} Fixture;

static int setup(void **state) {
  Fixture *f = calloc(1, sizeof *f);
  if (f == NULL || pipe(f->fds) != 0)
    return -1;
  f->L = luaL_newstate();
  luaL_openlibs(f->L);
  luaL_requiref(f->L, "procman.terminal", luaopen_procman_terminal, 0);
  lua_setglobal(f->L, "terminal");
  lua_pushinteger(f->L, f->fds[0]);
  lua_setglobal(f->L, "fd");
  *state = f;
  return 0;
}

static int teardown(void **state) {
  Fixture *f = *state;
  lua_close(f->L);
  close(f->fds[0]);
  if (f->fds[1] >= 0)
    close(f->fds[1]);
  free(f);
  return 0;
}

static void run(lua_State *L, const char *code) {
  if (luaL_dostring(L, code) != LUA_OK)
    fail_msg("%s", lua_tostring(L, -1));
}

static void put(Fixture *f, const char *bytes) {
  size_t n = strlen(bytes);
  assert_int_equal(write(f->fds[1], bytes, n), (ssize_t)n);
}

static void end_input(Fixture *f) {
  close(f->fds[1]);
  f->fds[1] = -1;
}

static void test_lines_and_the_end(void **state) {
  Fixture *f = *state;
  put(f, "one\n\nthree\r\nlast");
  end_input(f);
  run(f->L, "local r = terminal.line_reader(fd)\n"
            "assert(r:read() == 'one')\n"
            "assert(r:read() == '')\n"
            "assert(r:read() == 'three\\r', 'a carriage return is data')\n"
            "assert(r:read() == 'last', 'the end of input ends the last line')\n"
            "assert(r:read() == nil)\n"
            "assert(r:read(0) == nil, 'the end stays the end')");
}

static void test_a_timeout_and_the_line_after_it(void **state) {
  Fixture *f = *state;
  put(f, "whole\nhal");
  run(f->L, "r = terminal.line_reader(fd)\n"
            "assert(r:read(0) == 'whole')\n"
            "assert(r:read(0) == false, 'half a line is not a line')\n"
            "assert(r:read(0.01) == false)");
  put(f, "f\n");
  run(f->L, "assert(r:read(0) == 'half')\n"
            "assert(r:read(0) == false)");
  end_input(f);
  run(f->L, "assert(r:read(5) == nil, 'the end of input comes before the timeout')");
}

static void test_a_line_longer_than_many_chunks(void **state) {
  Fixture *f = *state;
  /* more than a pipe holds, so from a file: read() and poll() work the same */
  static char line[1000001];
  char path[] = "/tmp/procman-line-reader-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  unlink(path);
  memset(line, 'x', sizeof line - 1);
  line[sizeof line - 1] = '\n';
  assert_int_equal(write(fd, line, sizeof line), (ssize_t)sizeof line);
  assert_int_equal(write(fd, "short\n", 6), 6);
  assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
  lua_pushinteger(f->L, fd);
  lua_setglobal(f->L, "file_fd");
  run(f->L, "local r = terminal.line_reader(file_fd)\n"
            "local line = r:read()\n"
            "assert(#line == 1000000 and not line:find('[^x]'), #line)\n"
            "assert(r:read(0) == 'short')\n"
            "assert(r:read() == nil)");
  close(fd);
}

static void test_closed_and_bad_arguments(void **state) {
  Fixture *f = *state;
  put(f, "a\n");
  run(f->L, "local r = terminal.line_reader(fd)\n"
            "assert(tostring(r):find('procman.line_reader (fd ', 1, true))\n"
            "assert(not pcall(r.read, r, -1))\n"
            "assert(not pcall(r.read, r, 0/0))\n"
            "assert(select(2, pcall(r.read, r, 'soon')):find('number expected'))\n"
            "r:close()\n"
            "assert(tostring(r) == 'procman.line_reader (closed)')\n"
            "assert(select(2, pcall(r.read, r)):find('this line reader is closed'))\n"
            "r:close()\n"
            "assert(not pcall(terminal.line_reader, -1))\n"
            "do local scoped <close> = terminal.line_reader(fd) end");
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(test_lines_and_the_end, setup, teardown),
    cmocka_unit_test_setup_teardown(test_a_timeout_and_the_line_after_it, setup, teardown),
    cmocka_unit_test_setup_teardown(test_a_line_longer_than_many_chunks, setup, teardown),
    cmocka_unit_test_setup_teardown(test_closed_and_bad_arguments, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
