/*
** pattern.c - Lua's pattern language, matched with a step limit.
**
** A backtracking matcher, like Lua's own, written for procman so that it
** can count its work: 'step' is called once per attempt to match one item
** at one place, and fails the match once the limit is reached.  Errors
** (a malformed pattern, a limit of the language) and running out of steps
** are kept in m->status; every function returns NULL once it is set, so
** the recursion unwinds at once.
**
** The pattern is p[0..p_end) and need not end with '\0'; the subject is
** src_init[0..src_end).
*/
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "pattern.h"

#define ESCAPE '%'
#define SPECIALS "^$*+?.([%-"

static int uc(char c) {
  return (unsigned char)c;
}

static const char *fail(PatternMatch *m, const char *why) {
  if (m->status == PATTERN_OK) {
    m->status = PATTERN_ERROR;
    snprintf(m->why, sizeof m->why, "%s", why);
  }
  return NULL;
}

/* One unit of work; false once the limit is reached (or an error is set). */
static int step(PatternMatch *m) {
  if (m->status != PATTERN_OK)
    return 0;
  if (m->steps >= m->max_steps) {
    m->status = PATTERN_STEPS;
    return 0;
  }
  m->steps++;
  return 1;
}

void pattern_init(PatternMatch *m, const char *s, size_t len, const char *p,
                  size_t plen, long long max_steps) {
  m->src_init = s;
  m->src_end = s + len;
  m->p_end = p + plen;
  m->steps = 0;
  m->max_steps = max_steps;
  m->depth = 0;
  m->level = 0;
  m->status = PATTERN_OK;
  m->why[0] = '\0';
}

int pattern_has_specials(const char *p, size_t plen) {
  size_t i;
  for (i = 0; i < plen; i++)
    if (p[i] != '\0' && strchr(SPECIALS, p[i]) != NULL)
      return 1;
  return 0;
}

/* ===================================================================
** Single items: a character, '.', %class, [set]
** =================================================================== */

/* Does c belong to class %cls (a letter; its capital is the complement),
** or, for any other cls, is c that character (an escaped one)? */
static int in_class(int c, int cls) {
  int yes;
  switch (tolower(cls)) {
    case 'a': yes = isalpha(c); break;
    case 'c': yes = iscntrl(c); break;
    case 'd': yes = isdigit(c); break;
    case 'g': yes = isgraph(c); break;
    case 'l': yes = islower(c); break;
    case 'p': yes = ispunct(c); break;
    case 's': yes = isspace(c); break;
    case 'u': yes = isupper(c); break;
    case 'w': yes = isalnum(c); break;
    case 'x': yes = isxdigit(c); break;
    case 'z': yes = (c == 0); break;  /* deprecated, but string.find still has it */
    default: return cls == c;
  }
  if (isupper(cls))
    yes = !yes;
  return yes != 0;
}

/* Does c belong to the set that starts at '[' (p) and whose ']' is at
** 'close'? */
static int in_set(int c, const char *p, const char *close) {
  int negated = 0;
  p++;
  if (*p == '^') {
    negated = 1;
    p++;
  }
  while (p < close) {
    if (*p == ESCAPE) {  /* just before 'close' it escapes the ']', as in Lua: [+-%%] */
      if (in_class(c, uc(p[1])))
        return !negated;
      p += 2;
    }
    else if (p + 2 < close && p[1] == '-') {
      if (uc(p[0]) <= c && c <= uc(p[2]))
        return !negated;
      p += 3;
    }
    else {
      if (uc(*p) == c)
        return !negated;
      p++;
    }
  }
  return negated;
}

/* The end of the single item that starts at p (just past it). */
static const char *item_end(PatternMatch *m, const char *p) {
  char c = *p++;
  if (c == ESCAPE) {
    if (p >= m->p_end)
      return fail(m, "malformed pattern (ends with '%')");
    return p + 1;
  }
  if (c != '[')
    return p;
  if (p < m->p_end && *p == '^')
    p++;
  do {  /* the first character of a set is never its end: "[]]" */
    if (p >= m->p_end)
      return fail(m, "malformed pattern (missing ']')");
    c = *p++;
    if (c == ESCAPE && p < m->p_end)
      p++;
  } while (p >= m->p_end || *p != ']');
  return p + 1;
}

