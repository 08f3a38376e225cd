/*
** journal.h - the journal's file format and file: an append-only file of
** checksummed records.  See docs/journal-format.md.
**
**   file    = header record*
**   header  = magic "procmanJ" (8) | version u32 LE | masked CRC-32C of
**             the 12 bytes before it, u32 LE                 (16 bytes)
**   record  = length u32 LE | masked CRC-32C of type and payload, u32 LE |
**             type u8 (1..255) | payload (length bytes)
**
** What records mean (events, acks, snapshots) is up to the layer above;
** this layer only promises that a record is read back whole and intact, or
** not at all, and tells a torn tail (normal after a crash) from damage in
** the middle (reported with its offset).
*/
#ifndef PROCMAN_JOURNAL_H
#define PROCMAN_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

#define JOURNAL_MAGIC "procmanJ"
#define JOURNAL_VERSION 1u
#define JOURNAL_HEADER_SIZE 16u
#define JOURNAL_RECORD_HEADER_SIZE 9u
#define JOURNAL_MAX_PAYLOAD (1u << 30)  /* larger lengths are damage */

/* ---- the format, on bytes in memory -------------------------------- */

/* The 16 header bytes of a new journal. */
void journal_header(unsigned char out[JOURNAL_HEADER_SIZE]);

/* The 9 bytes that frame a record of 'type' (1..255) and payload p[n]. */
void journal_frame(unsigned char out[JOURNAL_RECORD_HEADER_SIZE], int type,
                   const void *p, size_t n);

/* Is there a whole, intact record at 'off' of buf[size]?  Returns 1 with
** its type and payload length, or 0 with 'why' set to a static reason. */
int journal_record_at(const unsigned char *buf, size_t size, size_t off,
                      int *type, size_t *len, const char **why);

/* What a scan of a whole journal found. */
typedef struct JournalScan {
  uint64_t records;     /* intact records (skipping damaged ranges) */
  size_t end;           /* just past the last intact record */
  size_t dropped;       /* bytes after 'end' that form no record: a torn tail */
  size_t damaged_at;    /* the first bad record that intact ones follow (0: none) */
  size_t resume_at;     /* the first intact record after it */
  const char *why;      /* what was wrong at 'damaged_at' or with the header */
  int bad_header;       /* 1: not a journal, or a version we cannot read */
} JournalScan;

/*
** Scan buf[size] from the header on.  Records are read until one is bad;
** if an intact record follows somewhere after it, that is damage in the
** middle (damaged_at, resume_at, and the scan goes on from there), else
** it is a torn tail: the 'dropped' bytes after 'end'.  A bad last record
** whose length ends exactly at the end of the file was written whole:
** that is damage too (damaged_at; resume_at = end = size), not a tail.  A buffer shorter
** than the header is a torn header (dropped = size) if it is the start of
** one, else not a journal.
*/
void journal_scan(const unsigned char *buf, size_t size, JournalScan *scan);

/* The first intact record at or after 'off' (size if none). */
size_t journal_resync(const unsigned char *buf, size_t size, size_t off);

/* ---- the file -------------------------------------------------------- */

typedef enum { JOURNAL_SYNC_ALWAYS, JOURNAL_SYNC_BATCH, JOURNAL_SYNC_NONE } JournalSync;

/* Memory for the write buffer, in lua_Alloc's shape (nsize 0: free; NULL:
** no memory).  The default is realloc/free; the Lua binding gives the
** state's allocator, so the OOM harness reaches the buffer too. */
typedef void *(*JournalAlloc)(void *ud, void *ptr, size_t osize, size_t nsize);

/* "batch" and "none" gather records in a buffer of up to this many bytes
** and write it in one call when the next record does not fit (and at
** journal_write, journal_sync, journal_close).  A larger record is written
** on its own, after the buffer. */
#define JOURNAL_CHUNK (64u * 1024u)

