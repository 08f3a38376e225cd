/*
** crc32c.h - CRC-32C (Castagnoli) checksums.
*/
#ifndef PROCMAN_CRC32C_H
#define PROCMAN_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* The CRC-32C of n bytes: crc32c("123456789", 9) == 0xe3069283. */
uint32_t crc32c(const void *data, size_t n);

/* Continue 'crc' (a finished CRC of what came before) over n more bytes. */
uint32_t crc32c_extend(uint32_t crc, const void *data, size_t n);

/* The form a CRC is stored in, and back. */
uint32_t crc32c_mask(uint32_t crc);
uint32_t crc32c_unmask(uint32_t masked);

#endif
