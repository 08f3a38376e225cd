/*
** fold_scan.c - recovery's first pass in C: the journal's records folded
** from their bytes, with no Lua table built per record.
**
**   scan = core.fold_scan(journal, names)
**
** reads the journal as a stream (journal_lua_next: windows, not the whole
** file) and folds each record as procman.fold does with counted flows
** (lua/procman/fold.lua is the definition; this is the same fold on the
** common records, checked against it by spec/fold_scan_spec.lua): events
** applied (types 1), acks (2), snapshots of live flows (3), pending commands
** (4), completed flows (5) and the sequence counter (6), for the workflows
** in 'names' (the router's).  It reads only the fields the fold needs; the
** journaled bytes of a command become its pending envelope's bytes without
** a decode and an encode (the record is checked canonical first, so they
** are what encoding the decoded command would give).
**
** It stops at the first record it does not take (another type, a timer
** directive, parking, a late part, a fired timer, a dead letter, a
** workflow not in 'names', ids that are neither strings nor integers, bytes
** that are not canonical...), before changing anything for it: the state
** it holds is then exactly the fold of the records before, and the Lua
** fold goes on from there (scan:result() says where).  lua/procman/
** fold_scan.lua moves the state into the router's tables.
**
** Memory: the scan's tables come from the lua_State's allocator and belong
** to the userdata (its __gc frees them): a memory error raised anywhere
** leaks nothing.  It holds what is live at the end and the completed
** flows, not the records.
*/
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "lauxlib.h"
#include "buffer.h"
#include "canonical.h"
#include "codec.h"
#include "fold_scan.h"
#include "journal.h"
#include "journal_lua.h"

#define SCAN_TYPENAME "procman.fold_scan"
#define MAX_ENTRIES 16  /* flows of one event record taken here; more: the Lua fold */
#define INDEXED_MAX (1u << 20)  /* records up to this size get their value ends indexed */

enum { T_EVENT = 1, T_ACK = 2, T_FLOW = 3, T_OUTBOX = 4, T_COMPLETED = 5, T_SEQ = 6 };

/* Bytes owned by the scan (n == 0 and p == NULL: absent). */
typedef struct Raw {
  size_t n;
  unsigned char *p;
} Raw;

/* A flow or event id: an integer, or a string's bytes. */
typedef struct Id {
  int is_str;
  int64_t i;
  Raw s;
} Id;

typedef struct Ids {
  size_t n, cap;
  Id *v;
} Ids;

typedef struct Offsets {
  size_t n, cap;
  size_t *v;
} Offsets;

/* A flow: its live part (a counted flow) and its completed part, as the
** fold's live[name][id] and finished[name][id] (both may be set). */
typedef struct Flow {
  size_t wf;                 /* index in the scan's names */
  Id id;
  uint64_t hash;
  int live;
  int64_t applied;           /* the counted flow's version */
  Raw status, wversion;      /* encoded; absent: nil */
  Ids ids;                   /* event ids, for dedup */
  Offsets offsets;           /* records to replay from */
  int finished;
  Raw fstatus;               /* encoded final status */
  Ids seen;                  /* ids of the completed flow (n == 0: none) */
} Flow;

/* A pending command: its id, then its envelope's bytes, in one block (the
** id alone once acked: the index still finds it). */
typedef struct Pending {
  unsigned char *p;
  size_t idn, envn;
  int alive;
} Pending;

typedef struct Name {
  const char *s;             /* anchored in the names table (uservalue 1) */
  size_t len;
  int64_t remembered;        /* completed flows remembered (finished_of) */
} Name;

typedef struct Scan {
  lua_State *L;
  lua_Alloc alloc;
  void *ud;
  Name *names;
  size_t nnames, names_cap;
  Flow **flows;              /* in creation order */
  size_t nflows, flows_cap;
  Flow **table;              /* open addressing, by (workflow, id) */
  size_t table_cap;
  Pending *queue;            /* the outbox, in emission order */
  size_t queued, queue_cap, dead;
  size_t *by_id;             /* open addressing: queue index + 1, 0 empty */
  size_t by_id_cap, by_id_used;
  Raw seq;
  int seq_set;
  int64_t *skips;            /* next_dead_letter of type 6 records, in order */
  size_t nskips, skips_cap;
  size_t stopped;            /* offset of the record left to Lua (0: none) */
  int64_t records;           /* records folded here */
  uint32_t *ends;            /* the record's value ends (Rec) */
  size_t ends_cap;
  unsigned char *scratch;    /* an envelope being built */
  size_t scratch_cap;
} Scan;

/* ---- memory ----------------------------------------------------------- */

static void *mem(Scan *sc, void *p, size_t osize, size_t nsize) {
  void *q = sc->alloc(sc->ud, p, osize, nsize);
  if (q == NULL && nsize > 0) {
    lua_pushliteral(sc->L, "not enough memory");
    lua_error(sc->L);
  }
  return nsize > 0 ? q : NULL;
}

/* Grow an array of 'size'-byte elements to hold n + 1; returns it. */
static void *grow(Scan *sc, void *v, size_t *cap, size_t n, size_t size) {
  size_t want;
  if (n < *cap)
    return v;
  want = *cap < 4 ? 4 : 2 * *cap;
  if (want > ((size_t)-1) / size)
    luaL_error(sc->L, "procman.fold_scan: too many entries");
  v = mem(sc, v, *cap * size, want * size);
  *cap = want;
  return v;
}

static void raw_free(Scan *sc, Raw *r) {
  mem(sc, r->p, r->n, 0);
  r->p = NULL;
  r->n = 0;
}

static void raw_set(Scan *sc, Raw *r, const unsigned char *p, size_t n) {
  if (r->n != n) {
    r->p = (unsigned char *)mem(sc, r->p, r->n, n);
    r->n = n;
  }
  if (n > 0)
    memcpy(r->p, p, n);
}

/* The bytes of a value read from the record being folded, or none. */
static void raw_span(Scan *sc, Raw *raw, const unsigned char *s, size_t at, size_t end) {
  if (end > at) raw_set(sc, raw, s + at, end - at);
  else raw_free(sc, raw);
}

static void ids_free(Scan *sc, Ids *ids) {
  size_t i;
  for (i = 0; i < ids->n; i++)
    raw_free(sc, &ids->v[i].s);
  mem(sc, ids->v, ids->cap * sizeof(Id), 0);
  memset(ids, 0, sizeof *ids);
}

