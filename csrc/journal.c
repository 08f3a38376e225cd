/*
** journal.c - the journal's file format and file (see journal.h and
** docs/journal-format.md).  Plain C and POSIX: no Lua here, so the format
** can be tested, fuzzed and read by other programs on its own.
*/
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE  /* flock, MAP_FAILED on glibc */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "crc32c.h"
#include "faults.h"
#include "journal.h"

/* ===================================================================
** The format
** =================================================================== */

static void put_u32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)(v & 0xff);
  p[1] = (unsigned char)((v >> 8) & 0xff);
  p[2] = (unsigned char)((v >> 16) & 0xff);
  p[3] = (unsigned char)((v >> 24) & 0xff);
}

static uint32_t get_u32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}

void journal_header(unsigned char out[JOURNAL_HEADER_SIZE]) {
  memcpy(out, JOURNAL_MAGIC, 8);
  put_u32(out + 8, JOURNAL_VERSION);
  put_u32(out + 12, crc32c_mask(crc32c(out, 12)));
}

/* The checksum covers the type byte and the payload. */
static uint32_t record_crc(int type, const void *p, size_t n) {
  unsigned char t = (unsigned char)type;
  return crc32c_mask(crc32c_extend(crc32c(&t, 1), p, n));
}

void journal_frame(unsigned char out[JOURNAL_RECORD_HEADER_SIZE], int type,
                   const void *p, size_t n) {
  put_u32(out, (uint32_t)n);
  put_u32(out + 4, record_crc(type, p, n));
  out[8] = (unsigned char)type;
}

int journal_record_at(const unsigned char *buf, size_t size, size_t off,
                      int *type, size_t *len, const char **why) {
  size_t n;
  if (off > size || size - off < JOURNAL_RECORD_HEADER_SIZE) {
    *why = "a record header cut short";
    return 0;
  }
  n = get_u32(buf + off);
  if (buf[off + 8] == 0) {
    *why = "a record of type 0";  /* zeroed space, never written by us */
    return 0;
  }
  if (n > JOURNAL_MAX_PAYLOAD) {
    *why = "a record length beyond the limit";
    return 0;
  }
  if (size - off - JOURNAL_RECORD_HEADER_SIZE < n) {
    *why = "a record cut short";
    return 0;
  }
  if (get_u32(buf + off + 4) !=
      record_crc(buf[off + 8], buf + off + JOURNAL_RECORD_HEADER_SIZE, n)) {
    *why = "a record whose checksum does not match";
    return 0;
  }
  *type = buf[off + 8];
  *len = n;
  return 1;
}

size_t journal_resync(const unsigned char *buf, size_t size, size_t off) {
  for (; off < size; off++) {
    int type;
    size_t len;
    const char *why;
    if (journal_record_at(buf, size, off, &type, &len, &why))
      return off;
  }
  return size;
}

static int check_header(const unsigned char *buf, const char **why) {
  if (memcmp(buf, JOURNAL_MAGIC, 8) != 0) {
    *why = "not a procman journal (bad magic)";
    return 0;
  }
  if (get_u32(buf + 12) != crc32c_mask(crc32c(buf, 12))) {
    *why = "a journal header whose checksum does not match";
    return 0;
  }
  if (get_u32(buf + 8) != JOURNAL_VERSION) {
    *why = "a journal format version this procman cannot read";
    return 0;
  }
  return 1;
}

/* Are the 'size' (< 16) bytes the start of a header we would write? */
static int is_header_prefix(const unsigned char *buf, size_t size) {
  unsigned char h[JOURNAL_HEADER_SIZE];
  journal_header(h);
  return memcmp(buf, h, size) == 0;
}

/* Walk intact records from 'off'; returns where they stop. */
static size_t scan_intact(const unsigned char *buf, size_t size, size_t off,
                          uint64_t *records, const char **why) {
  int type;
  size_t len;
  while (off < size && journal_record_at(buf, size, off, &type, &len, why)) {
    off += JOURNAL_RECORD_HEADER_SIZE + len;
    (*records)++;
  }
  return off;
}

