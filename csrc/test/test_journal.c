/*
** test_journal.c - cmocka tests of CRC-32C and the journal format: known
** vectors, every truncation (a torn tail), every flipped bit (damage in
** the middle, or a torn last record), headers, and the file layer.
*/
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "crc32c.h"
#include "faults.h"
#include "journal.h"

/* ---- CRC-32C ------------------------------------------------------- */

static void test_crc32c_vectors(void **state) {
  unsigned char zeros[32] = { 0 }, ones[32], inc[32];
  int i;
  (void)state;
  for (i = 0; i < 32; i++) {
    ones[i] = 0xff;
    inc[i] = (unsigned char)i;
  }
  /* RFC 3720, B.4, and the classic check value */
  assert_int_equal(crc32c("123456789", 9), 0xe3069283u);
  assert_int_equal(crc32c(zeros, 32), 0x8a9136aau);
  assert_int_equal(crc32c(ones, 32), 0x62a8ab43u);
  assert_int_equal(crc32c(inc, 32), 0x46dd794eu);
  assert_int_equal(crc32c("", 0), 0);
  assert_int_equal(crc32c_extend(crc32c("1234", 4), "56789", 5), 0xe3069283u);
  assert_int_equal(crc32c_unmask(crc32c_mask(0xe3069283u)), 0xe3069283u);
  assert_int_not_equal(crc32c_mask(0xe3069283u), 0xe3069283u);
}

/* The bytewise CRC-32C, to check the eight-bytes-a-step one against. */
static uint32_t crc32c_bytewise(const unsigned char *p, size_t n) {
  uint32_t crc = 0xffffffffu;
  int k;
  while (n-- > 0) {
    crc ^= *p++;
    for (k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1u)));
  }
  return ~crc;
}

/* Any length, any alignment, any split into two calls: the same CRC. */
static void test_crc32c_slices(void **state) {
  unsigned char data[300];
  size_t start, n, cut;
  (void)state;
  for (n = 0; n < sizeof data; n++) data[n] = (unsigned char)(n * 131u + 7u);
  for (start = 0; start < 9; start++) {
    for (n = 0; start + n <= sizeof data; n += 7) {
      uint32_t want = crc32c_bytewise(data + start, n);
      assert_int_equal(crc32c(data + start, n), want);
      for (cut = 0; cut <= n; cut += 5)
        assert_int_equal(crc32c_extend(crc32c(data + start, cut), data + start + cut, n - cut), want);
    }
  }
}

/* ---- a journal in memory ------------------------------------------- */

typedef struct Image {
  unsigned char bytes[4096];
  size_t size;
  size_t ends[16];  /* where each record ends */
  int count;
} Image;

static void image_append(Image *im, int type, const char *payload) {
  size_t n = strlen(payload);
  journal_frame(im->bytes + im->size, type, payload, n);
  memcpy(im->bytes + im->size + JOURNAL_RECORD_HEADER_SIZE, payload, n);
  im->size += JOURNAL_RECORD_HEADER_SIZE + n;
  im->ends[im->count++] = im->size;
}

static void image_build(Image *im) {
  memset(im, 0, sizeof *im);
  journal_header(im->bytes);
  im->size = JOURNAL_HEADER_SIZE;
  image_append(im, 1, "first");
  image_append(im, 2, "");
  image_append(im, 3, "the third record, a little longer");
  image_append(im, 255, "last");
}

static void test_scan_intact(void **state) {
  Image im;
  JournalScan scan;
  (void)state;
  image_build(&im);
  journal_scan(im.bytes, im.size, &scan);
  assert_int_equal(scan.records, 4);
  assert_int_equal(scan.end, im.size);
  assert_int_equal(scan.dropped, 0);
  assert_int_equal(scan.damaged_at, 0);
  assert_null(scan.why);
}

/* A crash can cut the file anywhere: every cut is a torn tail whose intact
** records are exactly those that end before it. */
static void test_every_truncation_is_a_torn_tail(void **state) {
  Image im;
  size_t cut;
  (void)state;
  image_build(&im);
  for (cut = JOURNAL_HEADER_SIZE; cut <= im.size; cut++) {
    JournalScan scan;
    int whole = 0;
    unsigned char *copy = malloc(cut + 1);  /* exact size: ASan sees overreads */
    assert_non_null(copy);
    memcpy(copy, im.bytes, cut);
    while (whole < im.count && im.ends[whole] <= cut)
      whole++;
    journal_scan(copy, cut, &scan);
    assert_int_equal(scan.records, whole);
    assert_int_equal(scan.end, whole == 0 ? JOURNAL_HEADER_SIZE : im.ends[whole - 1]);
    assert_int_equal(scan.dropped, cut - scan.end);
    assert_int_equal(scan.damaged_at, 0);
    assert_int_equal(scan.bad_header, 0);
    free(copy);
  }
}

