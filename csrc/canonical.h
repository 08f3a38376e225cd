/*
** canonical.h - is an encoding exactly what procman's encoder writes?
**
** Bytes that pass decode to a value the encoder turns back into the same
** bytes (and that the decoder accepts: no duplicate, nil or NaN key, no
** ext type, not nested too deep).  The recovery scan (fold_scan.c) copies
** parts of such records (a command, a flow id) into new encodings instead
** of decoding and encoding them again; any other record is left to the
** Lua fold, which decodes it.
*/
#ifndef PROCMAN_CANONICAL_H
#define PROCMAN_CANONICAL_H

#include <stddef.h>

/* Is the value at s[*pos .. len) canonical?  1 with *pos past it, or 0
** (malformed, or not canonical) with *pos unchanged.  Allocates nothing. */
int canonical_value(const unsigned char *s, size_t len, size_t *pos);

#endif