/* Append a copy of 'id' (its bytes are not owned yet). */
static void ids_add(Scan *sc, Ids *ids, const Id *id) {
  Id *slot;
  ids->v = (Id *)grow(sc, ids->v, &ids->cap, ids->n, sizeof(Id));
  slot = &ids->v[ids->n];
  memset(slot, 0, sizeof *slot);
  ids->n++;
  slot->is_str = id->is_str;
  slot->i = id->i;
  if (id->is_str)
    raw_set(sc, &slot->s, id->s.p, id->s.n);
}

static void flow_free_live(Scan *sc, Flow *f) {
  raw_free(sc, &f->status);
  raw_free(sc, &f->wversion);
  ids_free(sc, &f->ids);
  mem(sc, f->offsets.v, f->offsets.cap * sizeof(size_t), 0);
  memset(&f->offsets, 0, sizeof f->offsets);
  f->live = 0;
  f->applied = 0;
}

/* __gc, and scan:free(): the memory goes back now (once). */
static int scan_gc(lua_State *L) {
  Scan *sc = (Scan *)luaL_checkudata(L, 1, SCAN_TYPENAME);
  size_t i;
  if (sc->alloc == NULL) return 0;  /* freed already */
  sc->L = L;
  for (i = 0; i < sc->nflows; i++) {
    Flow *f = sc->flows[i];
    flow_free_live(sc, f);
    raw_free(sc, &f->fstatus);
    ids_free(sc, &f->seen);
    raw_free(sc, &f->id.s);
    mem(sc, f, sizeof *f, 0);
  }
  mem(sc, sc->flows, sc->flows_cap * sizeof(Flow *), 0);
  mem(sc, sc->table, sc->table_cap * sizeof(Flow *), 0);
  for (i = 0; i < sc->queued; i++)
    mem(sc, sc->queue[i].p, sc->queue[i].idn + sc->queue[i].envn, 0);
  mem(sc, sc->queue, sc->queue_cap * sizeof(Pending), 0);
  mem(sc, sc->by_id, sc->by_id_cap * sizeof(size_t), 0);
  raw_free(sc, &sc->seq);
  mem(sc, sc->skips, sc->skips_cap * sizeof(int64_t), 0);
  mem(sc, sc->scratch, sc->scratch_cap, 0);
  mem(sc, sc->ends, sc->ends_cap * sizeof(uint32_t), 0);
  mem(sc, sc->names, sc->names_cap * sizeof(Name), 0);
  memset(sc, 0, sizeof *sc);
  return 0;
}

/* ---- hashing ------------------------------------------------------------ */

static uint64_t hash_bytes(uint64_t h, const unsigned char *p, size_t n) {
  size_t i;
  for (i = 0; i < n; i++)
    h = (h ^ p[i]) * 1099511628211ULL;
  return h;
}

static uint64_t flow_hash(size_t wf, const Id *id) {
  uint64_t h = 14695981039346656037ULL ^ (uint64_t)wf;
  if (id->is_str)
    return hash_bytes(h * 31, id->s.p, id->s.n);
  return hash_bytes(h * 37, (const unsigned char *)&id->i, sizeof id->i);
}

static int id_equal(const Id *a, const Id *b) {
  if (a->is_str != b->is_str) return 0;
  if (!a->is_str) return a->i == b->i;
  return a->s.n == b->s.n && (a->s.n == 0 || memcmp(a->s.p, b->s.p, a->s.n) == 0);
}

/* The flow (wf, id), or NULL. */
static Flow *flow_find(Scan *sc, size_t wf, const Id *id, uint64_t h) {
  size_t mask = sc->table_cap - 1, i;
  if (sc->table_cap == 0) return NULL;
  for (i = (size_t)h & mask; sc->table[i] != NULL; i = (i + 1) & mask) {
    Flow *f = sc->table[i];
    if (f->hash == h && f->wf == wf && id_equal(&f->id, id)) return f;
  }
  return NULL;
}

static void table_put(Flow **table, size_t cap, Flow *f) {
  size_t i;
  for (i = (size_t)f->hash & (cap - 1); table[i] != NULL; i = (i + 1) & (cap - 1)) {}
  table[i] = f;
}

/* The flow (wf, id), made when it is new. */
static Flow *flow_get(Scan *sc, size_t wf, const Id *id) {
  uint64_t h = flow_hash(wf, id);
  Flow *f = flow_find(sc, wf, id, h);
  size_t i;
  if (f != NULL) return f;
  if (2 * (sc->nflows + 1) > sc->table_cap) {  /* rehash at half full */
    size_t cap = sc->table_cap < 64 ? 64 : 2 * sc->table_cap;
    Flow **table = (Flow **)mem(sc, NULL, 0, cap * sizeof(Flow *));
    memset(table, 0, cap * sizeof(Flow *));
    for (i = 0; i < sc->nflows; i++) table_put(table, cap, sc->flows[i]);
    mem(sc, sc->table, sc->table_cap * sizeof(Flow *), 0);
    sc->table = table;
    sc->table_cap = cap;
  }
  sc->flows = (Flow **)grow(sc, sc->flows, &sc->flows_cap, sc->nflows, sizeof(Flow *));
  f = (Flow *)mem(sc, NULL, 0, sizeof *f);
  memset(f, 0, sizeof *f);
  sc->flows[sc->nflows++] = f;  /* owned from here on */
  f->wf = wf;
  f->hash = h;
  f->id.is_str = id->is_str;
  f->id.i = id->i;
  if (id->is_str) raw_set(sc, &f->id.s, id->s.p, id->s.n);
  table_put(sc->table, sc->table_cap, f);
  return f;
}

/* ---- the outbox ------------------------------------------------------- */

/* The queue slot of pending id s[n] (alive or not), or (size_t)-1. */
static size_t *by_id_slot(Scan *sc, const unsigned char *s, size_t n) {
  size_t mask = sc->by_id_cap - 1, i;
  if (sc->by_id_cap == 0) return NULL;
  for (i = (size_t)hash_bytes(14695981039346656037ULL, s, n) & mask; sc->by_id[i] != 0;
       i = (i + 1) & mask) {
    Pending *p = &sc->queue[sc->by_id[i] - 1];
    if (p->idn == n && memcmp(p->p, s, n) == 0) return &sc->by_id[i];
  }
  return &sc->by_id[i];
}

static int is_pending(Scan *sc, const unsigned char *s, size_t n) {
  size_t *slot = by_id_slot(sc, s, n);
  return slot != NULL && *slot != 0 && sc->queue[*slot - 1].alive;
}

