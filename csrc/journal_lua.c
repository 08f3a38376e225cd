/*
** journal_lua.c - the procman.journal userdata: a journal file for Lua.
**
**   j, info = core.journal_open(path [, { sync = "always"|"batch"|"none",
**                                          repair = false }])
**   -- or nil, message, errno (the file cannot be opened, is not a
**   -- journal, or is damaged in the middle)
**   info = { records = n, bytes = size, dropped = torn tail bytes cut,
**            damaged_at = offset or nil (with repair) }
**   j:append(type, payload) -> offset of the record | nil, message, errno
**   j:write() -> true | nil, message, errno   (the buffer to the file)
**   j:sync() -> true | nil, message, errno    (the buffer, then fdatasync)
**   j:syncs() -> fdatasyncs done, seconds they took in all, the last one's
**   for offset, type, payload in j:records() do ... end
**   j:size(), j:close(), <close>, tostring(j)
**
**   iter, info = core.journal_scan(path)   -- read-only, no lock
**   -- info = { records, bytes, dropped (a torn tail, not cut), damaged_at,
**   --          resume_at }; or nil, message, errno
**
** The layer above (the router) gives records their meaning.
*/
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lauxlib.h"
#include "faults.h"
#include "journal.h"
#include "journal_lua.h"
#include "lock_holder.h"

#define JOURNAL_TYPENAME "procman.journal"

typedef struct LJournal {
  Journal j;
  int open;
} LJournal;

static LJournal *check_journal(lua_State *L) {
  return (LJournal *)luaL_checkudata(L, 1, JOURNAL_TYPENAME);
}

static LJournal *check_open(lua_State *L) {
  LJournal *lj = check_journal(L);
  if (!lj->open)
    luaL_error(L, "procman.journal: the journal is closed");
  return lj;
}

/* Lua's convention for a failure of the outside world: nil, message, errno.
** EILSEQ marks a file that is not (or no longer) a readable journal. */
static int io_failure(lua_State *L, const char *path, const char *why, int e) {
  lua_pushnil(L);
  if (e == EILSEQ)
    lua_pushfstring(L, "%s: %s", path, why);
  else if (path != NULL)
    lua_pushfstring(L, "%s: %s (%s)", path, why, strerror(e));
  else
    lua_pushfstring(L, "%s (%s)", why, strerror(e));
  lua_pushinteger(L, e);
  return 3;
}

static JournalSync check_sync(lua_State *L, int opts) {
  static const char *const names[] = { "always", "batch", "none" };
  int i;
  if (lua_getfield(L, opts, "sync") == LUA_TNIL)
    return JOURNAL_SYNC_ALWAYS;  /* the safe choice is the default */
  for (i = 0; i < 3; i++)
    if (lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), names[i]) == 0)
      return (JournalSync)i;
  return (JournalSync)luaL_error(L, "procman.journal: sync must be \"always\", "
                                 "\"batch\" or \"none\", got %s", luaL_tolstring(L, -1, NULL));
}

static void push_info(lua_State *L, const JournalScan *scan, size_t size) {
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, (lua_Integer)scan->records);
  lua_setfield(L, -2, "records");
  lua_pushinteger(L, (lua_Integer)size);
  lua_setfield(L, -2, "bytes");
  lua_pushinteger(L, (lua_Integer)scan->dropped);
  lua_setfield(L, -2, "dropped");
  if (scan->damaged_at != 0) {
    lua_pushinteger(L, (lua_Integer)scan->damaged_at);
    lua_setfield(L, -2, "damaged_at");
  }
}

/* The write buffer ("batch", "none") takes the state's memory, as the
** rest of the core does (so the OOM harness fails its growth too). */
static void use_state_memory(lua_State *L, LJournal *lj) {
  void *ud;
  lua_Alloc alloc = lua_getallocf(L, &ud);
  journal_set_alloc(&lj->j, alloc, ud);
}

/* core.journal_create(path [, opts]) -> a new journal (path must not exist). */
int journal_lua_create(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  JournalSync sync = JOURNAL_SYNC_ALWAYS;
  const char *why = NULL;
  LJournal *lj;
  int e;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    sync = check_sync(L, 2);
  }
  lj = (LJournal *)lua_newuserdatauv(L, sizeof *lj, 0);
  lj->open = 0;
  lj->j.fd = -1;
  luaL_setmetatable(L, JOURNAL_TYPENAME);
  e = journal_create(&lj->j, path, sync, &why);
  if (e != 0)
    return io_failure(L, path, why, e);
  use_state_memory(L, lj);
  lj->open = 1;
  return 1;
}