/* Does the single item p..ep match the subject character at s? */
static int item_matches(PatternMatch *m, const char *s, const char *p, const char *ep) {
  int c;
  if (s >= m->src_end)
    return 0;
  c = uc(*s);
  switch (*p) {
    case '.': return 1;
    case ESCAPE: return in_class(c, uc(p[1]));
    case '[': return in_set(c, p, ep - 1);
    default: return uc(*p) == c;
  }
}

/* ===================================================================
** The matcher
** =================================================================== */

static const char *match(PatternMatch *m, const char *s, const char *p);

/* item* (greedy): take as many as match, then give back one by one. */
static const char *greedy(PatternMatch *m, const char *s, const char *p, const char *ep) {
  ptrdiff_t n = 0;
  while (item_matches(m, s + n, p, ep)) {
    if (!step(m))
      return NULL;
    n++;
  }
  for (; n >= 0; n--) {
    const char *end;
    if (!step(m))
      return NULL;
    end = match(m, s + n, ep + 1);
    if (end != NULL || m->status != PATTERN_OK)
      return end;
  }
  return NULL;
}

/* item- (lazy): try the rest first, take one more only when it fails. */
static const char *lazy(PatternMatch *m, const char *s, const char *p, const char *ep) {
  for (;;) {
    const char *end;
    if (!step(m))
      return NULL;
    end = match(m, s, ep + 1);
    if (end != NULL || m->status != PATTERN_OK)
      return end;
    if (!item_matches(m, s, p, ep))
      return NULL;
    s++;
  }
}

/* %bxy at s: a balanced run from x to its matching y. */
static const char *balanced(PatternMatch *m, const char *s, const char *p) {
  int depth = 1;
  char open, close;
  if (p + 1 >= m->p_end)
    return fail(m, "malformed pattern (missing arguments to '%b')");
  open = p[0];
  close = p[1];
  if (s >= m->src_end || *s != open)
    return NULL;
  while (++s < m->src_end) {
    if (!step(m))
      return NULL;
    if (*s == close) {
      if (--depth == 0)
        return s + 1;
    }
    else if (*s == open)
      depth++;
  }
  return NULL;
}

/* The capture that a back-reference %digit names, or -1 (error set). */
static int capture_index(PatternMatch *m, int digit) {
  int i = digit - '1';
  if (i < 0 || i >= m->level || m->capture[i].len == PATTERN_CAP_OPEN) {
    char why[40];
    snprintf(why, sizeof why, "invalid capture index %%%d", i + 1);
    fail(m, why);
    return -1;
  }
  return i;
}

/* %1..%9 at s: the same text as that capture. */
static const char *back_reference(PatternMatch *m, const char *s, int digit) {
  int i = capture_index(m, digit);
  size_t len;
  if (i < 0)
    return NULL;
  if (m->capture[i].len < 0)  /* a position capture matches nothing */
    return NULL;
  len = (size_t)m->capture[i].len;
  m->steps += (long long)(len / 64);  /* the comparison's work */
  if (!step(m))
    return NULL;
  if ((size_t)(m->src_end - s) >= len && memcmp(m->capture[i].init, s, len) == 0)
    return s + len;
  return NULL;
}

static const char *open_capture(PatternMatch *m, const char *s, const char *p, ptrdiff_t what) {
  const char *end;
  if (m->level >= PATTERN_MAXCAPTURES)
    return fail(m, "too many captures");
  m->capture[m->level].init = s;
  m->capture[m->level].len = what;
  m->level++;
  end = match(m, s, p);
  if (end == NULL)
    m->level--;
  return end;
}

static const char *close_capture(PatternMatch *m, const char *s, const char *p) {
  int i;
  const char *end;
  for (i = m->level - 1; i >= 0; i--)
    if (m->capture[i].len == PATTERN_CAP_OPEN)
      break;
  if (i < 0)
    return fail(m, "invalid pattern capture");
  m->capture[i].len = s - m->capture[i].init;
  end = match(m, s, p);
  if (end == NULL)
    m->capture[i].len = PATTERN_CAP_OPEN;
  return end;
}

