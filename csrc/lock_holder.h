/*
** lock_holder.h - which process holds a file's lock, for error messages.
*/
#ifndef PROCMAN_LOCK_HOLDER_H
#define PROCMAN_LOCK_HOLDER_H

/* The pid of a process holding a flock() lock on the file at 'path', or 0
** when that cannot be told (not Linux, no /proc, the lock is gone). */
long lock_holder(const char *path);

#endif
