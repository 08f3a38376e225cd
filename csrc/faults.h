/*
** faults.h - fault injection for the journal's file operations, in test
** builds only: compiled with -DPROCMAN_FAULTS (and faults.c), every file
** operation of the journal passes a gate that can fail it.  In the shipped
** module there is no gate: FAULT() is 0 and the calls are the plain ones.
*/
#ifndef PROCMAN_FAULTS_H
#define PROCMAN_FAULTS_H

#include <sys/types.h>
#include <sys/uio.h>

#ifdef PROCMAN_FAULTS

/*
** Every file operation of the journal (open, write, sync, truncate, rename,
** read, map) counts as one call.  Armed, the 'at'-th call from now fails
** with errno 'err'; with 'short_write', a write call writes half of what it
** was asked before the failure (the torn write of a full disk).  Disarming
** returns how many calls were made since arming.  For procman's own tests:
** see core.journal_faults (journal_lua.c).
*/
void journal_faults_arm(long at, int err, int short_write);
long journal_faults_disarm(void);

/* Count one call; nonzero (errno set) when this one must fail. */
int faults_hit(void);

/* writev(2) behind the gate, torn as armed. */
ssize_t faults_writev(int fd, struct iovec *iov, int count);

#define FAULT() faults_hit()
#define FAULT_WRITEV(fd, iov, count) faults_writev((fd), (iov), (count))

#else

#define FAULT() 0
#define FAULT_WRITEV(fd, iov, count) writev((fd), (iov), (count))

#endif
#endif
