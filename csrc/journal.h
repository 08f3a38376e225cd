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

typedef struct Journal {
  int fd;               /* -1 once closed */
  JournalSync sync;
  size_t size;          /* bytes in the file: always a record boundary */
  int failed;           /* an errno that makes further appends unsafe */
  int dirty;            /* appended since the last sync */
  uint64_t syncs;       /* fdatasyncs done (for metrics) */
  uint64_t sync_ns;     /* the time they took, in all */
  uint64_t last_sync_ns;/* the time the last one took */
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

/* Append one record, whole or not at all: on a failed write, or a failed
** sync under the "always" policy, the file is cut back (and after a failed
** sync no later write is accepted).  Returns 0 or an errno. */
int journal_append(Journal *j, int type, const void *p, size_t n, const char **why);

/* Make everything appended so far durable (fdatasync).  0 or an errno.
** Each fdatasync is counted and timed (monotonic clock) in j->syncs,
** j->sync_ns and j->last_sync_ns. */
int journal_sync(Journal *j, const char **why);

/* Close the file (syncing first unless the policy is "none"); safe twice. */
int journal_close(Journal *j, const char **why);

/* Read the journal's first 'size' bytes (size <= j->size) into buf.
** 0 or an errno.  (Not a mapping: a mapping would keep the file, and so
** its lock, alive after close.) */
int journal_read(Journal *j, void *buf, size_t size, const char **why);

/* Read n bytes at offset 'off' (off + n <= j->size) into buf.  0 or an
** errno. */
int journal_read_at(Journal *j, void *buf, size_t n, size_t off, const char **why);

#endif