/* core.journal_replace(from, to) -> true | nil, message, errno, renamed
** (renamed: the rename happened and only the directory sync failed) */
int journal_lua_replace(lua_State *L) {
  const char *from = luaL_checkstring(L, 1);
  const char *to = luaL_checkstring(L, 2);
  const char *why = NULL;
  int renamed = 0;
  int e = journal_replace(from, to, &renamed, &why);
  if (e != 0) {
    io_failure(L, to, why, e);
    lua_pushboolean(L, renamed);
    return 4;
  }
  lua_pushboolean(L, 1);
  return 1;
}

#ifdef PROCMAN_FAULTS  /* test builds only: see faults.h */
/*
** core.journal_faults(at, errno_name [, short]) arms fault injection: the
** at-th file operation of any journal from now fails with that errno
** ("ENOSPC", "EIO", ...; with 'short', a write first writes half).
** core.journal_faults() disarms it and returns how many file operations
** were made meanwhile.  For procman's own fault tests.
*/
int journal_lua_faults(lua_State *L) {
  static const char *const names[] = { "ENOSPC", "EIO", "EDQUOT", "EROFS", "EINTR", NULL };
  static const int codes[] = { ENOSPC, EIO, EDQUOT, EROFS, EINTR };
  lua_Integer at;
  if (lua_isnoneornil(L, 1)) {
    lua_pushinteger(L, (lua_Integer)journal_faults_disarm());
    return 1;
  }
  at = luaL_checkinteger(L, 1);
  luaL_argcheck(L, at >= 1, 1, "a call number from 1");
  journal_faults_arm((long)at, codes[luaL_checkoption(L, 2, NULL, names)], lua_toboolean(L, 3));
  return 0;
}
#endif

int journal_lua_open(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  JournalSync sync = JOURNAL_SYNC_ALWAYS;
  int repair = 0, e;
  JournalScan scan;
  const char *why = NULL;
  LJournal *lj;
  long holder;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    sync = check_sync(L, 2);
    lua_getfield(L, 2, "repair");
    repair = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  lj = (LJournal *)lua_newuserdatauv(L, sizeof *lj, 0);  /* closed until open */
  lj->open = 0;
  lj->j.fd = -1;
  luaL_setmetatable(L, JOURNAL_TYPENAME);
  e = journal_open(&lj->j, path, sync, repair, &scan, &why);
  if (e != 0 && e == EILSEQ && scan.damaged_at != 0) {
    if (scan.resume_at == scan.end)  /* nothing follows it */
      lua_pushfstring(L, "damaged record at byte %I: %s (the last record, written whole: "
                      "damage, not a torn write; open with repair = true to skip it)",
                      (lua_Integer)scan.damaged_at, why);
    else
      lua_pushfstring(L, "damaged record at byte %I: %s (intact records follow "
                      "at byte %I; open with repair = true to skip it)",
                      (lua_Integer)scan.damaged_at, why, (lua_Integer)scan.resume_at);
    return io_failure(L, path, lua_tostring(L, -1), e);
  }
  holder = e == EWOULDBLOCK ? lock_holder(path) : 0;
  if (holder > 0) {  /* say who holds it */
    if (holder == (long)getpid())
      lua_pushfstring(L, "the journal is in use by another router of this process (pid %d): "
                      "close that one first", (int)holder);
    else
      lua_pushfstring(L, "the journal is in use by another process: pid %d holds its lock",
                      (int)holder);
    return io_failure(L, path, lua_tostring(L, -1), e);
  }
  if (e != 0)
    return io_failure(L, path, why, e);
  use_state_memory(L, lj);
  lj->open = 1;
  push_info(L, &scan, lj->j.size);
  return 2;
}

static int j_append(lua_State *L) {
  LJournal *lj = check_open(L);
  lua_Integer type = luaL_checkinteger(L, 2);
  size_t n;
  const char *p = luaL_checklstring(L, 3, &n);
  size_t at = lj->j.size;
  const char *why = NULL;
  int e;
  luaL_argcheck(L, type >= 1 && type <= 255, 2, "record type must be 1..255");
  e = journal_append(&lj->j, (int)type, p, n, &why);
  if (e != 0)
    return io_failure(L, NULL, why, e);
  lua_pushinteger(L, (lua_Integer)at);
  return 1;
}