/* Does the bad record at 'off' have a sane header and a length that ends
** exactly at the end of the file?  Then it was written whole (a crash
** leaves fewer bytes than the length says, or zeroes with type 0), and a
** checksum that fails there is damage, not a torn tail. */
static int written_whole(const unsigned char *buf, size_t size, size_t off) {
  if (size - off < JOURNAL_RECORD_HEADER_SIZE || buf[off + 8] == 0)
    return 0;
  return get_u32(buf + off) == size - off - JOURNAL_RECORD_HEADER_SIZE;
}

void journal_scan(const unsigned char *buf, size_t size, JournalScan *scan) {
  size_t off = JOURNAL_HEADER_SIZE;
  memset(scan, 0, sizeof *scan);
  if (size < JOURNAL_HEADER_SIZE) {  /* empty, or torn while being created */
    if (size > 0 && !is_header_prefix(buf, size)) {
      scan->bad_header = 1;  /* someone else's file: never overwrite it */
      scan->why = "not a procman journal (bad magic)";
      return;
    }
    scan->dropped = size;
    scan->why = size > 0 ? "a journal header cut short" : NULL;
    return;
  }
  if (!check_header(buf, &scan->why)) {
    scan->bad_header = 1;
    return;
  }
  scan->end = scan_intact(buf, size, off, &scan->records, &scan->why);
  if (scan->end == size) {
    scan->why = NULL;
    return;
  }
  scan->resume_at = journal_resync(buf, size, scan->end + 1);
  if (scan->resume_at == size && written_whole(buf, size, scan->end)) {
    scan->damaged_at = scan->end;  /* the last record, damaged */
    scan->end = size;
    return;
  }
  if (scan->resume_at == size) {  /* nothing intact follows: a torn tail */
    scan->dropped = size - scan->end;
    return;
  }
  /* damage in the middle: note where, and count what is intact after it,
  ** for readers that skip it (repair); a torn tail may still follow */
  scan->damaged_at = scan->end;
  off = scan->resume_at;
  for (;;) {
    const char *why;
    off = scan_intact(buf, size, off, &scan->records, &why);
    scan->end = off;
    if (off == size)
      break;
    off = journal_resync(buf, size, off + 1);
    if (off == size) {
      scan->dropped = size - scan->end;
      break;
    }
  }
}

/* ===================================================================
** The file
** =================================================================== */

/* ---- file operations: each one behind the fault gate of test builds ---- */

static int io_open(const char *path, int flags, mode_t mode) {
  return FAULT() ? -1 : open(path, flags, mode);
}

static ssize_t io_writev(int fd, struct iovec *iov, int count) {
  return FAULT_WRITEV(fd, iov, count);
}

static int io_fdatasync(int fd) {
  return FAULT() ? -1 : fdatasync(fd);
}

static int io_fsync(int fd) {
  return FAULT() ? -1 : fsync(fd);
}

static int io_ftruncate(int fd, off_t len) {
  return FAULT() ? -1 : ftruncate(fd, len);
}

static int io_rename(const char *from, const char *to) {
  return FAULT() ? -1 : rename(from, to);
}

static ssize_t io_pread(int fd, void *buf, size_t n, off_t off) {
  return FAULT() ? -1 : pread(fd, buf, n, off);
}

static void *io_mmap(size_t size, int fd) {
  return FAULT() ? MAP_FAILED : mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
}

/* ---- failures ---- */

static int fail(const char **why, const char *what) {
  int e = errno;
  *why = what;
  return e != 0 ? e : EIO;
}

/* Write all of iov (two parts), retrying short writes and EINTR. */
static int write_all(int fd, struct iovec *iov, int count) {
  while (count > 0) {
    ssize_t w = io_writev(fd, iov, count);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    while (count > 0 && (size_t)w >= iov->iov_len) {
      w -= (ssize_t)iov->iov_len;
      iov++;
      count--;
    }
    if (count > 0) {
      iov->iov_base = (char *)iov->iov_base + w;
      iov->iov_len -= (size_t)w;
    }
  }
  return 0;
}

static uint64_t monotonic_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int sync_fd(int fd) {
  int r;
  do r = io_fdatasync(fd); while (r != 0 && errno == EINTR);
  return r;
}

