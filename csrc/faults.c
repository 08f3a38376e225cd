/*
** faults.c - the gate of faults.h, for test builds (-DPROCMAN_FAULTS):
** the fault specs, the cmocka journal tests.  Not part of the shipped
** module (the rockspec does not list it).
*/
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <unistd.h>

#include "faults.h"

static long fault_calls = 0;   /* calls since arming */
static long fault_at = 0;      /* 0: disarmed */
static int fault_errno = 0;
static int fault_short = 0;

void journal_faults_arm(long at, int err, int short_write) {
  fault_calls = 0;
  fault_at = at;
  fault_errno = err;
  fault_short = short_write;
}

long journal_faults_disarm(void) {
  long n = fault_calls;
  fault_at = 0;
  fault_calls = 0;
  return n;
}

int faults_hit(void) {
  fault_calls++;
  if (fault_at == 0 || fault_calls != fault_at)
    return 0;
  errno = fault_errno;
  return 1;
}

ssize_t faults_writev(int fd, struct iovec *iov, int count) {
  if (faults_hit()) {
    if (fault_short && count > 0 && iov[0].iov_len > 1) {  /* half, then the error */
      struct iovec half = { iov[0].iov_base, iov[0].iov_len / 2 };
      int e = errno;
      ssize_t w = writev(fd, &half, 1);
      fault_at++;  /* the retry of the rest fails too */
      errno = e;
      return w;
    }
    return -1;
  }
  return writev(fd, iov, count);
}
