/*
** fuzz_journal.c - libFuzzer harness for the journal reader.
**
** Any bytes as a journal file: the scan never reads outside the buffer,
** its findings are consistent (intact records end at 'end', a torn tail
** is what follows, damage is followed by an intact record or is the last
** record, written whole), and walking
** the records as readers do visits exactly the records the scan counted.
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "journal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  JournalScan scan;
  size_t pos, seen = 0;
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
    pos += JOURNAL_RECORD_HEADER_SIZE + len;
    seen++;
  }
  if (seen != scan.records)
    abort();
  free(copy);
  return 0;
}