/* A flipped bit in a record that intact records follow is damage in the
** middle, at that record.  In the last record it is damage too, unless it
** hit the length or zeroed the type (what a torn write can leave): then
** it looks like a torn tail. */
static void test_every_flipped_bit(void **state) {
  Image im;
  size_t byte;
  (void)state;
  image_build(&im);
  for (byte = JOURNAL_HEADER_SIZE; byte < im.size; byte++) {
    int bit, rec = 0;
    while (im.ends[rec] <= byte)
      rec++;
    for (bit = 0; bit < 8; bit++) {
      JournalScan scan;
      size_t start = rec == 0 ? JOURNAL_HEADER_SIZE : im.ends[rec - 1];
      im.bytes[byte] ^= (unsigned char)(1 << bit);
      journal_scan(im.bytes, im.size, &scan);
      im.bytes[byte] ^= (unsigned char)(1 << bit);
      if (rec == im.count - 1 && byte >= start + 4 &&
          !(byte == start + 8 && im.bytes[byte] == (unsigned char)(1 << bit))) {
        assert_int_equal(scan.damaged_at, start);  /* written whole, then damaged */
        assert_int_equal(scan.resume_at, im.size);
        assert_int_equal(scan.end, im.size);
        assert_int_equal(scan.dropped, 0);
        assert_int_equal(scan.records, im.count - 1);
        assert_non_null(strstr(scan.why, "checksum"));
      }
      else if (rec == im.count - 1) {
        assert_int_equal(scan.damaged_at, 0);
        assert_int_equal(scan.end, start);
        assert_int_equal(scan.dropped, im.size - start);
      }
      else {
        assert_int_equal(scan.damaged_at, start);
        assert_int_equal(scan.resume_at, im.ends[rec]);
        assert_int_equal(scan.records, im.count - 1);
        assert_int_equal(scan.end, im.size);
      }
    }
  }
}

static void test_headers(void **state) {
  Image im;
  JournalScan scan;
  size_t n;
  (void)state;
  image_build(&im);
  journal_scan(im.bytes, 0, &scan);               /* new, empty */
  assert_int_equal(scan.dropped, 0);
  assert_int_equal(scan.bad_header, 0);
  for (n = 1; n < JOURNAL_HEADER_SIZE; n++) {     /* torn while created */
    journal_scan(im.bytes, n, &scan);
    assert_int_equal(scan.bad_header, 0);
    assert_int_equal(scan.dropped, n);
  }
  journal_scan((const unsigned char *)"hello", 5, &scan);  /* someone else's */
  assert_int_equal(scan.bad_header, 1);
  im.bytes[0] = 'P';
  journal_scan(im.bytes, im.size, &scan);
  assert_int_equal(scan.bad_header, 1);
  assert_string_equal(scan.why, "not a procman journal (bad magic)");
  im.bytes[0] = 'p';
  im.bytes[8] = 2;                                /* another version */
  journal_scan(im.bytes, im.size, &scan);
  assert_int_equal(scan.bad_header, 1);
  assert_non_null(strstr(scan.why, "checksum"));  /* the CRC covers the version */
}

static void test_zeroed_space_is_not_a_record(void **state) {
  unsigned char zeros[64] = { 0 };
  int type;
  size_t len;
  const char *why;
  (void)state;
  assert_int_equal(journal_record_at(zeros, sizeof zeros, 0, &type, &len, &why), 0);
  assert_string_equal(why, "a record of type 0");
  assert_int_equal(journal_resync(zeros, sizeof zeros, 0), sizeof zeros);
}

/* ---- the file -------------------------------------------------------- */

static void temp_path(char *out, size_t n) {
  snprintf(out, n, "/tmp/procman-test-journal-%ld.pmj", (long)getpid());
  unlink(out);
}

