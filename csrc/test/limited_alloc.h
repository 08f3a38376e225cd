/*
** limited_alloc.h - for the C tests: a Lua allocator that fails every
** growing request once the 'fail_at'-th one is reached.
*/
#ifndef PROCMAN_TEST_LIMITED_ALLOC_H
#define PROCMAN_TEST_LIMITED_ALLOC_H

#include <stdlib.h>

typedef struct Limit {
  long count;     /* growing requests since armed */
  long fail_at;   /* 0: never fail */
} Limit;

static void *limited_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  Limit *limit = (Limit *)ud;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  /* Lua requires that shrinking never fails: only growing requests count */
  if (limit->fail_at > 0 && (ptr == NULL || nsize > osize) &&
      ++limit->count >= limit->fail_at)
    return NULL;
  return realloc(ptr, nsize);
}

#endif