/* Rebuild the index (and, with 'squeeze', drop acked commands first). */
static void outbox_rebuild(Scan *sc, size_t cap, int squeeze) {
  size_t i, j = 0;
  size_t *by_id = (size_t *)mem(sc, NULL, 0, cap * sizeof(size_t));
  memset(by_id, 0, cap * sizeof(size_t));
  mem(sc, sc->by_id, sc->by_id_cap * sizeof(size_t), 0);
  sc->by_id = by_id;
  sc->by_id_cap = cap;
  sc->by_id_used = 0;
  for (i = 0; i < sc->queued; i++) {
    Pending p = sc->queue[i];
    if (squeeze && !p.alive) {
      mem(sc, p.p, p.idn + p.envn, 0);
      continue;
    }
    sc->queue[j] = p;
    *by_id_slot(sc, p.p, p.idn) = ++j;
    sc->by_id_used++;
  }
  if (squeeze) {
    sc->queued = j;
    sc->dead = 0;
  }
}

/* Push a command: its id and envelope (copied). */
static void outbox_push(Scan *sc, const unsigned char *id, size_t idn, const unsigned char *env,
                        size_t envn) {
  size_t *slot;
  Pending *p;
  if (sc->dead > 1024 && sc->dead > sc->queued / 2)
    outbox_rebuild(sc, sc->by_id_cap, 1);
  if (2 * (sc->by_id_used + 1) > sc->by_id_cap)
    outbox_rebuild(sc, sc->by_id_cap < 64 ? 64 : 2 * sc->by_id_cap, 0);
  sc->queue = (Pending *)grow(sc, sc->queue, &sc->queue_cap, sc->queued, sizeof(Pending));
  p = &sc->queue[sc->queued];
  memset(p, 0, sizeof *p);
  p->p = (unsigned char *)mem(sc, NULL, 0, idn + envn + 1);
  memcpy(p->p, id, idn);
  memcpy(p->p + idn, env, envn);
  p->idn = idn;
  p->envn = envn + 1;  /* the block's size, less the id (never 0 bytes) */
  p->alive = 1;
  sc->queued++;
  slot = by_id_slot(sc, id, idn);
  if (*slot == 0) sc->by_id_used++;
  *slot = sc->queued;
}

static void outbox_forget(Scan *sc, const unsigned char *s, size_t n) {
  size_t *slot = by_id_slot(sc, s, n);
  Pending *p;
  if (slot == NULL || *slot == 0) return;
  p = &sc->queue[*slot - 1];
  if (!p->alive) return;
  p->alive = 0;
  p->p = (unsigned char *)mem(sc, p->p, p->idn + p->envn, p->idn + 1);  /* shrinks */
  p->envn = 1;
  sc->dead++;
}

/* ---- reading a canonical record ---------------------------------------- */

/* A record's payload, checked canonical: ends[pos] is where the value
** starting at pos ends (the check notes it), NULL when it is too large to
** index (then values are walked). */
typedef struct Rec {
  const unsigned char *s;
  size_t len;
  const uint32_t *ends;
} Rec;

/* A key that fields() looks for, with its length. */
typedef struct FieldName {
  const char *s;
  size_t n;
} FieldName;

#define K(name) { name, sizeof(name) - 1 }

typedef struct Span {
  size_t at, end;  /* at == end: absent */
} Span;

/* Past the value at s[pos]: noted by the canonical check, or walked (the
** record was checked canonical: well-formed). */
static size_t skip(const Rec *r, size_t pos) {
  const unsigned char *s = r->s;
  size_t items = 1;
  if (r->ends != NULL) return r->ends[pos];
  while (items > 0) {
    unsigned char tag = s[pos++];
    size_t n = 0;
    items--;
    if (tag <= 0x7f || tag >= 0xe0 || tag == 0xc0 || tag == 0xc2 || tag == 0xc3) continue;
    if (tag <= 0x8f) { items += 2 * (size_t)(tag & 0x0f); continue; }
    if (tag <= 0x9f) { items += tag & 0x0f; continue; }
    if (tag <= 0xbf) { pos += tag & 0x1f; continue; }
    switch (tag) {
      case 0xcb: case 0xcf: case 0xd3: pos += 8; break;
      case 0xcc: case 0xd0: pos += 1; break;
      case 0xcd: case 0xd1: pos += 2; break;
      case 0xce: case 0xd2: pos += 4; break;
      case 0xc4: case 0xd9: pos += 1 + s[pos]; break;
      case 0xc5: case 0xda: pos += 2 + ((size_t)s[pos] << 8 | s[pos + 1]); break;
      case 0xc6: case 0xdb:
        n = (size_t)s[pos] << 24 | (size_t)s[pos + 1] << 16 | (size_t)s[pos + 2] << 8 | s[pos + 3];
        pos += 4 + n;
        break;
      case 0xdc: case 0xde:
        n = (size_t)s[pos] << 8 | s[pos + 1];
        pos += 2;
        items += tag == 0xde ? 2 * n : n;
        break;
      default:  /* 0xdd, 0xdf */
        n = (size_t)s[pos] << 24 | (size_t)s[pos + 1] << 16 | (size_t)s[pos + 2] << 8 | s[pos + 3];
        pos += 4;
        items += tag == 0xdf ? 2 * n : n;
    }
  }
  return pos;
}

/* The header of the str/bin at s[pos]: 1 with its bytes, or 0. */
static int string_at(const Rec *r, size_t pos, const unsigned char **p,
                     size_t *n) {
  const unsigned char *s = r->s;
  size_t len = r->len;
  unsigned char tag;
  size_t w = 0, i;
  if (pos >= len) return 0;
  tag = s[pos];
  if (tag >= 0xa0 && tag <= 0xbf) { *n = tag & 0x1f; *p = s + pos + 1; return 1; }
  if (tag == 0xc4 || tag == 0xd9) w = 1;
  else if (tag == 0xc5 || tag == 0xda) w = 2;
  else if (tag == 0xc6 || tag == 0xdb) w = 4;
  else return 0;
  *n = 0;
  for (i = 1; i <= w; i++) *n = (*n << 8) | s[pos + i];
  *p = s + pos + 1 + w;
  return 1;
}