/* Append to the journal 'lj' (NULL: not a journal): 1, or 0 with
** j:append's message pushed. */
static int append_to(lua_State *L, LJournal *lj, int type, const void *p, size_t n) {
  const char *why = "the journal is closed";
  int e = EBADF;
  if (lj != NULL && lj->open)
    e = journal_append(&lj->j, type, p, n, &why);
  if (e == 0)
    return 1;
  io_failure(L, NULL, why, e);
  lua_pop(L, 1);      /* the errno */
  lua_remove(L, -2);  /* the nil */
  return 0;
}

int journal_lua_append_at(lua_State *L, int idx, int type, const void *p, size_t n) {
  return append_to(L, (LJournal *)luaL_testudata(L, idx, JOURNAL_TYPENAME), type, p, n);
}

int journal_lua_append_known(lua_State *L, int idx, int type, const void *p, size_t n) {
  return append_to(L, (LJournal *)lua_touserdata(L, idx), type, p, n);
}

/* j:write() and j:sync(): true, or nil, message, errno. */
static int j_flush(lua_State *L, int (*flush)(Journal *, const char **)) {
  LJournal *lj = check_open(L);
  const char *why = NULL;
  int e = flush(&lj->j, &why);
  if (e != 0)
    return io_failure(L, NULL, why, e);
  lua_pushboolean(L, 1);
  return 1;
}

static int j_write(lua_State *L) {
  return j_flush(L, journal_write);
}

static int j_sync(lua_State *L) {
  return j_flush(L, journal_sync);
}

static int j_syncs(lua_State *L) {
  Journal *j = &check_journal(L)->j;
  lua_pushinteger(L, (lua_Integer)j->syncs);
  lua_pushnumber(L, (lua_Number)j->sync_ns / 1e9);
  lua_pushnumber(L, (lua_Number)j->last_sync_ns / 1e9);
  return 3;
}

static int j_size(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_journal(L)->j.size);
  return 1;
}

/* __gc, __close and close: safe twice; returns true or nil, message. */
static int j_close(lua_State *L) {
  LJournal *lj = check_journal(L);
  const char *why = NULL;
  int e;
  if (!lj->open) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lj->open = 0;
  e = journal_close(&lj->j, &why);
  if (e != 0)
    return io_failure(L, NULL, why, e);
  lua_pushboolean(L, 1);
  return 1;
}

static int j_tostring(lua_State *L) {
  LJournal *lj = check_journal(L);
  if (lj->open)
    lua_pushfstring(L, "%s (%I bytes)", JOURNAL_TYPENAME, (lua_Integer)lj->j.size);
  else
    lua_pushfstring(L, "%s (closed)", JOURNAL_TYPENAME);
  return 1;
}

/* ---- reading records ------------------------------------------------ */

/* A live journal is read in windows of this many bytes (more for a record
** that does not fit), not as one buffer of the whole file. */
#ifndef READ_WINDOW  /* fuzz/fuzz_journal.c builds with a small one: many windows */
#define READ_WINDOW (1u << 20)
#endif

/*
** The bytes being read live in the reader userdata itself (upvalue 1 of
** the iterator), so the garbage collector owns them.  buf[0 .. len) holds
** the file's bytes from offset 'base'; the journal (upvalue 2, or nil when
** buf holds the whole file) refills it.
*/
typedef struct Reader {
  size_t end;    /* file offset where reading stops */
  size_t base;   /* file offset of buf[0] */
  size_t len;    /* bytes in buf */
  size_t pos;    /* offset in buf of the next record */
  size_t cap;    /* room in buf */
  unsigned char buf[];
} Reader;

static Reader *new_reader(lua_State *L, size_t cap) {
  Reader *r = (Reader *)lua_newuserdatauv(L, sizeof(Reader) + cap, 0);
  memset(r, 0, sizeof *r);
  r->cap = cap;
  return r;
}

/*
** Have at least 'need' bytes from the next record on in the window (fewer
** only where the journal ends): slide the unread bytes to the front and
** read more, in a larger reader (replacing the one at 'ridx') if it is too
** small; the journal is at 'jidx' (nil: the reader holds the whole file).
*/
static Reader *refill(lua_State *L, int ridx, int jidx, Reader *r, size_t need) {
  LJournal *lj = (LJournal *)lua_touserdata(L, jidx);
  size_t keep = r->len - r->pos, want;
  const char *why = NULL;
  int e;
  if (lj == NULL || !lj->open)
    luaL_error(L, "procman.journal: the journal was closed while its records were read");
  if (need > r->end - (r->base + r->pos))  /* a damaged length: no room past the end */
    need = r->end - (r->base + r->pos);
  if (need > r->cap) {
    Reader *bigger = new_reader(L, need > 2 * r->cap ? need : 2 * r->cap);
    memcpy(bigger, r, sizeof *r);
    bigger->cap = need > 2 * r->cap ? need : 2 * r->cap;
    memcpy(bigger->buf, r->buf + r->pos, keep);
    lua_replace(L, ridx);
    r = bigger;
  }
  else
    memmove(r->buf, r->buf + r->pos, keep);
  r->base += r->pos;
  r->pos = 0;
  r->len = keep;
  want = r->end - (r->base + r->len);
  if (want > r->cap - r->len)
    want = r->cap - r->len;
  e = journal_read_at(&lj->j, r->buf + r->len, want, r->base + r->len, &why);
  if (e != 0)  /* no position: this is the file's fault, not the caller's */
    luaL_error(L, "procman.journal: %s (%s)", why, strerror(e));
  r->len += want;
  return r;
}

