/*
** fuzz_pattern.c - libFuzzer harness for procman's pattern matcher.
**
** Input: one byte (the pattern's length, modulo the input's), the pattern,
** then the subject, each copied into a buffer of its exact size (ASan
** catches any read past either).  pattern.c runs with a step limit; when
** it finishes within it, string.find must agree with it exactly (match,
** positions, captures, or the error message).
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lauxlib.h"
#include "lualib.h"
#include "pattern.h"
#include "test/pattern_compare.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_BYTES 200
#define MAX_STEPS 200000

static lua_State *the_state = NULL;

static void close_state(void) {
  lua_close(the_state);
}

static lua_State *state(void) {
  if (the_state == NULL) {
    the_state = luaL_newstate();
    luaL_openlibs(the_state);
    atexit(close_state);
  }
  return the_state;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  size_t lp, ls;
  char *p, *s;
  Text want = { { 0 }, 0 }, got = { { 0 }, 0 };
  if (size < 1 || size > MAX_BYTES)
    return 0;
  lp = data[0] % size;
  ls = size - 1 - lp;
  p = malloc(lp + 1);
  s = malloc(ls + 1);
  if (p == NULL || s == NULL)
    abort();
  memcpy(p, data + 1, lp);
  memcpy(s, data + 1 + lp, ls);
  if (describe_ours(s, ls, p, lp, MAX_STEPS, &got) != PATTERN_STEPS) {
    describe_lua(state(), s, ls, p, lp, &want);
    if (strcmp(want.s, got.s) != 0) {
      fprintf(stderr, "pattern \"%.*s\" on \"%.*s\": string.find gives %s, pattern.c %s\n",
              (int)lp, p, (int)ls, s, want.s, got.s);
      abort();
    }
  }
  free(p);
  free(s);
  return 0;
}