/* The integer at s[pos] (canonical): 1 with it, or 0. */
static int int_at(const unsigned char *s, size_t pos, int64_t *v) {
  unsigned char tag = s[pos];
  int width, i;
  uint64_t u = 0;
  if (tag <= 0x7f) { *v = tag; return 1; }
  if (tag >= 0xe0) { *v = (int64_t)tag - 256; return 1; }
  if (tag >= 0xcc && tag <= 0xcf) width = 1 << (tag - 0xcc);
  else if (tag >= 0xd0 && tag <= 0xd3) width = 1 << (tag - 0xd0);
  else return 0;
  for (i = 1; i <= width; i++) u = (u << 8) | s[pos + i];
  if (tag <= 0xcf) *v = (int64_t)u;
  else {
    uint64_t sign = 1ULL << (width * 8 - 1);
    *v = (int64_t)((u ^ sign) - sign);
  }
  return 1;
}

/* An id (string or integer) at s[pos], its bytes not copied. */
static int id_at(const Rec *r, size_t pos, Id *id) {
  const unsigned char *s = r->s;
  const unsigned char *p;
  size_t n;
  memset(id, 0, sizeof *id);
  if (string_at(r, pos, &p, &n)) {
    id->is_str = 1;
    id->s.p = (unsigned char *)p;
    id->s.n = n;
    return 1;
  }
  return int_at(s, pos, &id->i);
}