/* Make a file's creation durable: fsync the directory that holds it. */
static int sync_parent_dir(const char *path) {
  char dir[PATH_MAX];
  const char *slash = strrchr(path, '/');
  size_t n = slash == NULL ? 1 : (slash == path ? 1 : (size_t)(slash - path));
  int fd, r;
  if (n >= sizeof dir) {
    errno = ENAMETOOLONG;
    return -1;
  }
  memcpy(dir, slash == NULL ? "." : path, n);
  dir[n] = '\0';
  fd = io_open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  r = io_fsync(fd);
  close(fd);
  return r;
}

/* Give an empty (or torn-header) file its header, durably. */
static int write_header(Journal *j, const char *path, const char **why) {
  unsigned char h[JOURNAL_HEADER_SIZE];
  struct iovec iov;
  journal_header(h);
  iov.iov_base = h;
  iov.iov_len = sizeof h;
  if (io_ftruncate(j->fd, 0) != 0 || write_all(j->fd, &iov, 1) != 0)
    return fail(why, "cannot write the journal header");
  if (sync_fd(j->fd) != 0 || sync_parent_dir(path) != 0)
    return fail(why, "cannot sync the new journal");
  j->size = j->written = JOURNAL_HEADER_SIZE;
  return 0;
}

/* Scan the file as it is on disk; 0 or an errno. */
static int scan_file(Journal *j, size_t size, JournalScan *scan, const char **why) {
  const unsigned char *buf;
  if (size == 0) {
    journal_scan(NULL, 0, scan);
    return 0;
  }
  buf = io_mmap(size, j->fd);
  if (buf == MAP_FAILED)
    return fail(why, "cannot map the journal to read it");
  journal_scan(buf, size, scan);
  munmap((void *)buf, size);
  return 0;
}

/* The default memory of the write buffer: the C library's. */
static void *plain_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  (void)osize;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  return realloc(ptr, nsize);
}

/* A closed journal with the policy 'sync' and no buffer yet. */
static void init(Journal *j, JournalSync sync) {
  memset(j, 0, sizeof *j);
  j->fd = -1;
  j->sync = sync;
  j->alloc = plain_alloc;
}

void journal_set_alloc(Journal *j, JournalAlloc alloc, void *ud) {
  j->alloc = alloc;
  j->alloc_ud = ud;
}

static int open_locked(Journal *j, const char *path, int flags, size_t *size,
                       const char **why) {
  struct stat st;
  j->fd = io_open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC | flags, 0600);
  if (j->fd < 0)
    return fail(why, "cannot open the journal");
  if (flock(j->fd, LOCK_EX | LOCK_NB) != 0)
    return fail(why, errno == EWOULDBLOCK ? "the journal is in use by another process"
                                          : "cannot lock the journal");
  if (fstat(j->fd, &st) != 0)
    return fail(why, "cannot stat the journal");
  if (!S_ISREG(st.st_mode)) {
    errno = EINVAL;
    return fail(why, "the journal is not a regular file");
  }
  if ((uintmax_t)st.st_size > SIZE_MAX) {
    errno = EFBIG;
    return fail(why, "the journal is too large to read here");
  }
  *size = (size_t)st.st_size;
  return 0;
}

/* Act on what the scan found: new header, cut tail, or refuse damage. */
static int settle(Journal *j, const char *path, size_t size, int repair,
                  const JournalScan *scan, const char **why) {
  if (scan->bad_header) {
    errno = EILSEQ;
    return fail(why, scan->why);
  }
  if (scan->damaged_at != 0 && !repair) {
    errno = EILSEQ;
    return fail(why, scan->why);
  }
  if (size < JOURNAL_HEADER_SIZE)
    return write_header(j, path, why);
  if (scan->dropped > 0) {  /* cut the torn tail, durably */
    if (io_ftruncate(j->fd, (off_t)scan->end) != 0 || sync_fd(j->fd) != 0)
      return fail(why, "cannot cut the torn tail of the journal");
    size = scan->end;
  }
  j->size = j->written = size;
  return 0;
}