/* Bytes of the record at the window's 'pos' as its header says (a header
** cut by the window's end counts as its own size). */
static size_t record_span(const Reader *r) {
  const unsigned char *p = r->buf + r->pos;
  size_t have = r->len - r->pos;
  uint32_t n;
  if (have < JOURNAL_RECORD_HEADER_SIZE)
    return JOURNAL_RECORD_HEADER_SIZE;
  n = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
  return n > JOURNAL_MAX_PAYLOAD ? JOURNAL_RECORD_HEADER_SIZE
                                 : JOURNAL_RECORD_HEADER_SIZE + (size_t)n;
}

/* The window holds the rest of the journal: nothing more to read. */
static int reads_to_end(const Reader *r) {
  return r->base + r->len >= r->end;
}

/* The next intact record of the reader at 'ridx' (the journal at 'jidx'):
** 1 with its offset, type and payload (valid until the next call), or 0
** at the end. */
static int read_next(lua_State *L, int ridx, int jidx, size_t *offset, int *type,
                     const unsigned char **payload, size_t *len) {
  Reader *r = (Reader *)lua_touserdata(L, ridx);
  const char *why;
  if (r->base + r->pos >= r->end)
    return 0;
  while (!reads_to_end(r) && record_span(r) > r->len - r->pos)
    r = refill(L, ridx, jidx, r, record_span(r));  /* the header first, then the rest */
  if (!journal_record_at(r->buf, r->len, r->pos, type, len, &why)) {
    if (!reads_to_end(r))  /* a repaired range: look for what follows in the rest */
      r = refill(L, ridx, jidx, r, r->end - (r->base + r->pos));
    r->pos = journal_resync(r->buf, r->len, r->pos);
    if (r->pos >= r->len)
      return 0;
    journal_record_at(r->buf, r->len, r->pos, type, len, &why);
  }
  *offset = r->base + r->pos;
  *payload = r->buf + r->pos + JOURNAL_RECORD_HEADER_SIZE;
  r->pos += JOURNAL_RECORD_HEADER_SIZE + *len;
  return 1;
}

int journal_lua_next(lua_State *L, int ridx, int jidx, size_t *offset, int *type,
                     const unsigned char **payload, size_t *len) {
  return read_next(L, lua_absindex(L, ridx), lua_absindex(L, jidx), offset, type, payload, len);
}

/* The iterator: offset, type, payload of the next intact record. */
static int reader_next(lua_State *L) {
  size_t offset, len;
  int type;
  const unsigned char *payload;
  if (!read_next(L, lua_upvalueindex(1), lua_upvalueindex(2), &offset, &type, &payload, &len))
    return 0;
  lua_pushinteger(L, (lua_Integer)offset);
  lua_pushinteger(L, type);
  lua_pushlstring(L, (const char *)payload, len);
  return 3;
}

/* Push a reader of the journal at 'jidx' from byte 'from' (a record's
** offset, or the first record) to its size now. */
static void push_reader(lua_State *L, LJournal *lj, size_t from) {
  size_t size = lj->j.size;
  size_t cap = size - from < READ_WINDOW ? size - from : READ_WINDOW;
  Reader *r = new_reader(L, cap);
  r->end = size;
  r->base = from;
}

/* The start of reading: 'from' at index 'idx' (a record's offset from a
** reader) or the first record. */
static size_t check_from(lua_State *L, int idx, const LJournal *lj) {
  lua_Integer from = luaL_optinteger(L, idx, JOURNAL_HEADER_SIZE);
  luaL_argcheck(L, from >= (lua_Integer)JOURNAL_HEADER_SIZE && (lua_Unsigned)from <= lj->j.size,
                idx, "not a record offset of this journal");
  return (size_t)from;
}