/* The container at s[pos] whose fix form starts at 'fix' and whose 16-bit
** form is 'tag16' (a map: 0x80, 0xde; an array: 0x90, 0xdc): 1 with its
** count and *pos at its first element, or 0. */
static int container_at(const unsigned char *s, size_t *pos, size_t *n, unsigned fix,
                        unsigned tag16) {
  unsigned tag = s[*pos];
  const unsigned char *p = s + *pos + 1;
  if (tag >= fix && tag <= fix + 0x0f) { *n = tag & 0x0f; *pos += 1; return 1; }
  if (tag == tag16) { *n = (size_t)p[0] << 8 | p[1]; *pos += 3; return 1; }
  if (tag == tag16 + 1) {
    *n = (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
    *pos += 5;
    return 1;
  }
  return 0;
}

static int map_at(const unsigned char *s, size_t *pos, size_t *n) {
  return container_at(s, pos, n, 0x80, 0xde);
}

static int array_at(const unsigned char *s, size_t *pos, size_t *n) {
  return container_at(s, pos, n, 0x90, 0xdc);
}

/* A list as the fold reads it: an array, or {} (an empty map). */
static int list_at(const unsigned char *s, size_t *pos, size_t *n) {
  if (s[*pos] == 0x80) { *pos += 1; *n = 0; return 1; }
  return array_at(s, pos, n);
}

/*
** The values of the string keys 'keys' (ending with { NULL, 0 }) of
** the map at s[pos]: spans[k] for keys[k] (absent: at == end).  0 if it
** is not a map.
*/
static int fields(const Rec *r, size_t pos, const FieldName *keys, Span *spans) {
  const unsigned char *s = r->s;
  size_t n, i, k;
  for (k = 0; keys[k].s != NULL; k++) spans[k].at = spans[k].end = 0;
  if (!map_at(s, &pos, &n)) return 0;
  for (i = 0; i < n; i++) {
    const unsigned char *p;
    size_t klen, vat;
    int is_str = string_at(r, pos, &p, &klen);
    vat = skip(r, pos);
    pos = skip(r, vat);
    if (!is_str || klen == 0) continue;
    for (k = 0; keys[k].s != NULL; k++) {
      if (keys[k].n == klen && (unsigned char)keys[k].s[0] == p[0] &&
          memcmp(keys[k].s, p, klen) == 0) {
        spans[k].at = vat;
        spans[k].end = pos;
        break;
      }
    }
  }
  return 1;
}

static int present(const Span *sp) { return sp->end > sp->at; }

/* Truthy as Lua sees it: present and not false (nil is never written). */
static int truthy(const unsigned char *s, const Span *sp) {
  return present(sp) && s[sp->at] != 0xc2;
}

/* The index of workflow name s[sp], or (size_t)-1 (not a string, or not
** one of the router's). */
static size_t workflow_at(Scan *sc, const Rec *r, const Span *sp) {
  const unsigned char *p;
  size_t n, i;
  if (!present(sp) || !string_at(r, sp->at, &p, &n)) return (size_t)-1;
  for (i = 0; i < sc->nnames; i++)
    if (sc->names[i].len == n && memcmp(sc->names[i].s, p, n) == 0) return i;
  return (size_t)-1;
}

/* ---- type 1: an event handled ------------------------------------------ */

/* v in decimal, as Lua's tostring and %d give it, at out (room for 21);
** its length. */
static size_t format_int(char *out, int64_t v) {
  char digits[24];
  size_t n = 0, i;
  uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
  do {
    digits[n++] = (char)('0' + u % 10);
    u /= 10;
  } while (u > 0);
  if (v < 0) digits[n++] = '-';
  for (i = 0; i < n; i++) out[i] = digits[n - 1 - i];
  return n;
}

#define ID_MAX 512  /* command ids longer than this: the Lua fold's */

typedef struct Entry {
  size_t wf;
  Id id;
  Span workflow, flow, commands, status, wversion;
  size_t ncommands, first_command;
  int done;
  char text[24];             /* an integer flow id as tostring gives it */
  size_t text_len;
  char prefix[ID_MAX];       /* its command ids, but for their number */
  size_t prefix_len;
} Entry;

enum { F_WORKFLOW, F_FLOW, F_COMMANDS, F_STATUS, F_DONE, F_WVERSION, F_PARKED, F_HELD, F_RESUMED };
static const FieldName entry_keys[] = { K("workflow"), K("flow"), K("commands"), K("status"),
                                        K("done"), K("workflow_version"), K("parked"), K("held"),
                                        K("resumed"), { NULL, 0 } };

/* A flow id as tostring gives it (the command ids' prefix). */
static void id_text(const Entry *e, const unsigned char **p, size_t *n) {
  if (e->id.is_str) { *p = e->id.s.p; *n = e->id.s.n; }
  else { *p = (const unsigned char *)e->text; *n = e->text_len; }
}

/* Are the commands at s[e->commands] plain (no timer directive), each a
** table?  Notes their count and where the first one starts. */
static int plain_commands(const Rec *r, Entry *e) {
  const unsigned char *s = r->s;
  static const FieldName ct[] = { K("command_type"), { NULL, 0 } };
  size_t pos = e->commands.at, i;
  if (!list_at(s, &pos, &e->ncommands)) return 0;
  e->first_command = pos;
  for (i = 0; i < e->ncommands; i++) {
    Span type;
    const unsigned char *p;
    size_t n;
    unsigned char tag = s[pos];
    if (!((tag >= 0x80 && tag <= 0x9f) || tag == 0xdc || tag == 0xdd || tag == 0xde || tag == 0xdf))
      return 0;  /* not a table: timers.split raises, in the Lua fold */
    if (fields(r, pos, ct, &type) && present(&type) && string_at(r, type.at, &p, &n) &&
        n >= 10 && memcmp(p, "procman.", 8) == 0)
      return 0;  /* procman.after/at/cancel, or near enough: the Lua fold */
    pos = skip(r, pos);
  }
  return 1;
}

/* One entry of 'flows', read: 0 if the Lua fold must take the record. */
static int read_entry(Scan *sc, const Rec *r, size_t pos, Entry *e) {
  const unsigned char *s = r->s;
  Span f[9];
  if (!fields(r, pos, entry_keys, f)) return 0;
  if (truthy(s, &f[F_PARKED]) || truthy(s, &f[F_HELD]) || truthy(s, &f[F_RESUMED])) return 0;
  e->wf = workflow_at(sc, r, &f[F_WORKFLOW]);
  if (e->wf == (size_t)-1 || !present(&f[F_FLOW]) || !id_at(r, f[F_FLOW].at, &e->id))
    return 0;
  if (!e->id.is_str) e->text_len = format_int(e->text, e->id.i);
  e->workflow = f[F_WORKFLOW];
  e->flow = f[F_FLOW];
  e->status = f[F_STATUS];
  e->wversion = f[F_WVERSION];
  e->done = truthy(s, &f[F_DONE]);
  e->commands = f[F_COMMANDS];
  e->ncommands = 0;
  if (!truthy(s, &e->commands)) {
    e->commands.at = e->commands.end = 0;
    return 1;
  }
  return plain_commands(r, e);
}

/* The prefix of a flow's command ids after its version 'v' (records.lua's
** command_prefix: "workflow/flow/version/"); 0 if it is too long. */
static int command_prefix(Scan *sc, Entry *e, int64_t v) {
  const unsigned char *p;
  size_t n, w = sc->names[e->wf].len;
  char *out = e->prefix;
  id_text(e, &p, &n);
  if (w + n + 48 > ID_MAX) return 0;
  memcpy(out, sc->names[e->wf].s, w);
  out[w] = '/';
  memcpy(out + w + 1, p, n);
  out += w + 1 + n;
  *out++ = '/';
  out += format_int(out, v);
  *out++ = '/';
  e->prefix_len = (size_t)(out - e->prefix);
  return 1;
}

/* The i-th command id of an entry, in buf (ID_MAX bytes); its length. */
static size_t command_id(const Entry *e, size_t i, char *buf) {
  memcpy(buf, e->prefix, e->prefix_len);
  return e->prefix_len + format_int(buf + e->prefix_len, (int64_t)i);
}

static size_t applied_of(Scan *sc, const Entry *e) {
  Flow *f = flow_find(sc, e->wf, &e->id, flow_hash(e->wf, &e->id));
  return f != NULL && f->live ? (size_t)f->applied : 0;
}

/* The command ids of the entries; 0 if the Lua fold must say what
** happens: a flow listed twice (the fold counts both entries before it
** settles either), two flows whose ids read alike (7 and "7": their
** command ids would be the same), or an id already pending. */
static int command_ids(Scan *sc, Entry *entries, size_t n) {
  size_t a, b, i;
  char id[ID_MAX];
  for (a = 0; a < n; a++) {
    const unsigned char *pa, *pb;
    size_t na, nb;
    id_text(&entries[a], &pa, &na);
    for (b = a + 1; b < n; b++) {
      if (entries[b].wf != entries[a].wf) continue;
      id_text(&entries[b], &pb, &nb);
      if (na == nb && memcmp(pa, pb, na) == 0) return 0;
    }
    if (entries[a].ncommands == 0) continue;
    if (!command_prefix(sc, &entries[a], (int64_t)applied_of(sc, &entries[a]) + 1)) return 0;
    for (i = 1; i <= entries[a].ncommands; i++)
      if (is_pending(sc, (const unsigned char *)id, command_id(&entries[a], i, id))) return 0;
  }
  return 1;
}

/* Append bytes to the scratch envelope. */
static void put(Scan *sc, size_t *n, const void *p, size_t k) {
  if (sc->scratch_cap - *n < k) {
    size_t cap = sc->scratch_cap < 256 ? 256 : sc->scratch_cap;
    while (cap - *n < k) cap *= 2;
    sc->scratch = (unsigned char *)mem(sc, sc->scratch, sc->scratch_cap, cap);
    sc->scratch_cap = cap;
  }
  memcpy(sc->scratch + *n, p, k);
  *n += k;
}

/* A str (fix 0xa0, tags 0xd9..0xdb) or bin (no fix form, 0xc4..0xc6)
** length header, as the encoder writes it: the shortest form. */
static void put_length(Scan *sc, size_t *at, size_t n, unsigned fix, unsigned tag8) {
  unsigned char h[5];
  size_t hn, i;
  if (fix != 0 && n <= 31) {
    h[0] = (unsigned char)(fix | n);
    hn = 1;
  }
  else {
    size_t width = n <= 0xff ? 1 : n <= 0xffff ? 2 : 4;
    h[0] = (unsigned char)(tag8 + (width == 1 ? 0 : width == 2 ? 1 : 2));
    for (i = 0; i < width; i++) h[1 + i] = (unsigned char)(n >> (8 * (width - 1 - i)));
    hn = 1 + width;
  }
  put(sc, at, h, hn);
}

/* A str or bin of p[n], as the encoder writes it. */
static void put_string(Scan *sc, size_t *at, const unsigned char *p, size_t n) {
  if (codec_utf8_valid(p, n)) put_length(sc, at, n, 0xa0, 0xd9);
  else put_length(sc, at, n, 0, 0xc4);
  put(sc, at, p, n);
}

/*
** The flow's commands become pending envelopes { command, flow, id,
** workflow } (outbox.lua's emit), encoded as the encoder would: its keys
** in that order, the command's and the flow id's journaled bytes as they
** are (canonical), the id made here.
*/
static void emit(Scan *sc, const Rec *r, const Entry *e) {
  const unsigned char *s = r->s;
  char id[ID_MAX];
  size_t i, pos = e->first_command;
  for (i = 1; i <= e->ncommands; i++) {
    size_t idn = command_id(e, i, id), n = 0;
    size_t end = skip(r, pos);
    put(sc, &n, "\x84\xa7" "command", 9);
    put(sc, &n, s + pos, end - pos);
    put(sc, &n, "\xa4" "flow", 5);
    put(sc, &n, s + e->flow.at, e->flow.end - e->flow.at);
    put(sc, &n, "\xa2" "id", 3);
    put_string(sc, &n, (const unsigned char *)id, idn);
    put(sc, &n, "\xa8" "workflow", 9);
    put(sc, &n, s + e->workflow.at, e->workflow.end - e->workflow.at);
    outbox_push(sc, (const unsigned char *)id, idn, sc->scratch, n);
    pos = end;
  }
}

/* fold.complete: the counted flow leaves the live set, remembered as
** completed with its status and event ids. */
static void complete(Scan *sc, Flow *f) {
  raw_free(sc, &f->fstatus);
  ids_free(sc, &f->seen);
  f->fstatus = f->status;  /* moved */
  f->status.p = NULL;
  f->status.n = 0;
  f->seen = f->ids;
  memset(&f->ids, 0, sizeof f->ids);
  f->finished = 1;
  sc->names[f->wf].remembered++;
  flow_free_live(sc, f);
}

/* The event_id of the event at s[sp] (a router's dedup): 1 with it (or
** none: *has = 0), or 0 when the Lua fold must take it. */
static int event_id_of(const Rec *r, const Span *sp, Id *id, int *has) {
  const unsigned char *s = r->s;
  static const FieldName keys[] = { K("event_id"), { NULL, 0 } };
  Span v;
  size_t pos = sp->at, n;
  *has = 0;
  if (!present(sp)) return 0;
  if (array_at(s, &pos, &n)) return 1;  /* a table without the key */
  if (!fields(r, sp->at, keys, &v)) return 0;  /* not a table: rawget raises */
  if (!present(&v)) return 1;
  *has = 1;
  return id_at(r, v.at, id);
}

static void settle_entry(Scan *sc, const Rec *r, size_t offset, Entry *e,
                         const Id *event_id, int has_id) {
  const unsigned char *s = r->s;
  Flow *f;
  if (e->commands.end == 0) return;  /* neither applied nor parked: nothing */
  f = flow_get(sc, e->wf, &e->id);
  if (!f->live) {  /* a counted flow starts */
    flow_free_live(sc, f);
    raw_span(sc, &f->wversion, s, e->wversion.at, e->wversion.end);
    f->live = 1;
  }
  f->offsets.v = (size_t *)grow(sc, f->offsets.v, &f->offsets.cap, f->offsets.n, sizeof(size_t));
  f->offsets.v[f->offsets.n++] = offset;
  f->applied++;
  raw_span(sc, &f->status, s, e->status.at, e->status.end);
  if (has_id) ids_add(sc, &f->ids, event_id);
  if (e->ncommands > 0) emit(sc, r, e);
  if (e->done) complete(sc, f);
}

enum { R_SEQ, R_EVENT, R_FLOWS, R_FIRED, R_LATE, R_DEAD };
static const FieldName event_keys[] = { K("seq"), K("event"), K("flows"), K("fired"), K("late"),
                                        K("dead_letter"), { NULL, 0 } };

static int fold_event(Scan *sc, const Rec *r, size_t offset) {
  const unsigned char *s = r->s;
  Span rf[6];
  Entry entries[MAX_ENTRIES];
  Id event_id;
  size_t n, i, pos;
  int has_id = 0, any = 0;
  if (!fields(r, 0, event_keys, rf)) return 0;
  if (truthy(s, &rf[R_FIRED]) || truthy(s, &rf[R_LATE]) || truthy(s, &rf[R_DEAD])) return 0;
  if (!present(&rf[R_FLOWS])) return 0;
  pos = rf[R_FLOWS].at;
  if (!list_at(s, &pos, &n) || n > MAX_ENTRIES) return 0;
  for (i = 0; i < n; i++) {
    if (!read_entry(sc, r, pos, &entries[i])) return 0;
    any = any || entries[i].commands.end != 0;
    pos = skip(r, pos);
  }
  if (any && !event_id_of(r, &rf[R_EVENT], &event_id, &has_id)) return 0;
  if (!command_ids(sc, entries, n)) return 0;
  /* taken: from here on only memory can fail (and the recovery with it) */
  for (i = 0; i < n; i++) settle_entry(sc, r, offset, &entries[i], &event_id, has_id);
  raw_span(sc, &sc->seq, s, rf[R_SEQ].at, rf[R_SEQ].end);
  sc->seq_set = 1;
  return 1;
}

/* ---- the other records --------------------------------------------------- */

enum { S_WORKFLOW, S_FLOW, S_VERSION, S_STATUS, S_SEEN, S_WVERSION };
static const FieldName flow_keys[] = { K("workflow"), K("flow"), K("version"), K("status"), K("seen"),
                                       K("workflow_version"), { NULL, 0 } };

/* Type 3: a counted flow from a snapshot (the state is for the replay). */
static int fold_flow(Scan *sc, const Rec *r, size_t offset) {
  const unsigned char *s = r->s;
  Span f[6];
  Id id, seen;
  size_t wf, pos, n, i;
  int64_t version = 0;
  Flow *flow;
  if (!fields(r, 0, flow_keys, f)) return 0;
  wf = workflow_at(sc, r, &f[S_WORKFLOW]);
  if (wf == (size_t)-1 || !present(&f[S_FLOW]) || !id_at(r, f[S_FLOW].at, &id)) return 0;
  if (present(&f[S_VERSION]) && !int_at(s, f[S_VERSION].at, &version)) return 0;
  n = 0;
  if (present(&f[S_SEEN])) {
    pos = f[S_SEEN].at;
    if (!list_at(s, &pos, &n)) return 0;
    for (i = 0; i < n; i++, pos = skip(r, pos))
      if (!id_at(r, pos, &seen)) return 0;
  }
  flow = flow_get(sc, wf, &id);
  flow_free_live(sc, flow);
  flow->live = 1;
  flow->applied = version;
  raw_span(sc, &flow->status, s, f[S_STATUS].at, f[S_STATUS].end);
  raw_span(sc, &flow->wversion, s, f[S_WVERSION].at, f[S_WVERSION].end);
  if (n > 0) {
    pos = f[S_SEEN].at;
    list_at(s, &pos, &n);
    for (i = 0; i < n; i++, pos = skip(r, pos)) {
      id_at(r, pos, &seen);
      ids_add(sc, &flow->ids, &seen);
    }
  }
  flow->offsets.v = (size_t *)grow(sc, flow->offsets.v, &flow->offsets.cap, 0, sizeof(size_t));
  flow->offsets.v[flow->offsets.n++] = offset;
  return 1;
}

/* Type 5: a completed flow (no ids: compaction let them go). */
static int fold_completed(Scan *sc, const Rec *r) {
  const unsigned char *s = r->s;
  Span f[6];
  Id id;
  size_t wf;
  Flow *flow;
  if (!fields(r, 0, flow_keys, f)) return 0;
  wf = workflow_at(sc, r, &f[S_WORKFLOW]);
  if (wf == (size_t)-1 || !present(&f[S_FLOW]) || !id_at(r, f[S_FLOW].at, &id)) return 0;
  flow = flow_get(sc, wf, &id);
  raw_span(sc, &flow->fstatus, s, f[S_STATUS].at, f[S_STATUS].end);
  ids_free(sc, &flow->seen);
  flow->finished = 1;
  sc->names[wf].remembered++;
  return 1;
}

static int is_array(unsigned char tag) {
  return (tag >= 0x90 && tag <= 0x9f) || tag == 0xdc || tag == 0xdd;
}

/* Type 2 (ack) and 4 (a pending command), by their string id.  An ack of
** anything else acks nothing (only strings are pending here); a pending
** command without a string id is the Lua fold's. */
static int fold_by_id(Scan *sc, const Rec *r, int type) {
  const unsigned char *s = r->s;
  size_t len = r->len;
  static const FieldName keys[] = { K("id"), { NULL, 0 } };
  Span f;
  const unsigned char *p;
  size_t n;
  if (!fields(r, 0, keys, &f))
    return type == T_ACK && is_array(s[0]);  /* rec.id of a scalar raises */
  if (!present(&f) || !string_at(r, f.at, &p, &n))
    return type == T_ACK;
  if (type == T_ACK) {
    outbox_forget(sc, p, n);
    return 1;
  }
  if (is_pending(sc, p, n)) return 0;  /* pushed twice: the Lua fold */
  outbox_push(sc, p, n, s, len);
  return 1;
}

/* Type 6: the sequence counter and the next dead letter id. */
static int fold_seq(Scan *sc, const Rec *r) {
  const unsigned char *s = r->s;
  static const FieldName keys[] = { K("seq"), K("next_dead_letter"), { NULL, 0 } };
  Span f[2];
  int64_t next = 0;
  if (!fields(r, 0, keys, f)) return 0;
  if (present(&f[1]) && !int_at(s, f[1].at, &next)) return 0;
  if (present(&f[1])) {
    sc->skips = (int64_t *)grow(sc, sc->skips, &sc->skips_cap, sc->nskips, sizeof(int64_t));
    sc->skips[sc->nskips++] = next;
  }
  raw_span(sc, &sc->seq, s, f[0].at, f[0].end);
  sc->seq_set = 1;
  return 1;
}

/* Fold one record; 0 (nothing changed) when the Lua fold must take it. */
static int fold_record(Scan *sc, int type, const unsigned char *s, size_t len, size_t offset) {
  size_t end = 0;
  Rec rec;
  rec.s = s;
  rec.len = len;
  rec.ends = NULL;
  if (len <= INDEXED_MAX) {  /* the check notes where each value ends */
    if (len > sc->ends_cap) {
      size_t cap = len < 4096 ? 4096 : len;
      sc->ends = (uint32_t *)mem(sc, sc->ends, sc->ends_cap * sizeof(uint32_t),
                                 cap * sizeof(uint32_t));
      sc->ends_cap = cap;
    }
    rec.ends = sc->ends;
  }
  if (len == 0 || !canonical_value(s, len, &end, rec.ends != NULL ? sc->ends : NULL) || end != len)
    return 0;
  switch (type) {
    case T_EVENT: return fold_event(sc, &rec, offset);
    case T_ACK: case T_OUTBOX: return fold_by_id(sc, &rec, type);
    case T_FLOW: return fold_flow(sc, &rec, offset);
    case T_COMPLETED: return fold_completed(sc, &rec);
    case T_SEQ: return fold_seq(sc, &rec);
    default: return 0;
  }
}

/* ---- Lua ------------------------------------------------------------------ */

static Scan *check_scan(lua_State *L) {
  Scan *sc = (Scan *)luaL_checkudata(L, 1, SCAN_TYPENAME);
  if (sc->alloc == NULL) luaL_error(L, "procman.fold_scan: the scan was freed");
  sc->L = L;
  return sc;
}

/* Decode bytes the scan holds (canonical: they decode) and push them. */
static void push_raw(lua_State *L, const Raw *r) {
  size_t pos = 0;
  if (r->n == 0) lua_pushnil(L);
  else if (!codec_decode(L, (const char *)r->p, r->n, &pos)) lua_error(L);
}

static void push_id(lua_State *L, const Id *id) {
  if (id->is_str) lua_pushlstring(L, (const char *)id->s.p, id->s.n);
  else lua_pushinteger(L, (lua_Integer)id->i);
}

static void push_name(lua_State *L, const Scan *sc, size_t wf) {
  lua_pushlstring(L, sc->names[wf].s, sc->names[wf].len);
}

/*
** core.fold_scan(journal, names) -> scan: fold the journal's records from
** the first, until one the Lua fold must take or the end.
*/
int fold_scan_lua(lua_State *L) {
  Scan *sc;
  size_t i, count, offset, len;
  const unsigned char *payload;
  int type;
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  sc = (Scan *)lua_newuserdatauv(L, sizeof(Scan), 1);               /* 3 */
  memset(sc, 0, sizeof *sc);
  sc->L = L;
  sc->alloc = lua_getallocf(L, &sc->ud);
  luaL_setmetatable(L, SCAN_TYPENAME);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, 3, 1);  /* anchors the names' strings */
  count = (size_t)luaL_len(L, 2);
  sc->names = (Name *)mem(sc, NULL, 0, (count + 1) * sizeof(Name));
  sc->names_cap = count + 1;
  for (i = 0; i < count; i++) {
    lua_rawgeti(L, 2, (lua_Integer)i + 1);
    sc->names[i].s = luaL_checklstring(L, -1, &sc->names[i].len);
    sc->names[i].remembered = 0;
    sc->nnames = i + 1;
    lua_pop(L, 1);
  }
  journal_lua_reader(L, 1, JOURNAL_HEADER_SIZE);                                      /* 4 */
  while (journal_lua_next(L, 4, 1, &offset, &type, &payload, &len)) {
    if (!fold_record(sc, type, payload, len, offset)) {
      sc->stopped = offset;
      break;
    }
    sc->records++;
  }
  lua_settop(L, 3);
  return 1;
}