int journal_open(Journal *j, const char *path, JournalSync sync, int repair,
                 JournalScan *scan, const char **why) {
  size_t size = 0;
  int e;
  init(j, sync);
  memset(scan, 0, sizeof *scan);
  errno = 0;
  e = open_locked(j, path, 0, &size, why);
  if (e == 0)
    e = scan_file(j, size, scan, why);
  if (e == 0)
    e = settle(j, path, size, repair, scan, why);
  if (e != 0 && j->fd >= 0) {
    close(j->fd);
    j->fd = -1;
  }
  return e;
}

int journal_create(Journal *j, const char *path, JournalSync sync, const char **why) {
  size_t size = 0;
  int e;
  init(j, sync);
  errno = 0;
  e = open_locked(j, path, O_EXCL, &size, why);
  if (e == 0)
    e = write_header(j, path, why);
  if (e != 0 && j->fd >= 0) {  /* O_EXCL: the file is ours; leave none behind */
    close(j->fd);
    j->fd = -1;
    unlink(path);
  }
  return e;
}

int journal_replace(const char *from, const char *to, int *renamed, const char **why) {
  errno = 0;
  *renamed = 0;
  if (io_rename(from, to) != 0)
    return fail(why, "cannot rename the new journal into place");
  *renamed = 1;
  if (sync_parent_dir(to) != 0)
    return fail(why, "cannot sync the journal's directory");
  return 0;
}

/* ---- appending ---- */

static int refused(const Journal *j, const char **why) {
  if (j->fd < 0) {
    *why = "the journal is closed";
    return EBADF;
  }
  if (j->lost) {
    *why = "an earlier write of the journal lost records it had accepted; reopen it";
    return j->failed;
  }
  if (j->failed != 0) {
    *why = "an earlier write or sync of the journal failed; reopen it";
    return j->failed;
  }
  return 0;
}

/*
** Write the buffered records.  A failure loses them (their appends have
** returned): the file is cut back to its last whole record (if that fails
** too, the torn tail is cut on open) and the journal fails, since a later
** record must never follow a gap.
*/
static int drain(Journal *j, const char **why) {
  struct iovec iov;
  if (j->buf_len == 0)
    return 0;
  iov.iov_base = j->buf;
  iov.iov_len = j->buf_len;
  if (write_all(j->fd, &iov, 1) != 0) {
    j->failed = fail(why, "cannot write the journal's buffered records, which are lost "
                     "(the file keeps the records before them); reopen the journal");
    j->lost = 1;
    io_ftruncate(j->fd, (off_t)j->written);
    j->buf_len = 0;
    j->size = j->written;
    return j->failed;
  }
  j->written += j->buf_len;
  j->buf_len = 0;
  j->dirty = 1;
  return 0;
}

/* Write one record now, whole or not at all: on failure the file is cut
** back, and only if that fails too does the journal refuse more. */
static int write_record(Journal *j, const unsigned char *frame, const void *p, size_t n,
                        const char **why) {
  struct iovec iov[2];
  iov[0].iov_base = (void *)frame;
  iov[0].iov_len = JOURNAL_RECORD_HEADER_SIZE;
  iov[1].iov_base = (void *)p;
  iov[1].iov_len = n;
  if (write_all(j->fd, iov, 2) != 0) {
    int e = fail(why, "cannot write to the journal");
    if (io_ftruncate(j->fd, (off_t)j->written) != 0)
      j->failed = e;
    return e;
  }
  j->dirty = 1;
  j->written += JOURNAL_RECORD_HEADER_SIZE + n;
  j->size = j->written;
  return 0;
}

/* "always": written and synced before the append returns; a failed sync
** takes the record back (the caller is told it failed). */
static int append_synced(Journal *j, const unsigned char *frame, const void *p, size_t n,
                         const char **why) {
  size_t at = j->written;
  int e = write_record(j, frame, p, n, why);
  if (e == 0 && (e = journal_sync(j, why)) != 0) {
    io_ftruncate(j->fd, (off_t)at);
    j->size = j->written = at;
  }
  return e;
}

/* Room for 'need' more bytes in the buffer (buf_len + need <= CHUNK)?
** Grows it by doubling; 0 when there is no memory for it. */
static int reserve(Journal *j, size_t need) {
  size_t cap = j->buf_cap > 0 ? j->buf_cap : 4096;
  unsigned char *bigger;
  if (j->buf_cap - j->buf_len >= need)
    return 1;
  while (cap - j->buf_len < need)
    cap *= 2;
  if (cap > JOURNAL_CHUNK)
    cap = JOURNAL_CHUNK;
  bigger = (unsigned char *)j->alloc(j->alloc_ud, j->buf, j->buf_cap, cap);
  if (bigger == NULL)
    return 0;
  j->buf = bigger;
  j->buf_cap = cap;
  return 1;
}

