/*
** lock_holder.c - which process holds a file's lock, for error messages.
**
** flock() itself does not say who holds a lock (F_GETLK only sees fcntl
** locks, which are another kind), but Linux lists every lock in
** /proc/locks, one a line, with its holder's pid and the file's device
** and inode:
**   1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF
** A process waiting for the lock is listed as "1: -> FLOCK ...": skipped.
*/
#define _DEFAULT_SOURCE  /* major, minor */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "lock_holder.h"

long lock_holder(const char *path) {
  struct stat st;
  char line[256];
  long pid = 0;
  FILE *f;
  if (stat(path, &st) != 0)
    return 0;
  f = fopen("/proc/locks", "r");
  if (f == NULL)
    return 0;
  while (pid == 0 && fgets(line, sizeof line, f) != NULL) {
    char kind[16];
    long holder;
    unsigned int maj, min;
    unsigned long long inode;
    if (sscanf(line, "%*d: %15s %*s %*s %ld %x:%x:%llu", kind, &holder, &maj, &min,
               &inode) == 5
        && strcmp(kind, "FLOCK") == 0 && inode == (unsigned long long)st.st_ino
        && maj == major(st.st_dev) && min == minor(st.st_dev))
      pid = holder;
  }
  fclose(f);
  return pid;
}