static void test_file_append_reopen(void **state) {
  char path[128];
  Journal j, k;
  JournalScan scan;
  const char *why = NULL;
  struct stat st;
  unsigned char buf[256];
  (void)state;
  temp_path(path, sizeof path);
  assert_int_equal(journal_open(&j, path, JOURNAL_SYNC_ALWAYS, 0, &scan, &why), 0);
  assert_int_equal(j.size, JOURNAL_HEADER_SIZE);
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  assert_int_equal(j.syncs, 0);
  assert_int_equal(journal_append(&j, 7, "abc", 3, &why), 0);
  assert_int_equal(j.syncs, 1);  /* "always": counted and timed */
  assert_true(j.sync_ns > 0 && j.sync_ns == j.last_sync_ns);
  assert_int_equal(journal_append(&j, 0, "x", 1, &why), EINVAL);
  assert_int_equal(journal_append(&j, 256, "x", 1, &why), EINVAL);
  assert_int_equal(j.size, JOURNAL_HEADER_SIZE + JOURNAL_RECORD_HEADER_SIZE + 3);
  /* a second opener is refused while the first holds the lock */
  assert_int_equal(journal_open(&k, path, JOURNAL_SYNC_NONE, 0, &scan, &why), EWOULDBLOCK);
  assert_string_equal(why, "the journal is in use by another process");
  assert_int_equal(journal_read(&j, buf, j.size, &why), 0);
  journal_scan(buf, j.size, &scan);
  assert_int_equal(scan.records, 1);
  assert_int_equal(journal_close(&j, &why), 0);
  assert_int_equal(journal_close(&j, &why), 0);  /* safe twice */
  assert_int_equal(journal_append(&j, 1, "x", 1, &why), EBADF);
  /* reopen: the record is there */
  assert_int_equal(journal_open(&k, path, JOURNAL_SYNC_BATCH, 0, &scan, &why), 0);
  assert_int_equal(scan.records, 1);
  assert_int_equal(journal_close(&k, &why), 0);
  unlink(path);
}

/* A create that fails at any of its file operations (a full disk) leaves
** no file behind: compaction's temporary file is whole or absent. */
static void test_file_create_failure_leaves_nothing(void **state) {
  char path[128];
  Journal j;
  const char *why = NULL;
  long at;
  (void)state;
  temp_path(path, sizeof path);
  for (at = 1;; at++) {
    int e;
    unlink(path);
    journal_faults_arm(at, ENOSPC, 1);
    e = journal_create(&j, path, JOURNAL_SYNC_BATCH, &why);
    journal_faults_disarm();
    if (e == 0)
      break;
    assert_int_equal(e, ENOSPC);
    assert_int_equal(access(path, F_OK), -1);
  }
  assert_true(at > 3);  /* open, truncate, write, syncs: each failed in turn */
  assert_int_equal(journal_close(&j, &why), 0);
  unlink(path);
}

static void test_file_torn_tail_is_cut(void **state) {
  char path[128];
  Journal j;
  JournalScan scan;
  const char *why = NULL;
  struct stat st;
  int fd;
  (void)state;
  temp_path(path, sizeof path);
  assert_int_equal(journal_open(&j, path, JOURNAL_SYNC_NONE, 0, &scan, &why), 0);
  assert_int_equal(journal_append(&j, 1, "kept", 4, &why), 0);
  assert_int_equal(journal_close(&j, &why), 0);
  fd = open(path, O_WRONLY | O_APPEND);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, "\x20\0\0\0\1\2", 6), 6);  /* a record cut short */
  close(fd);
  assert_int_equal(journal_open(&j, path, JOURNAL_SYNC_NONE, 0, &scan, &why), 0);
  assert_int_equal(scan.records, 1);
  assert_int_equal(scan.dropped, 6);
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal((size_t)st.st_size, JOURNAL_HEADER_SIZE + JOURNAL_RECORD_HEADER_SIZE + 4);
  assert_int_equal(journal_close(&j, &why), 0);
  unlink(path);
}

static void test_file_foreign_is_untouched(void **state) {
  char path[128];
  Journal j;
  JournalScan scan;
  const char *why = NULL;
  struct stat st;
  int fd;
  (void)state;
  temp_path(path, sizeof path);
  fd = open(path, O_WRONLY | O_CREAT, 0600);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, "notes", 5), 5);
  close(fd);
  assert_int_equal(journal_open(&j, path, JOURNAL_SYNC_NONE, 0, &scan, &why), EILSEQ);
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_size, 5);
  unlink(path);
}

static void test_file_create_and_replace(void **state) {
  int renamed = 0;
  char path[128], tmp[160];
  Journal j, k;
  JournalScan scan;
  const char *why = NULL;
  (void)state;
  temp_path(path, sizeof path);
  snprintf(tmp, sizeof tmp, "%s.compact", path);
  unlink(tmp);
  assert_int_equal(journal_create(&j, tmp, JOURNAL_SYNC_BATCH, &why), 0);
  assert_int_equal(journal_append(&j, 3, "snap", 4, &why), 0);
  assert_int_equal(journal_close(&j, &why), 0);
  /* O_EXCL: an existing file (or a planted symlink) is never reused */
  assert_int_equal(journal_create(&k, tmp, JOURNAL_SYNC_BATCH, &why), EEXIST);
  assert_int_equal(journal_replace(tmp, path, &renamed, &why), 0);
  assert_int_equal(renamed, 1);
  assert_int_equal(access(tmp, F_OK), -1);
  assert_int_equal(journal_open(&k, path, JOURNAL_SYNC_NONE, 0, &scan, &why), 0);
  assert_int_equal(scan.records, 1);
  assert_int_equal(journal_close(&k, &why), 0);
  assert_int_equal(journal_replace(tmp, path, &renamed, &why), ENOENT);
  assert_int_equal(renamed, 0);
  unlink(path);
}

