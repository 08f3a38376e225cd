/*
** fuzz_journal.c - libFuzzer harness for the journal reader.
**
** Any bytes as a journal file: the scan never reads outside the buffer,
** its findings are consistent (intact records end at 'end', a torn tail
** is what follows, damage is followed by an intact record or is the last
** record, written whole), and walking
** the records as readers do visits exactly the records the scan counted.
**
** Then the bytes go to a file, opened with repair as a router would, and
** procman.journal's live reader (j:records(), built here with windows of
** READ_WINDOW bytes so that records straddle them) must give exactly the
** records of that walk: offsets, types, payloads.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lauxlib.h"
#include "lualib.h"
#include "journal.h"

#ifndef READ_WINDOW
#error "build with -DREAD_WINDOW=<a few dozen bytes> (the Makefile does)"
#endif

LUAMOD_API int luaopen_procman_core(lua_State *L);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const COMPARE =
  "local core, path, want = ...\n"
  "local j, err = core.journal_open(path, { repair = true, sync = 'none' })\n"
  "assert(j, err)\n"
  "local i = 0\n"
  "for offset, type, payload in j:records() do\n"
  "  i = i + 1\n"
  "  local w = want[i]\n"
  "  assert(w, 'the windowed reader gives a record the walk did not: at ' .. offset)\n"
  "  assert(w[1] == offset and w[2] == type and w[3] == payload,\n"
  "         string.format('record %d: the walk has %d/%d/%d bytes, the windowed reader %d/%d/%d bytes',\n"
  "                       i, w[1], w[2], #w[3], offset, type, #payload))\n"
  "end\n"
  "assert(i == #want, string.format('the windowed reader gives %d records, the walk %d', i, #want))\n"
  "j:close()\n";

/* One state for the whole run, closed at exit (valgrind over the corpus),
** and one file, removed at exit. */
static lua_State *the_state = NULL;
static char the_path[64];

static void close_state(void) {
  lua_close(the_state);
  remove(the_path);
}

static lua_State *state(void) {
  if (the_state == NULL) {
    lua_State *L = the_state = luaL_newstate();
    luaL_openlibs(L);
    snprintf(the_path, sizeof the_path, "%s/procman-fuzz-journal-%ld",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp", (long)getpid());
    atexit(close_state);
    luaL_requiref(L, "procman.core", luaopen_procman_core, 0);
    lua_setglobal(L, "core");
    if (luaL_loadstring(L, COMPARE) != LUA_OK)
      abort();
    lua_setglobal(L, "compare");
  }
  return the_state;
}

static void write_file(const unsigned char *buf, size_t size) {
  FILE *f = fopen(the_path, "wb");
  if (f == NULL || fwrite(buf, 1, size, f) != size || fclose(f) != 0) {
    perror(the_path);
    abort();
  }
}

/* The bytes as a file, opened with repair: j:records() must give the
** records in 'want' (a table at the top of the stack, popped). */
static void compare_with_reader(const unsigned char *buf, size_t size) {
  lua_State *L = state();
  write_file(buf, size);
  lua_getglobal(L, "compare");
  lua_getglobal(L, "core");
  lua_pushstring(L, the_path);
  lua_rotate(L, -4, -1);  /* want to the end */
  if (lua_pcall(L, 3, 0, 0) != LUA_OK) {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
    abort();
  }
  remove(the_path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  JournalScan scan;
  size_t pos, seen = 0;
  lua_State *L = state();
  unsigned char *copy = malloc(size ? size : 1);  /* exact size: ASan sees any overread */
  if (copy == NULL)
    return 0;
  memcpy(copy, data, size);
  journal_scan(copy, size, &scan);
  if (scan.bad_header) {
    free(copy);
    return 0;
  }
  if (scan.end > size || scan.end + scan.dropped > size)
    abort();
  if (scan.damaged_at != 0 && (scan.resume_at <= scan.damaged_at || scan.resume_at > size))
    abort();
  /* walk the records as procman.journal's reader does */
  lua_newtable(L);  /* the records seen: { offset, type, payload } */
  pos = size < JOURNAL_HEADER_SIZE ? size : JOURNAL_HEADER_SIZE;
  while (pos < scan.end) {
    int type;
    size_t len;
    const char *why;
    if (!journal_record_at(copy, scan.end, pos, &type, &len, &why)) {
      pos = journal_resync(copy, scan.end, pos);
      if (pos >= scan.end)
        break;
      if (!journal_record_at(copy, scan.end, pos, &type, &len, &why))
        abort();  /* resync must land on an intact record */
    }
    if (type < 1 || type > 255 || pos + JOURNAL_RECORD_HEADER_SIZE + len > scan.end)
      abort();
    lua_createtable(L, 3, 0);
    lua_pushinteger(L, (lua_Integer)pos);
    lua_rawseti(L, -2, 1);
    lua_pushinteger(L, type);
    lua_rawseti(L, -2, 2);
    lua_pushlstring(L, (const char *)copy + pos + JOURNAL_RECORD_HEADER_SIZE, len);
    lua_rawseti(L, -2, 3);
    lua_rawseti(L, -2, (lua_Integer)++seen);
    pos += JOURNAL_RECORD_HEADER_SIZE + len;
  }
  if (seen != scan.records)
    abort();
  compare_with_reader(copy, size);
  free(copy);
  lua_settop(L, 0);
  return 0;
}