int journal_lua_reader(lua_State *L, int jidx, lua_Integer from) {
  LJournal *lj = (LJournal *)luaL_checkudata(L, jidx, JOURNAL_TYPENAME);
  if (!lj->open)
    luaL_error(L, "procman.journal: the journal is closed");
  if (from < (lua_Integer)JOURNAL_HEADER_SIZE || (lua_Unsigned)from > lj->j.size)
    luaL_error(L, "procman.journal: %I is not a record offset of this journal", from);
  push_reader(L, lj, (size_t)from);
  return 1;
}

/*
** j:records([from]): the records as they are now (later appends are not
** seen), from the record at byte 'from' on (a record offset a reader gave:
** recovery goes on where its scan stopped), read in windows: memory in
** proportion to the largest record, not to the journal.
*/
static int j_records(lua_State *L) {
  LJournal *lj = check_open(L);
  size_t from = check_from(L, 2, lj);
  lua_settop(L, 1);
  push_reader(L, lj, from);                                  /* 2 */
  lua_pushvalue(L, 1);
  lua_pushcclosure(L, reader_next, 2);
  return 1;
}

/*
** Read the file at 'path' into a new Reader (pushed even on failure); 0 or
** errno.  The size comes from stat() and the buffer is allocated before
** the file is opened, so a memory error cannot leak the FILE.  Bytes
** appended meanwhile are not read (they would look like a torn tail).
*/
static int read_whole_file(lua_State *L, const char *path) {
  struct stat st;
  FILE *f;
  Reader *r;
  size_t got;
  int e = 0;
  if (stat(path, &st) != 0)
    e = errno;
  else if (S_ISDIR(st.st_mode))
    e = EISDIR;  /* fopen() would open it, and fread() fail with EIO */
  if (e != 0) {
    lua_pushnil(L);
    return e;
  }
  r = new_reader(L, (size_t)st.st_size);
  r->pos = JOURNAL_HEADER_SIZE;
  f = fopen(path, "rb");
  if (f == NULL)
    return errno;
  got = fread(r->buf, 1, (size_t)st.st_size, f);
  if (got != (size_t)st.st_size)
    e = ferror(f) ? EIO : EAGAIN;  /* cut shorter while we read */
  fclose(f);
  r->len = r->end = got;
  return e;
}

/*
** core.journal_scan(path) -> iterator, info | nil, message, errno: the
** records of a journal as it is on disk, without taking its lock or
** changing it (for tools that look at a journal a router may be using).
** A torn tail is left out (and counted in info.dropped); a damaged range
** is skipped (info.damaged_at, info.resume_at).
*/
int journal_lua_scan(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  JournalScan scan;
  Reader *r;
  int e;
  lua_settop(L, 1);
  e = read_whole_file(L, path);  /* 2: the reader (or nothing) */
  if (e == EISDIR)
    return io_failure(L, path, "is a directory, not a journal: name the journal file", e);
  if (e != 0)
    return io_failure(L, path, "cannot read the journal", e);
  r = (Reader *)lua_touserdata(L, 2);
  journal_scan(r->buf, r->len, &scan);
  if (scan.bad_header)
    return io_failure(L, path, scan.why, EILSEQ);
  r->len = r->end = scan.end;  /* the whole file: no journal to read more from */
  lua_pushnil(L);
  lua_pushcclosure(L, reader_next, 2);
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, (lua_Integer)scan.records);
  lua_setfield(L, -2, "records");
  lua_pushinteger(L, (lua_Integer)(scan.end + scan.dropped));
  lua_setfield(L, -2, "bytes");
  lua_pushinteger(L, (lua_Integer)scan.dropped);
  lua_setfield(L, -2, "dropped");
  if (scan.damaged_at != 0) {
    lua_pushinteger(L, (lua_Integer)scan.damaged_at);
    lua_setfield(L, -2, "damaged_at");
    lua_pushinteger(L, (lua_Integer)scan.resume_at);
    lua_setfield(L, -2, "resume_at");
  }
  return 2;
}

static const luaL_Reg journal_methods[] = {
  { "append", j_append },
  { "write", j_write },
  { "sync", j_sync },
  { "size", j_size },
  { "syncs", j_syncs },
  { "records", j_records },
  { "close", j_close },
  { NULL, NULL }
};

void journal_lua_register(lua_State *L) {
  luaL_newmetatable(L, JOURNAL_TYPENAME);
  lua_pushcfunction(L, j_close);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__gc");
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, j_tostring);
  lua_setfield(L, -2, "__tostring");
  luaL_newlib(L, journal_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}