/* scan:result() -> records folded, offset of the record left to Lua or nil */
static int scan_result(lua_State *L) {
  Scan *sc = check_scan(L);
  lua_pushinteger(L, (lua_Integer)sc->records);
  if (sc->stopped) lua_pushinteger(L, (lua_Integer)sc->stopped);
  else lua_pushnil(L);
  return 2;
}

/* scan:seq() -> was it set, its value; scan:skips() -> next_dead_letter values */
static int scan_seq(lua_State *L) {
  Scan *sc = check_scan(L);
  lua_pushboolean(L, sc->seq_set);
  push_raw(L, &sc->seq);
  return 2;
}

static int scan_skips(lua_State *L) {
  Scan *sc = check_scan(L);
  size_t i;
  lua_createtable(L, (int)sc->nskips, 0);
  for (i = 0; i < sc->nskips; i++) {
    lua_pushinteger(L, (lua_Integer)sc->skips[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

static void push_ids(lua_State *L, const Ids *ids) {
  size_t i;
  lua_createtable(L, (int)ids->n, 0);
  for (i = 0; i < ids->n; i++) {
    push_id(L, &ids->v[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
}

void fold_put_final_status(lua_State *L, int bidx, const char *status, size_t n) {
  uint32_t len = (uint32_t)n;
  if (n > UINT32_MAX)
    luaL_error(L, "procman: a status of %zu bytes is too long", n);
  buffer_append(L, bidx, &len, sizeof len);
  buffer_append(L, bidx, status, n);
}

/*
** scan:finished(finished, finished_of) -> n: the completed flows into the
** fold's tables (finished[name][id] = the entry procman.fold.final makes:
** the status, then the codec's bytes for the array of its event ids);
** finished_of[name] grows by the flows remembered; n is their sum.
*/
static int scan_finished(lua_State *L) {
  Scan *sc = check_scan(L);
  size_t i;
  lua_Integer total = 0;
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);
  buffer_new(L, 64);                                   /* 4 */
  for (i = 0; i < sc->nflows; i++) {
    const Flow *f = sc->flows[i];
    if (!f->finished) continue;
    push_name(L, sc, f->wf);
    lua_rawget(L, 2);                                  /* finished[name] */
    push_id(L, &f->id);
    buffer_at(L, 4)->len = 0;
    push_raw(L, &f->fstatus);
    if (lua_type(L, -1) == LUA_TSTRING) {
      size_t n;
      const char *status = lua_tolstring(L, -1, &n);
      fold_put_final_status(L, 4, status, n);
    }
    if (f->seen.n > 0) {
      push_ids(L, &f->seen);
      if (!codec_encode(L, -1, 4, "ids"))
        return lua_error(L);  /* (not reached: strings and integers) */
      lua_pop(L, 1);
    }
    if (lua_type(L, -1) == LUA_TSTRING) {
      lua_pop(L, 1);
      lua_pushlstring(L, buffer_at(L, 4)->data, buffer_at(L, 4)->len);
    }
    else {  /* no status (or not a string): the table procman.fold.final makes */
      lua_createtable(L, 0, 2);
      lua_insert(L, -2);
      lua_setfield(L, -2, "status");
      if (f->seen.n > 0) {
        lua_pushlstring(L, buffer_at(L, 4)->data, buffer_at(L, 4)->len);
        lua_setfield(L, -2, "ids");
      }
    }
    lua_rawset(L, -3);
    lua_pop(L, 1);
  }
  for (i = 0; i < sc->nnames; i++) {
    if (sc->names[i].remembered == 0) continue;
    push_name(L, sc, i);
    lua_pushvalue(L, -1);
    lua_rawget(L, 3);
    lua_pushinteger(L, (lua_Integer)(luaL_checkinteger(L, -1) + sc->names[i].remembered));
    lua_remove(L, -2);
    lua_rawset(L, 3);
    total += (lua_Integer)sc->names[i].remembered;
  }
  lua_pushinteger(L, total);
  return 1;
}

/* scan:live(fn): fn(name, id, workflow_version, version, status, ids,
** offsets) for each counted flow live at the end, in the order they started. */
static int scan_live(lua_State *L) {
  Scan *sc = check_scan(L);
  size_t i, j;
  luaL_checktype(L, 2, LUA_TFUNCTION);
  for (i = 0; i < sc->nflows; i++) {
    const Flow *f = sc->flows[i];
    if (!f->live) continue;
    lua_pushvalue(L, 2);
    push_name(L, sc, f->wf);
    push_id(L, &f->id);
    push_raw(L, &f->wversion);
    lua_pushinteger(L, (lua_Integer)f->applied);
    push_raw(L, &f->status);
    push_ids(L, &f->ids);
    lua_createtable(L, (int)f->offsets.n, 0);
    for (j = 0; j < f->offsets.n; j++) {
      lua_pushinteger(L, (lua_Integer)f->offsets.v[j]);
      lua_rawseti(L, -2, (lua_Integer)j + 1);
    }
    lua_call(L, 7, 0);
  }
  return 0;
}

/* scan:pending() -> ids, envelopes: the commands still pending, in order. */
static int scan_pending(lua_State *L) {
  Scan *sc = check_scan(L);
  size_t i;
  lua_Integer k = 0;
  lua_createtable(L, (int)(sc->queued - sc->dead), 0);
  lua_createtable(L, (int)(sc->queued - sc->dead), 0);
  for (i = 0; i < sc->queued; i++) {
    const Pending *p = &sc->queue[i];
    if (!p->alive) continue;
    k++;
    lua_pushlstring(L, (const char *)p->p, p->idn);
    lua_rawseti(L, -3, k);
    lua_pushlstring(L, (const char *)p->p + p->idn, p->envn - 1);
    lua_rawseti(L, -2, k);
  }
  return 2;
}

static const luaL_Reg scan_methods[] = {
  { "free", scan_gc },
  { "result", scan_result },
  { "seq", scan_seq },
  { "skips", scan_skips },
  { "finished", scan_finished },
  { "live", scan_live },
  { "pending", scan_pending },
  { NULL, NULL }
};

void fold_scan_register(lua_State *L) {
  luaL_newmetatable(L, SCAN_TYPENAME);
  lua_pushcfunction(L, scan_gc);
  lua_setfield(L, -2, "__gc");
  luaL_newlib(L, scan_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}