/* "batch", "none": into the buffer, or (too large, or no memory for it)
** written at once after what the buffer holds. */
static int append_buffered(Journal *j, const unsigned char *frame, const void *p, size_t n,
                           const char **why) {
  size_t rec = JOURNAL_RECORD_HEADER_SIZE + n;
  int e;
  if (rec > JOURNAL_CHUNK - j->buf_len && (e = drain(j, why)) != 0)
    return e;
  if (rec <= JOURNAL_CHUNK && reserve(j, rec)) {
    memcpy(j->buf + j->buf_len, frame, JOURNAL_RECORD_HEADER_SIZE);
    memcpy(j->buf + j->buf_len + JOURNAL_RECORD_HEADER_SIZE, p, n);
    j->buf_len += rec;
    j->size += rec;
    return 0;
  }
  if ((e = drain(j, why)) != 0)
    return e;
  return write_record(j, frame, p, n, why);
}

int journal_append(Journal *j, int type, const void *p, size_t n, const char **why) {
  unsigned char frame[JOURNAL_RECORD_HEADER_SIZE];
  int e = refused(j, why);
  if (e != 0)
    return e;
  if (type < 1 || type > 255 || n > JOURNAL_MAX_PAYLOAD) {
    *why = "a record type outside 1..255 or a payload beyond the limit";
    return EINVAL;
  }
  journal_frame(frame, type, p, n);
  if (j->sync == JOURNAL_SYNC_ALWAYS)
    return append_synced(j, frame, p, n, why);
  return append_buffered(j, frame, p, n, why);
}

int journal_write(Journal *j, const char **why) {
  if (j->fd < 0 || j->lost)
    return refused(j, why);
  return drain(j, why);
}

int journal_sync(Journal *j, const char **why) {
  uint64_t started;
  int e = refused(j, why);
  if (e != 0 || (e = drain(j, why)) != 0)
    return e;
  if (!j->dirty)
    return 0;
  started = monotonic_ns();
  if (sync_fd(j->fd) != 0) {
    /* after a failed fsync the kernel may have dropped the dirty pages: no
    ** later fsync can be trusted to mean anything, so stop here */
    j->failed = fail(why, "cannot sync the journal");
    return j->failed;
  }
  j->last_sync_ns = monotonic_ns() - started;
  j->sync_ns += j->last_sync_ns;
  j->syncs++;
  j->dirty = 0;
  return 0;
}

int journal_close(Journal *j, const char **why) {
  int e = 0;
  if (j->fd < 0)
    return 0;
  if (j->failed == 0)
    e = j->sync == JOURNAL_SYNC_NONE ? drain(j, why) : journal_sync(j, why);
  if (close(j->fd) != 0 && e == 0)
    e = fail(why, "cannot close the journal");
  j->fd = -1;
  if (j->buf != NULL)
    j->alloc(j->alloc_ud, j->buf, j->buf_cap, 0);
  j->buf = NULL;
  j->buf_len = j->buf_cap = 0;
  return e;
}

int journal_read_at(Journal *j, void *buf, size_t n, size_t off, const char **why) {
  size_t done = 0;
  if (j->fd < 0) {
    *why = "the journal is closed";
    return EBADF;
  }
  if (off + n > j->written) {  /* into the buffer: the file must have it first */
    int e = journal_write(j, why);
    if (e != 0)
      return e;
  }
  while (done < n) {
    ssize_t r = io_pread(j->fd, (char *)buf + done, n - done, (off_t)(off + done));
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0) {
      if (r == 0)
        errno = EIO;  /* shorter than we know it is: someone cut it */
      return fail(why, "cannot read the journal");
    }
    done += (size_t)r;
  }
  return 0;
}

int journal_read(Journal *j, void *buf, size_t size, const char **why) {
  return journal_read_at(j, buf, size, 0, why);
}
