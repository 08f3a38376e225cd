/*
** line_reader.c - reading lines from a file descriptor, with a timeout.
**
** `procman run` must fire timers while its input is quiet, so it cannot
** block in a stdio read: Lua's io library offers no way to wait for a line
** for at most so long. terminal.line_reader(fd) reads the descriptor itself
** (read(2) after poll(2), never through a FILE, whose buffer poll cannot
** see) and keeps what it read past the last line in a buffer that is a
** Lua userdata (a user value), grown by doubling: nothing here is
** malloc'ed, so no error can leak memory, and a long line costs linear
** time (each byte is looked at once for the newline).
**
**   local reader = terminal.line_reader(0)
**   reader:read([seconds]) -> line (without its "\n"), or false when the
**     seconds passed without a whole line, or nil at the end of input (a
**     last line without "\n" comes first); nil, message on a read error.
**   reader:close(): forget what is buffered (the descriptor stays open).
*/
#define _POSIX_C_SOURCE 200809L  /* poll, clock_gettime, ssize_t */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lauxlib.h"
#include "line_reader.h"

#define LINE_READER_TYPENAME "procman.line_reader"
#define CHUNK 65536

enum { UV_BUFFER = 1 };  /* a userdata of 'cap' bytes: the bytes read */

typedef struct LineReader {
  int fd;
  int eof;
  size_t start;    /* the first byte not yet returned */
  size_t scanned;  /* bytes before this are known not to be a newline */
  size_t end;      /* the end of the bytes read */
  size_t cap;      /* the buffer's size */
} LineReader;

static LineReader *check_reader(lua_State *L) {
  return (LineReader *)luaL_checkudata(L, 1, LINE_READER_TYPENAME);
}

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char *buffer_of(lua_State *L) {
  char *buf;
  lua_getiuservalue(L, 1, UV_BUFFER);
  buf = (char *)lua_touserdata(L, -1);
  lua_pop(L, 1);  /* still referenced by the reader: it stays put */
  return buf;
}

/* Push the next whole line of the buffer; 0 if there is none yet. */
static int push_line(lua_State *L, LineReader *r) {
  const char *buf = buffer_of(L);
  const char *nl = memchr(buf + r->scanned, '\n', r->end - r->scanned);
  size_t stop;
  if (nl == NULL) {
    r->scanned = r->end;
    if (!(r->eof && r->start < r->end))
      return 0;
    stop = r->end;  /* the end of input ends the last line */
  }
  else
    stop = (size_t)(nl - buf);
  lua_pushlstring(L, buf + r->start, stop - r->start);
  r->start = r->scanned = stop + (nl != NULL);
  return 1;
}

/* Make room for a chunk after 'end': move the unreturned bytes to the
** front, or move them into a buffer twice as big (a new userdata, which
** replaces the old one only once it is there). */
static char *make_room(lua_State *L, LineReader *r) {
  char *buf = buffer_of(L);
  size_t kept = r->end - r->start;
  if (r->cap - r->end >= CHUNK)
    return buf;
  if (r->cap - kept >= CHUNK && r->start > 0)
    memmove(buf, buf + r->start, kept);
  else {
    size_t cap = r->cap * 2 >= kept + CHUNK ? r->cap * 2 : kept + CHUNK;
    char *bigger = (char *)lua_newuserdatauv(L, cap, 0);
    memcpy(bigger, buf + r->start, kept);
    lua_setiuservalue(L, 1, UV_BUFFER);
    buf = bigger;
    r->cap = cap;
  }
  r->scanned -= r->start;
  r->start = 0;
  r->end = kept;
  return buf;
}

/* Read one chunk into the buffer. Returns 0, or -1 with errno set. */
static int read_chunk(lua_State *L, LineReader *r) {
  char *buf = make_room(L, r);
  ssize_t n;
  do
    n = read(r->fd, buf + r->end, r->cap - r->end);
  while (n < 0 && errno == EINTR);
  if (n < 0)
    return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
  if (n == 0)
    r->eof = 1;
  r->end += (size_t)n;
  return 0;
}

/* Wait until the descriptor is readable or 'deadline' passes (< 0: no
** deadline). Returns 1 when readable, 0 on timeout, -1 on error. */
static int wait_readable(int fd, double deadline) {
  for (;;) {
    struct pollfd p;
    int ms = -1, n;
    if (deadline >= 0) {  /* past it, still look once: what is there is read */
      double left = deadline - now_seconds();
      ms = left <= 0 ? 0 : left > 86400.0 ? 86400000 : (int)(left * 1000.0) + 1;
    }
    p.fd = fd;
    p.events = POLLIN;
    p.revents = 0;
    n = poll(&p, 1, ms);
    if (n > 0)
      return 1;  /* readable, or hung up / in error: read() will say */
    if (n == 0 && ms >= 0 && deadline - now_seconds() <= 0)
      return 0;
    if (n < 0 && errno != EINTR)
      return -1;
  }
}

static int reader_read(lua_State *L) {
  LineReader *r = check_reader(L);
  double deadline = -1;
  if (!lua_isnoneornil(L, 2)) {
    lua_Number seconds = luaL_checknumber(L, 2);
    luaL_argcheck(L, seconds == seconds && seconds >= 0, 2, "seconds must be >= 0");
    deadline = now_seconds() + (double)seconds;
  }
  luaL_argcheck(L, r->fd >= 0, 1, "this line reader is closed");
  lua_settop(L, 1);
  for (;;) {
    int ready;
    if (push_line(L, r))
      return 1;
    if (r->eof) {
      lua_pushnil(L);
      return 1;
    }
    ready = wait_readable(r->fd, deadline);
    if (ready == 0) {
      lua_pushboolean(L, 0);
      return 1;
    }
    if (ready < 0 || read_chunk(L, r) < 0) {
      int err = errno;
      luaL_pushfail(L);
      lua_pushfstring(L, "cannot read file descriptor %d: %s", r->fd, strerror(err));
      return 2;
    }
  }
}

/* __gc, __close and close: forget the buffer; the descriptor is not ours. */
static int reader_close(lua_State *L) {
  LineReader *r = check_reader(L);
  r->fd = -1;
  r->start = r->scanned = r->end = r->cap = 0;
  lua_pushnil(L);
  lua_setiuservalue(L, 1, UV_BUFFER);
  return 0;
}

static int reader_tostring(lua_State *L) {
  LineReader *r = check_reader(L);
  if (r->fd < 0)
    lua_pushliteral(L, LINE_READER_TYPENAME " (closed)");
  else
    lua_pushfstring(L, LINE_READER_TYPENAME " (fd %d)", r->fd);
  return 1;
}

int line_reader_new(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  LineReader *r;
  luaL_argcheck(L, fd >= 0 && fd <= 1024 * 1024, 1, "a file descriptor expected");
  r = (LineReader *)lua_newuserdatauv(L, sizeof *r, 1);
  r->fd = -1;  /* closed until the buffer is there */
  r->eof = 0;
  r->start = r->scanned = r->end = r->cap = 0;
  luaL_setmetatable(L, LINE_READER_TYPENAME);
  lua_newuserdatauv(L, CHUNK, 0);
  lua_setiuservalue(L, -2, UV_BUFFER);
  r->cap = CHUNK;
  r->fd = (int)fd;
  return 1;
}

void line_reader_register(lua_State *L) {
  static const luaL_Reg methods[] = {
    { "read", reader_read },
    { "close", reader_close },
    { NULL, NULL }
  };
  if (!luaL_newmetatable(L, LINE_READER_TYPENAME)) {
    lua_pop(L, 1);
    return;
  }
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, reader_close);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__gc");
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, reader_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
}