/* %f[set] at s: the character before s is not in the set, the one at s is. */
static int frontier(PatternMatch *m, const char *s, const char *p, const char **rest) {
  const char *ep;
  int before, here;
  if (p >= m->p_end || *p != '[') {
    fail(m, "missing '[' after '%f' in pattern");
    return 0;
  }
  ep = item_end(m, p);
  if (ep == NULL)
    return 0;
  before = s == m->src_init ? 0 : uc(s[-1]);
  here = s < m->src_end ? uc(*s) : 0;
  *rest = ep;
  return !in_set(before, p, ep - 1) && in_set(here, p, ep - 1);
}

/* An item with its quantifier, at p (the default case of match). */
static const char *quantified(PatternMatch *m, const char *s, const char *p, const char **next) {
  const char *ep = item_end(m, p);
  int here;
  if (ep == NULL)
    return NULL;
  here = item_matches(m, s, p, ep);
  if (ep < m->p_end) {
    switch (*ep) {
      case '?': {
        const char *end = here ? match(m, s + 1, ep + 1) : NULL;
        if (end != NULL || m->status != PATTERN_OK)
          return end;
        *next = ep + 1;  /* go on without the item */
        return s;
      }
      case '+': return here ? greedy(m, s + 1, p, ep) : NULL;
      case '*': return greedy(m, s, p, ep);
      case '-': return lazy(m, s, p, ep);
      default: break;
    }
  }
  if (!here)
    return NULL;
  *next = ep;
  return s + 1;
}

/*
** The end of a match of p..p_end at s, or NULL.  Items that need the rest
** of the pattern matched after them recurse; a plain item loops.
*/
static const char *match(PatternMatch *m, const char *s, const char *p) {
  const char *result = NULL;
  if (++m->depth > PATTERN_MAXDEPTH) {
    m->depth--;
    return fail(m, "pattern too complex");
  }
  for (;;) {
    const char *next = NULL;
    if (p >= m->p_end) {
      result = s;
      break;
    }
    if (!step(m))
      break;
    if (*p == '(') {
      if (p + 1 < m->p_end && p[1] == ')')
        result = open_capture(m, s, p + 2, PATTERN_CAP_POSITION);
      else
        result = open_capture(m, s, p + 1, PATTERN_CAP_OPEN);
      break;
    }
    if (*p == ')') {
      result = close_capture(m, s, p + 1);
      break;
    }
    if (*p == '$' && p + 1 == m->p_end) {
      result = s == m->src_end ? s : NULL;
      break;
    }
    if (*p == ESCAPE && p + 1 < m->p_end && p[1] == 'b') {
      s = balanced(m, s, p + 2);
      if (s == NULL)
        break;
      p += 4;
      continue;
    }
    if (*p == ESCAPE && p + 1 < m->p_end && p[1] == 'f') {
      if (!frontier(m, s, p + 2, &next))
        break;
      p = next;
      continue;
    }
    if (*p == ESCAPE && p + 1 < m->p_end && isdigit(uc(p[1]))) {
      s = back_reference(m, s, uc(p[1]));
      if (s == NULL)
        break;
      p += 2;
      continue;
    }
    s = quantified(m, s, p, &next);
    if (s == NULL || next == NULL) {  /* failed, or matched to the end */
      result = s;
      break;
    }
    p = next;
  }
  m->depth--;
  return m->status == PATTERN_OK ? result : NULL;
}

const char *pattern_match_at(PatternMatch *m, const char *s, const char *p) {
  m->level = 0;
  m->depth = 0;
  return match(m, s, p);
}

const char *pattern_find_plain(PatternMatch *m, const char *s, size_t len,
                               const char *p, size_t plen) {
  const char *end = s + len;
  if (plen == 0)
    return s;
  while ((size_t)(end - s) >= plen) {
    const char *hit = memchr(s, p[0], (size_t)(end - s) - plen + 1);
    if (hit == NULL)
      return NULL;
    m->steps += (long long)((size_t)(hit - s) / 64 + plen / 64);
    if (!step(m))
      return NULL;
    if (memcmp(hit + 1, p + 1, plen - 1) == 0)
      return hit;
    s = hit + 1;
  }
  return NULL;
}