static off_t file_size(const char *path) {
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  return st.st_size;
}

/* "none": records wait in the buffer (size counts them, written does not)
** and reach the file in runs of whole records: when one does not fit, at
** journal_write, when read, and at close. */
static void test_file_buffer(void **state) {
  char path[128];
  Journal j;
  JournalScan scan;
  const char *why = NULL;
  unsigned char rec[1000], back[JOURNAL_RECORD_HEADER_SIZE + 3];
  size_t per = JOURNAL_RECORD_HEADER_SIZE + sizeof rec, n;
  (void)state;
  memset(rec, 'r', sizeof rec);
  temp_path(path, sizeof path);
  assert_int_equal(journal_open(&j, path, JOURNAL_SYNC_NONE, 0, &scan, &why), 0);
  assert_int_equal(journal_append(&j, 1, "abc", 3, &why), 0);
  assert_int_equal(j.size, JOURNAL_HEADER_SIZE + JOURNAL_RECORD_HEADER_SIZE + 3);
  assert_int_equal(j.written, JOURNAL_HEADER_SIZE);
  assert_int_equal(file_size(path), JOURNAL_HEADER_SIZE);
  /* reading past the file writes the buffer first */
  assert_int_equal(journal_read_at(&j, back, sizeof back, JOURNAL_HEADER_SIZE, &why), 0);
  assert_memory_equal(back + JOURNAL_RECORD_HEADER_SIZE, "abc", 3);
  assert_int_equal(j.written, j.size);
  /* a full buffer is written when the next record does not fit */
  for (n = 0; n < JOURNAL_CHUNK / per; n++)
    assert_int_equal(journal_append(&j, 2, rec, sizeof rec, &why), 0);
  assert_int_equal(j.written, JOURNAL_HEADER_SIZE + JOURNAL_RECORD_HEADER_SIZE + 3);
  assert_int_equal(journal_append(&j, 2, rec, sizeof rec, &why), 0);
  assert_int_equal(j.written, j.size - per);
  assert_int_equal(file_size(path), (off_t)j.written);
  assert_int_equal(journal_write(&j, &why), 0);
  assert_int_equal(file_size(path), (off_t)j.size);
  assert_int_equal(j.syncs, 0);  /* "none" never syncs by itself */
  /* a failed write of the buffer loses it and fails the journal */
  assert_int_equal(journal_append(&j, 1, "lost", 4, &why), 0);
  journal_faults_arm(1, ENOSPC, 1);
  assert_int_equal(journal_write(&j, &why), ENOSPC);
  journal_faults_disarm();
  assert_int_equal(j.lost, 1);
  assert_int_equal(j.size, j.written);
  assert_int_equal(file_size(path), (off_t)j.written);  /* the torn half cut back */
  assert_int_equal(journal_append(&j, 1, "x", 1, &why), ENOSPC);
  assert_string_equal(why, "an earlier write of the journal lost records it had accepted; reopen it");
  assert_int_equal(journal_close(&j, &why), 0);
  assert_int_equal(journal_open(&j, path, JOURNAL_SYNC_NONE, 0, &scan, &why), 0);
  assert_int_equal(scan.records, 2 + JOURNAL_CHUNK / per);
  assert_int_equal(scan.dropped, 0);
  assert_int_equal(journal_close(&j, &why), 0);
  unlink(path);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_crc32c_vectors),
    cmocka_unit_test(test_crc32c_slices),
    cmocka_unit_test(test_scan_intact),
    cmocka_unit_test(test_every_truncation_is_a_torn_tail),
    cmocka_unit_test(test_every_flipped_bit),
    cmocka_unit_test(test_headers),
    cmocka_unit_test(test_zeroed_space_is_not_a_record),
    cmocka_unit_test(test_file_append_reopen),
    cmocka_unit_test(test_file_create_failure_leaves_nothing),
    cmocka_unit_test(test_file_torn_tail_is_cut),
    cmocka_unit_test(test_file_foreign_is_untouched),
    cmocka_unit_test(test_file_create_and_replace),
    cmocka_unit_test(test_file_buffer),
  };
  return cmocka_run_group_tests_name("journal", tests, NULL, NULL);
}
