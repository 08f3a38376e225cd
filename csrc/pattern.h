/*
** pattern.h - Lua's pattern language, matched with a step limit.
**
** Pure C (no Lua): the sandbox's string.find/match/gmatch/gsub
** (pattern_lua.c) are built on it.  The language is exactly Lua 5.4's
** (single characters, '.', %classes, [sets], '*' '+' '-' '?', anchors,
** captures and position captures, %1-%9, %b, %f).  Every attempt to match
** one pattern item at one place in the subject is a step; once 'max_steps'
** steps are taken the match gives up (PATTERN_STEPS), so a pattern that
** backtracks exponentially costs no more than the caller allows.
*/
#ifndef PROCMAN_PATTERN_H
#define PROCMAN_PATTERN_H

#include <stddef.h>

#define PATTERN_MAXCAPTURES 32
#define PATTERN_MAXDEPTH 200        /* nested items, as Lua's MAXCCALLS */

#define PATTERN_CAP_OPEN (-1)       /* a capture not closed yet */
#define PATTERN_CAP_POSITION (-2)   /* a position capture: () */

typedef enum {
  PATTERN_OK = 0,    /* matched, or did not match */
  PATTERN_STEPS,     /* gave up after max_steps steps */
  PATTERN_ERROR      /* the pattern is malformed: see 'why' */
} PatternStatus;

typedef struct PatternCapture {
  const char *init;
  ptrdiff_t len;     /* or PATTERN_CAP_OPEN, PATTERN_CAP_POSITION */
} PatternCapture;

typedef struct PatternMatch {
  const char *src_init, *src_end;   /* the subject */
  const char *p_end;                /* the end of the pattern */
  long long steps, max_steps;
  int depth;
  int level;                        /* captures in use */
  PatternStatus status;
  char why[80];                     /* what is wrong with the pattern */
  PatternCapture capture[PATTERN_MAXCAPTURES];
} PatternMatch;

/* Prepare 'm' for subject s[0..len) and pattern p[0..plen). */
void pattern_init(PatternMatch *m, const char *s, size_t len, const char *p,
                  size_t plen, long long max_steps);

/*
** Match the pattern starting at p (inside the pattern given to init, after
** any '^') against the subject at s: the end of the match, or NULL (no
** match, or m->status says why not).  Captures are reset first.
*/
const char *pattern_match_at(PatternMatch *m, const char *s, const char *p);

/* Does the pattern p[0..plen) use any special character? (If not, find
** can look for it as plain text.) */
int pattern_has_specials(const char *p, size_t plen);

/*
** Plain search: the first occurrence of p[0..plen) in s[0..len), or NULL.
** Each candidate position is a step (plus one per 64 bytes compared).
*/
const char *pattern_find_plain(PatternMatch *m, const char *s, size_t len,
                               const char *p, size_t plen);

#endif