typedef struct Journal {
  int fd;               /* -1 once closed */
  JournalSync sync;
  size_t size;          /* bytes of the records accepted (the file's and the
                        ** buffer's): where the next record goes */
  size_t written;       /* bytes in the file: always a record boundary */
  int failed;           /* an errno that makes further appends unsafe */
  int lost;             /* a failed write lost buffered records whose
                        ** appends had returned */
  int dirty;            /* written since the last sync */
  uint64_t syncs;       /* fdatasyncs done (for metrics) */
  uint64_t sync_ns;     /* the time they took, in all */
  uint64_t last_sync_ns;/* the time the last one took */
  unsigned char *buf;   /* records accepted, not yet written ("batch", "none") */
  size_t buf_len, buf_cap;
  JournalAlloc alloc;   /* for buf (see journal_set_alloc) */
  void *alloc_ud;
} Journal;

/*
** Open (creating it, mode 0600) and lock the journal at 'path', cutting a
** torn tail.  Returns 0, or an errno with 'why' (static text) for what
** failed.  'scan' tells what was found.  On damage in the middle it fails
** with EILSEQ unless 'repair' is set; the journal is then opened and the
** damaged ranges stay in the file, skipped by readers.  The file is
** mapped into memory for the scan only.
*/
int journal_open(Journal *j, const char *path, JournalSync sync, int repair,
                 JournalScan *scan, const char **why);

/* Create a new, empty journal at 'path', which must not exist (O_EXCL: no
** following a planted symlink); for compaction's temporary file.  On
** failure no file is left at 'path'. */
int journal_create(Journal *j, const char *path, JournalSync sync, const char **why);

/* Rename 'from' over 'to' and fsync the directory: durable replacement.
** On failure '*renamed' says whether the rename itself happened (then only
** the directory sync failed: 'to' is the new file, not known durable). */
int journal_replace(const char *from, const char *to, int *renamed, const char **why);

/*
** Append one record, whole or not at all.  "always" writes it and syncs it
** before returning; on a failed write or sync the file is cut back (after
** a failed sync no later append is accepted).  "batch" and "none" copy it
** into the buffer (writing the buffer first when it does not fit); a
** record larger than JOURNAL_CHUNK, or one the buffer has no memory for,
** is written at once, after the buffer.  If writing the buffer fails, the
** records it held (whose appends returned 0) are lost: the file is cut
** back to its last whole record and the journal refuses every later
** append.  Returns 0 or an errno.
*/
int journal_append(Journal *j, int type, const void *p, size_t n, const char **why);

/* Write the buffered records to the file (no fdatasync): after this a
** crash of the process loses none of them.  0 or an errno: the write
** failed, and the journal refuses further appends (as after any failed
** write of the buffer), or an earlier one did and lost records (j->lost).
** A journal that failed otherwise (a failed sync) has nothing buffered:
** 0. */
int journal_write(Journal *j, const char **why);

/* Write the buffer and make everything appended so far durable
** (fdatasync).  0 or an errno.  Each fdatasync is counted and timed
** (monotonic clock) in j->syncs, j->sync_ns and j->last_sync_ns. */
int journal_sync(Journal *j, const char **why);

/* Close the file: write the buffer, sync unless the policy is "none",
** free the buffer.  Safe twice. */
int journal_close(Journal *j, const char **why);

/* Use 'alloc' (with 'ud') for the write buffer from now on.  Call it
** right after journal_open or journal_create, before any append. */
void journal_set_alloc(Journal *j, JournalAlloc alloc, void *ud);

/* Read the journal's first 'size' bytes (size <= j->size) into buf,
** writing the buffer first if the range reaches into it.  0 or an errno.  (Not a mapping: a mapping would keep the file, and so
** its lock, alive after close.) */
int journal_read(Journal *j, void *buf, size_t size, const char **why);

/* Read n bytes at offset 'off' (off + n <= j->size) into buf, writing
** the buffer first if the range reaches into it.  0 or an errno. */
int journal_read_at(Journal *j, void *buf, size_t n, size_t off, const char **why);

#endif
