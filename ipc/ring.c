/*
 * ipc/ring.c - the shared-memory span ring (see ring.h for the API and
 * docs/ARCHITECTURE.md "The span ring" for the design argument).
 *
 * Object layout (all offsets from the start of the mapping):
 *
 *   [ring__hdr_t       ] identity line, consumer-role line, producer-drop
 *                        line, consumer-state lines, journal lines
 *   [uint32_t jlane[L] ] journal: lanes touched by the pending commit
 *   [ring__lane_t   x L] per lane: producer line, owner line, consumer line,
 *                        metadata blob
 *   (page aligned)
 *   [lane 0 data][lane 1 data]...   L * lane_size bytes
 *
 * Position words.  A lane's tail (producer-owned) and head (consumer-owned)
 * are each ONE 64-bit word: the low 39 bits are a free-running byte position
 * (modulo 2^39), the high 25 bits a free-running count of SPAN records
 * (modulo 2^25).  A lane holds at most lane_size/16 <= 2^24 records and
 * lane_size <= 2^28 bytes, so both differences tail - head are exact in
 * modular arithmetic.  Packing the count with the position makes a commit
 * and a release each a single store: there is no moment at which a record
 * is visible but not counted, or counted but not visible, so no crash can
 * open a gap between them.
 *
 * Shared memory access: every load, store, CAS and fence on a shared field
 * goes through ck_pr_*.  Record bytes are written with plain stores by the
 * lane's only writer and published by the release store of the tail word.
 */
#include "ring.h"

#include <ck_md.h>
#include <ck_pr.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#if RING_CACHELINE < CK_MD_CACHELINE
#error "RING_CACHELINE must be at least the platform cache line"
#endif

#define RING__POS_BITS 39u
#define RING__POS_MASK ((UINT64_C(1) << RING__POS_BITS) - 1u)
#define RING__CNT_MASK ((UINT64_C(1) << (64u - RING__POS_BITS)) - 1u)
#define RING__WORD(cnt, pos) ((((uint64_t)(cnt) & RING__CNT_MASK) << RING__POS_BITS) | ((pos) & RING__POS_MASK))
#define RING__WPOS(w) ((w) & RING__POS_MASK)
#define RING__WCNT(w) ((w) >> RING__POS_BITS)

#define RING__REC_SPAN 0x4e415053u /* "SPAN" */
#define RING__REC_PAD 0x44444150u  /* "PADD" */

#define RING__PID_MASK UINT64_C(0xffffffff)
#define RING__PREFETCH_AHEAD 2048u /* bytes ahead of the write position to prefetch (1-8 KiB measure alike) */
#define RING__PREFETCH_LINES 6u    /* lines prefetched per commit: a ~300-byte record plus slack */
/* Consumer: bytes of the lane read ahead of the record being peeked.  The
 * records between head and tail are contiguous, so the next header's
 * address is known only from the current one (a chain of dependent cache
 * misses, 88 % of peek's time when a backlog was written a while ago);
 * prefetching the byte stream this far ahead turns the chain into misses
 * in flight together, and brings the bodies the encoder reads next. */
#define RING__PEEK_AHEAD 2048u

/* MADV_POPULATE_READ is Linux >= 5.14; older headers lack it, older kernels
 * answer EINVAL (ring__populate is best effort either way). */
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

#ifdef RING_TEST_HOOKS
void (*ring_test_hook_mid_write)(void);
#endif

/* ------------------------------------------------------------- layout */

/* The header.  Lines are separated by owner: identity is written once by
 * the creator; the consumer-role line is CASed rarely; the producer-drop
 * line takes atomic adds on rare paths (NO_LANE); the consumer lines are
 * written only by the consumer. */
typedef struct st_ring__hdr_t {
    /* identity: written by the creator before `magic`, never after */
    _Alignas(RING_CACHELINE) uint64_t magic; /* RING_MAGIC, stored last */
    uint32_t version;                        /* RING_LAYOUT_VERSION */
    uint32_t hdr_size;      /* bytes before lane 0 data (page aligned) */
    uint32_t lanes;
    uint32_t max_record;
    uint64_t lane_size;
    uint64_t total_size;    /* hdr_size + lanes * lane_size */
    uint32_t lane_ctl_size; /* sizeof(ring__lane_t), catches a changed struct */
    uint32_t cacheline;     /* RING_CACHELINE of the creator */
    uint64_t created_ns;    /* CLOCK_REALTIME at creation */

    /* consumer role: (generation << 32) | pid, CAS; pid 0 = free */
    _Alignas(RING_CACHELINE) uint64_t consumer;
    uint64_t consumer_start; /* /proc start time of the holder, 0 = unknown */

    /* producer-side drops with no lane to count on (atomic add) */
    _Alignas(RING_CACHELINE) uint64_t pdrop[2]; /* [FULL], [NO_LANE] */

    /* consumer state, applied.  Written only between gen_begin and gen_end
     * bumps (see ring__cons_commit), so a reader can take a consistent cut. */
    _Alignas(RING_CACHELINE) uint64_t gen_begin; /* commit started (journal valid) */
    uint64_t gen_end;                            /* commit applied */
    uint64_t exported;
    uint64_t inflight;    /* peeked records the consumer said it is sending */
    uint64_t redelivered; /* records a restarted consumer may send twice */
    uint64_t resyncs;
    uint64_t dropped[RING_DROP__COUNT]; /* consumer-side reasons only */

    /* the journal: the values the pending commit (gen_begin) will apply */
    _Alignas(RING_CACHELINE) uint64_t j_exported;
    uint64_t j_inflight;
    uint64_t j_redelivered;
    uint64_t j_resyncs;
    uint64_t j_dropped[RING_DROP__COUNT];
    uint32_t j_nlanes; /* entries of jlane[] in use */
} ring__hdr_t;

typedef struct st_ring__lane_t {
    /* producer line: written only by the lane's owner */
    _Alignas(RING_CACHELINE) uint64_t tail; /* position word, release-stored */
    uint64_t begun;     /* records begun (seq of the last one begun) */
    uint64_t full;      /* RING_DROP_FULL on this lane */
    uint64_t truncated; /* committed records cut down to fit */
    /* `full` and `truncated` when the owner claimed the lane (stored by it
     * at claim, in this line's padding: a ring made before these fields
     * existed reads 0 here, i.e. counts since the lane was created) */
    uint64_t full_at_claim;
    uint64_t truncated_at_claim;

    /* owner line: claim CAS and what the claimer recorded at claim time */
    _Alignas(RING_CACHELINE) uint64_t owner; /* (gen << 32) | pid; pid 0 = free */
    uint64_t owner_start;   /* /proc start time of pid, 0 = not yet known */
    uint64_t claim_begun;   /* `begun` when claimed */
    uint64_t claim_tail;    /* `tail` word when claimed */
    uint64_t torn_at_claim; /* `torn` when claimed */
    uint64_t torn;          /* writes begun by dead owners, absolute; written
                             * by the releaser/reaper while the lane is held
                             * by no live writer */
    int32_t owner_tid;      /* thread id, 0 = not yet known */
    uint32_t meta_len;

    /* consumer line: written only by the consumer */
    _Alignas(RING_CACHELINE) uint64_t head; /* position word, release-stored */
    uint64_t j_head;                        /* journal: head to apply */

    uint8_t meta[RING_LANE_META_MAX];
} ring__lane_t;

/* One peeked-but-unreleased entry of the consumer's FIFO. */
typedef struct st_ring__peeked_t {
    uint64_t word;  /* head word after this entry */
    uint32_t lane;
    uint32_t skip;  /* 0: a record handed out; else records lost (+1) to a resync */
} ring__peeked_t;

typedef struct st_ring__cursor_t {
    uint64_t word;     /* where peek continues in this lane */
    uint64_t last_seq; /* seq of the last record peeked, 0 = unknown */
    uint64_t new_head; /* pending head during a release */
    uint64_t bad_tail; /* last nonsense tail word counted as a resync */
    int touched;
} ring__cursor_t;

struct st_ring_t {
    int fd;
    uint8_t *base;
    size_t size;
    ring__hdr_t *hdr;
    uint32_t *jlane;
    ring__lane_t *lane;
    uint8_t *data;
    ring_geometry_t geo; /* validated copy; never re-read from shm */
    uint64_t lane_mask;

    /* consumer side (is_consumer) */
    int is_consumer;
    uint64_t cons_word;
    ring__cursor_t *cur;
    ring__peeked_t *fifo; /* RING_CONSUMER_INFLIGHT_MAX + lanes entries */
    uint32_t fifo_cap, fifo_head, fifo_len;
    uint32_t fifo_records; /* non-skip entries in the FIFO */
    uint32_t rr;           /* next lane peek visits first */
    uint32_t *touched;     /* lanes touched by a commit (lanes entries) */
};

struct st_ring_producer_t {
    ring_t *r;
    ring__lane_t *lane;
    uint8_t *data;
    uint64_t lane_size, mask;
    uint64_t owner;     /* our owner word */
    uint64_t pos;       /* tail position (mod 2^39) */
    uint64_t cnt;       /* tail count (mod 2^25) */
    uint64_t head_pos;  /* cached consumer head position */
    uint64_t begun, full, truncated;
    uint64_t res_end;   /* position after the reserved record */
    uint32_t max_payload;
    int reserved;
};

/* ------------------------------------------------------------ helpers */

__attribute__((format(printf, 3, 4))) static void ring__err(char *err, size_t errlen,
                                                             const char *fmt, ...)
{
    va_list ap;
    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static uint64_t ring__round16(uint64_t v) { return (v + 15u) & ~(uint64_t)15u; }

static int ring__is_pow2(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

static int ring__consumer_reason(ring_drop_reason_t r)
{
    return r == RING_DROP_CORRUPT || r == RING_DROP_REJECTED || r == RING_DROP_EXPIRED ||
           r == RING_DROP_SHUTDOWN;
}

/* Start time of a process in clock ticks since boot (field 22 of
 * /proc/PID/stat), 0 when unreadable.  Guards pid reuse: a lane or role
 * whose pid is alive but started at another time belonged to a dead process. */
static uint64_t ring__proc_start(int32_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* comm may contain spaces and ')' */
    if (p == NULL)
        return 0;
    p++;
    /* after ')' come fields 3.. ; starttime is field 22 */
    for (int field = 2; field < 21 && p != NULL; field++) {
        p = strchr(p + 1, ' ');
    }
    if (p == NULL)
        return 0;
    return strtoull(p + 1, NULL, 10);
}

/* Is the holder alive?  tid 0 / start 0 mean "not recorded yet": then only
 * the pid is checked.  Limit: a thread id reused inside the same live
 * process by a new thread looks alive (document, not guarded). */
static int ring__alive(int32_t pid, int32_t tid, uint64_t start)
{
    if (pid <= 0)
        return 0;
    if (kill(pid, 0) != 0 && errno == ESRCH)
        return 0;
    if (tid > 0 && syscall(SYS_tgkill, pid, tid, 0) != 0 && errno == ESRCH)
        return 0; /* the owning thread exited without releasing */
    if (start != 0) {
        uint64_t now = ring__proc_start(pid);
        if (now != 0 && now != start)
            return 0; /* pid reused by another process */
    }
    return 1;
}

static int32_t ring__gettid(void) { return (int32_t)syscall(SYS_gettid); }

/* ----------------------------------------------------------- geometry */

const char *ring_drop_reason_name(ring_drop_reason_t r)
{
    switch (r) {
#define RING__DROP_NAME(name, str, help)                                                           \
    case RING_DROP_##name:                                                                         \
        return str;
        RING_DROP_MAP(RING__DROP_NAME)
#undef RING__DROP_NAME
    default:
        return NULL;
    }
}

int ring_geometry_check(const ring_geometry_t *g, char *err, size_t errlen)
{
    if (g->lanes < RING_LANES_MIN || g->lanes > RING_LANES_MAX) {
        ring__err(err, errlen, "ring.lanes=%" PRIu32 ": must be between %u and %u", g->lanes,
                  RING_LANES_MIN, RING_LANES_MAX);
        return -EINVAL;
    }
    if (!ring__is_pow2(g->lane_size) || g->lane_size < RING_LANE_SIZE_MIN ||
        g->lane_size > RING_LANE_SIZE_MAX) {
        ring__err(err, errlen,
                  "ring.lane_size=%" PRIu64 ": must be a power of two between %u and %u",
                  g->lane_size, RING_LANE_SIZE_MIN, RING_LANE_SIZE_MAX);
        return -EINVAL;
    }
    uint64_t hi = g->lane_size / 4 < RING_RECORD_MAX ? g->lane_size / 4 : RING_RECORD_MAX;
    if (g->max_record < RING_RECORD_MIN || g->max_record > hi) {
        ring__err(err, errlen,
                  "ring.max_record=%" PRIu32 ": must be between %u and %" PRIu64
                  " (the smaller of %u and ring.lane_size/4)",
                  g->max_record, RING_RECORD_MIN, hi, RING_RECORD_MAX);
        return -EINVAL;
    }
    return 0;
}

static uint64_t ring__hdr_size(uint32_t lanes)
{
    uint64_t s = sizeof(ring__hdr_t);
    s += (uint64_t)lanes * sizeof(uint32_t);
    s = (s + RING_CACHELINE - 1) & ~(uint64_t)(RING_CACHELINE - 1);
    s += (uint64_t)lanes * sizeof(ring__lane_t);
    return (s + 4095u) & ~(uint64_t)4095u;
}

static void ring__bind(ring_t *r)
{
    r->hdr = (ring__hdr_t *)(void *)r->base; /* mmap: page aligned */
    r->jlane = (uint32_t *)(void *)(r->base + sizeof(ring__hdr_t));
    uint64_t off = sizeof(ring__hdr_t) + (uint64_t)r->geo.lanes * sizeof(uint32_t);
    off = (off + RING_CACHELINE - 1) & ~(uint64_t)(RING_CACHELINE - 1);
    r->lane = (ring__lane_t *)(void *)(r->base + off); /* cacheline aligned */
    r->data = r->base + ring__hdr_size(r->geo.lanes);
    r->lane_mask = r->geo.lane_size - 1;
}

/* --------------------------------------------------------- open/close */

/* Validates an existing object's header against this build and against
 * *want (may be NULL).  `h` is a private copy, so nothing here can change
 * under us.  Returns 0 or -EPROTO with the reason. */
static int ring__validate(const char *name, const ring__hdr_t *h, uint64_t st_size,
                          const ring_geometry_t *want, ring_geometry_t *got, char *err,
                          size_t errlen)
{
    char gerr[200];
    if (h->magic != RING_MAGIC) {
        ring__err(err, errlen,
                  "ring %s: bad magic 0x%016" PRIx64 " (want 0x%016llx): not a shop-trace ring or "
                  "still being created; remove /dev/shm%s if no process uses it",
                  name, h->magic, (unsigned long long)RING_MAGIC, name);
        return -EPROTO;
    }
    if (h->version != RING_LAYOUT_VERSION) {
        ring__err(err, errlen,
                  "ring %s: layout version %" PRIu32 ", this build reads %u; stop the processes of "
                  "the other build or remove /dev/shm%s",
                  name, h->version, RING_LAYOUT_VERSION, name);
        return -EPROTO;
    }
    if (h->lane_ctl_size != sizeof(ring__lane_t) || h->cacheline != RING_CACHELINE) {
        ring__err(err, errlen,
                  "ring %s: lane control block %" PRIu32 " bytes / cache line %" PRIu32
                  ", this build uses %zu / %u; stop the processes of the other build or "
                  "remove /dev/shm%s",
                  name, h->lane_ctl_size, h->cacheline, sizeof(ring__lane_t), RING_CACHELINE,
                  name);
        return -EPROTO;
    }
    got->lanes = h->lanes;
    got->lane_size = h->lane_size;
    got->max_record = h->max_record;
    if (ring_geometry_check(got, gerr, sizeof gerr) != 0) {
        ring__err(err, errlen, "ring %s: stored geometry is invalid: %s; remove /dev/shm%s", name,
                  gerr, name);
        return -EPROTO;
    }
    uint64_t hs = ring__hdr_size(got->lanes);
    if (h->hdr_size != hs) {
        ring__err(err, errlen,
                  "ring %s: header size %" PRIu32 ", this build computes %" PRIu64
                  " for %" PRIu32 " lanes; remove /dev/shm%s",
                  name, h->hdr_size, hs, got->lanes, name);
        return -EPROTO;
    }
    uint64_t total = hs + (uint64_t)got->lanes * got->lane_size;
    if (h->total_size != total || st_size != total) {
        ring__err(err, errlen,
                  "ring %s: object is %" PRIu64 " bytes (header says %" PRIu64
                  "), geometry needs %" PRIu64 "; remove /dev/shm%s",
                  name, st_size, h->total_size, total, name);
        return -EPROTO;
    }
    if (want != NULL && (want->lanes != got->lanes || want->lane_size != got->lane_size ||
                         want->max_record != got->max_record)) {
        ring__err(err, errlen,
                  "ring %s: geometry lanes=%" PRIu32 " lane_size=%" PRIu64 " max_record=%" PRIu32
                  ", the config asks lanes=%" PRIu32 " lane_size=%" PRIu64 " max_record=%" PRIu32
                  "; stop the processes using it and remove /dev/shm%s to resize",
                  name, got->lanes, got->lane_size, got->max_record, want->lanes, want->lane_size,
                  want->max_record, name);
        return -EPROTO;
    }
    return 0;
}

static int ring__map(ring_t *r, size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
    if (p == MAP_FAILED)
        return -errno;
    r->base = p;
    r->size = size;
    return 0;
}

static int ring__create(ring_t *r, const char *name, const ring_geometry_t *g, char *err,
                        size_t errlen)
{
    int rc;
    /* fchmod beats the umask: the object is owner-only whatever it is */
    if (fchmod(r->fd, 0600) != 0) {
        rc = -errno;
        ring__err(err, errlen, "fchmod(%s, 0600): %s", name, strerror(errno));
        return rc;
    }
    uint64_t total = ring__hdr_size(g->lanes) + (uint64_t)g->lanes * g->lane_size;
    if (ftruncate(r->fd, (off_t)total) != 0) {
        rc = -errno;
        ring__err(err, errlen, "ftruncate(%s, %" PRIu64 "): %s", name, total, strerror(errno));
        return rc;
    }
    r->geo = *g;
    if ((rc = ring__map(r, total)) != 0) {
        ring__err(err, errlen, "mmap(%s, %" PRIu64 "): %s", name, total, strerror(-rc));
        return rc;
    }
    ring__bind(r);
    ring__hdr_t *h = r->hdr;
    /* the object is zero-filled: all counters and words start at 0 */
    h->version = RING_LAYOUT_VERSION;
    h->hdr_size = (uint32_t)ring__hdr_size(g->lanes);
    h->lanes = g->lanes;
    h->max_record = g->max_record;
    h->lane_size = g->lane_size;
    h->total_size = total;
    h->lane_ctl_size = sizeof(ring__lane_t);
    h->cacheline = RING_CACHELINE;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    h->created_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    /* orders every header field above before the magic: an attacher that
     * sees the magic (after its own load fence) sees a complete header */
    ck_pr_fence_store();
    ck_pr_store_64(&h->magic, RING_MAGIC);
    return 0;
}

static int ring__attach(ring_t *r, const char *name, const ring_geometry_t *want, char *err,
                        size_t errlen)
{
    int rc;
    struct stat st;
    ring__hdr_t copy;
    /* a creator may be between open and the magic store: wait up to ~1 s */
    for (int tries = 0;; tries++) {
        if (fstat(r->fd, &st) != 0) {
            rc = -errno;
            ring__err(err, errlen, "fstat(%s): %s", name, strerror(errno));
            return rc;
        }
        if ((uint64_t)st.st_size >= sizeof(ring__hdr_t)) {
            if (pread(r->fd, &copy, sizeof copy, 0) == (ssize_t)sizeof copy &&
                copy.magic == RING_MAGIC)
                break;
        }
        if (tries >= 100) {
            if ((uint64_t)st.st_size < sizeof(ring__hdr_t)) {
                ring__err(err, errlen,
                          "ring %s: object is %lld bytes, smaller than a ring header (%zu); "
                          "remove /dev/shm%s",
                          name, (long long)st.st_size, sizeof(ring__hdr_t), name);
                return -EPROTO;
            }
            break; /* validate reports the bad magic */
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    ring_geometry_t got;
    if ((rc = ring__validate(name, &copy, (uint64_t)st.st_size, want, &got, err, errlen)) != 0)
        return rc;
    r->geo = got;
    if ((rc = ring__map(r, (size_t)st.st_size)) != 0) {
        ring__err(err, errlen, "mmap(%s): %s", name, strerror(-rc));
        return rc;
    }
    ring__bind(r);
    return 0;
}

int ring_open(const char *name, const ring_geometry_t *g, bool create, ring_t **out, char *err,
              size_t errlen)
{
    int rc;
    *out = NULL;
    if (g != NULL && (rc = ring_geometry_check(g, err, errlen)) != 0)
        return rc;
    if (create && g == NULL) {
        ring__err(err, errlen, "ring %s: creating needs a geometry", name);
        return -EINVAL;
    }
    ring_t *r = calloc(1, sizeof *r);
    if (r == NULL) {
        ring__err(err, errlen, "ring %s: out of memory", name);
        return -ENOMEM;
    }
    r->fd = -1;
    int created = 0;
    if (create) {
        r->fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (r->fd >= 0)
            created = 1;
        else if (errno != EEXIST) {
            rc = -errno;
            ring__err(err, errlen, "shm_open(%s, O_CREAT|O_EXCL): %s", name, strerror(errno));
            goto err;
        }
    }
    if (r->fd < 0) {
        r->fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
        if (r->fd < 0) {
            rc = -errno;
            if (rc == -ENOENT)
                ring__err(err, errlen, "ring %s does not exist (no /dev/shm%s); start a process "
                          "that creates it or run 'shop-ring create'", name, name);
            else
                ring__err(err, errlen, "shm_open(%s): %s", name, strerror(errno));
            goto err;
        }
    }
    rc = created ? ring__create(r, name, g, err, errlen) : ring__attach(r, name, g, err, errlen);
    if (rc != 0) {
        if (created)
            shm_unlink(name); /* do not leave a half-made object behind */
        goto err;
    }
    *out = r;
    return 0;
err:
    if (r->base != NULL)
        munmap(r->base, r->size);
    if (r->fd >= 0)
        close(r->fd);
    free(r);
    return rc;
}

void ring_close(ring_t *r)
{
    if (r == NULL)
        return;
    if (r->is_consumer) {
        /* hand the role back; peeked, unreleased records stay in the ring
         * and the next consumer reads them again (counted redelivered if
         * they were declared in flight) */
        ck_pr_store_64(&r->hdr->consumer_start, 0);
        ck_pr_cas_64(&r->hdr->consumer, r->cons_word, r->cons_word & ~RING__PID_MASK);
    }
    free(r->cur);
    free(r->fifo);
    free(r->touched);
    munmap(r->base, r->size);
    close(r->fd);
    free(r);
}

int ring_unlink(const char *name)
{
    return shm_unlink(name) == 0 ? 0 : -errno;
}

const ring_geometry_t *ring_geometry(const ring_t *r) { return &r->geo; }

/* ----------------------------------------------------------- producer */

int ring_producer_acquire(ring_t *r, const void *meta, uint32_t meta_len, ring_producer_t **out)
{
    *out = NULL;
    if (meta_len > RING_LANE_META_MAX)
        return -E2BIG;
    ring_producer_t *p = calloc(1, sizeof *p);
    if (p == NULL)
        return -ENOMEM;
    int32_t pid = (int32_t)getpid(), tid = ring__gettid();
    uint32_t n = r->geo.lanes;
    /* start at a tid-dependent lane so threads do not all probe lane 0 */
    uint32_t start = (uint32_t)tid % n;
    for (uint32_t k = 0; k < n; k++) {
        uint32_t i = (start + k) % n;
        ring__lane_t *l = &r->lane[i];
        uint64_t w = ck_pr_load_64(&l->owner);
        if ((w & RING__PID_MASK) != 0)
            continue;
        /* drained: only an owner moves tail, so with no owner tail is
         * stable; head only moves toward tail, so drained stays drained */
        if (ck_pr_load_64(&l->head) != ck_pr_load_64(&l->tail))
            continue;
        uint64_t nw = ((w >> 32) + 1) << 32 | (uint32_t)pid;
        if (!ck_pr_cas_64(&l->owner, w, nw))
            continue;
        /* the CAS is a full barrier on every ck target: the lane's
         * producer fields below are ours from here on */
        p->r = r;
        p->lane = l;
        p->data = r->data + (uint64_t)i * r->geo.lane_size;
        p->lane_size = r->geo.lane_size;
        p->mask = r->lane_mask;
        p->owner = nw;
        uint64_t tw = ck_pr_load_64(&l->tail);
        p->pos = RING__WPOS(tw);
        p->cnt = RING__WCNT(tw);
        p->head_pos = RING__WPOS(ck_pr_load_64(&l->head));
        p->begun = ck_pr_load_64(&l->begun);
        p->full = ck_pr_load_64(&l->full);
        p->truncated = ck_pr_load_64(&l->truncated);
        p->max_payload = r->geo.max_record - RING_RECORD_HEADER;
        ck_pr_store_64(&l->full_at_claim, p->full);
        ck_pr_store_64(&l->truncated_at_claim, p->truncated);
        ck_pr_store_64(&l->claim_begun, p->begun);
        ck_pr_store_64(&l->claim_tail, tw);
        ck_pr_store_64(&l->torn_at_claim, ck_pr_load_64(&l->torn));
        if (meta_len > 0)
            memcpy(l->meta, meta, meta_len); /* read by the consumer only after
                                              * it sees a record this owner
                                              * committed (tail release) */
        ck_pr_store_32(&l->meta_len, meta_len);
        ck_pr_store_32((uint32_t *)&l->owner_tid, (uint32_t)tid);
        ck_pr_store_64(&l->owner_start, ring__proc_start(pid));
#ifdef MADV_POPULATE_WRITE
        /* Fault the whole lane in now (Linux >= 5.14), once per thread, so
         * span writes never take a page fault: a fresh lane otherwise faults
         * every 4 KiB, i.e. every dozen spans.  Contents are not changed.
         * Best effort: an older kernel says EINVAL and we fault lazily. */
        (void)madvise(p->data, (size_t)p->lane_size, MADV_POPULATE_WRITE);
#endif
        *out = p;
        return 0;
    }
    free(p);
    return -EBUSY;
}

void ring_producer_release(ring_producer_t *p)
{
    if (p == NULL)
        return;
    ring__lane_t *l = p->lane;
    if (ck_pr_load_64(&l->owner) != p->owner) {
        free(p); /* reaped as dead (thread gone): the lane is not ours */
        return;
    }
    /* a reserve without commit is a torn write of our own making */
    uint64_t committed = (p->cnt - RING__WCNT(ck_pr_load_64(&l->claim_tail))) & RING__CNT_MASK;
    uint64_t torn_now = p->begun - ck_pr_load_64(&l->claim_begun) - committed;
    ck_pr_store_64(&l->torn, ck_pr_load_64(&l->torn_at_claim) + torn_now);
    ck_pr_store_64(&l->owner_start, 0);
    ck_pr_store_32((uint32_t *)&l->owner_tid, 0);
    /* the CAS (a full barrier) orders the stores above before the lane
     * becomes claimable */
    ck_pr_cas_64(&l->owner, p->owner, p->owner & ~RING__PID_MASK);
    free(p);
}

/* Asks, in exclusive state, for the lane lines a few records ahead of the
 * write position, so later records do not wait for them: a lane is written
 * once per lap, so its lines are never in cache (or the consumer holds them
 * shared), and every 4 KiB a TLB miss comes too.  PREFETCHW, not
 * __builtin_prefetch: without -march gcc emits a read prefetch for it, and
 * the store then still pays for the ownership request.  perf/bench_ring,
 * one producer: p99 ~180 ns with a 1 KiB read prefetch, ~80 ns with this.
 * 0F 0D is a NOP on x86-64 CPUs without PREFETCHW. */
static inline void ring__prefetch_ahead_spsc(const ring_producer_t *p)
{
#if defined(__x86_64__)
    uint64_t off = p->pos + RING__PREFETCH_AHEAD;
    for (unsigned i = 0; i < RING__PREFETCH_LINES; i++)
        __asm__ volatile("prefetchw %0"
                         :
                         : "m"(*(const volatile uint8_t *)(p->data + ((off + i * RING_CACHELINE) & p->mask))));
#else
    (void)p;
#endif
}

/* Writes a SPAN record header at `off` and marks the lane reserved up to
 * `end` (a position); returns the payload pointer.  Shared by both paths. */
static inline void *ring__start_record_spsc(ring_producer_t *p, uint64_t off, uint32_t len, uint64_t end)
{
    uint32_t *h = (uint32_t *)(void *)(p->data + off);
    h[0] = len;
    h[1] = RING__REC_SPAN;
    *(uint64_t *)(void *)(h + 2) = p->begun;
    p->res_end = end & RING__POS_MASK;
    p->reserved = 1;
#ifdef RING_TEST_HOOKS
    if (ring_test_hook_mid_write != NULL)
        ring_test_hook_mid_write();
#endif
    return p->data + off + RING_RECORD_HEADER;
}

/* Every case of reserve: the lane looks full (reload the consumer's head),
 * or the record needs a PAD first.  Kept out of line so the common case
 * below stays small enough to inline into span end under LTO. */
__attribute__((noinline, cold)) static void *ring__reserve_slow_spsc(ring_producer_t *p, uint32_t len)
{
    uint64_t need = ring__round16((uint64_t)RING_RECORD_HEADER + len);
    uint64_t off = p->pos & p->mask;
    uint64_t to_end = p->lane_size - off;
    uint64_t adv = need <= to_end ? need : to_end + need;
    uint64_t used = (p->pos - p->head_pos) & RING__POS_MASK;
    if (used + adv > p->lane_size) {
        /* looks full: reload the consumer's head.  The acquire fence orders
         * this load before our stores into the bytes it frees (the consumer
         * finished reading them before its release store of head). */
        p->head_pos = RING__WPOS(ck_pr_load_64(&p->lane->head));
        ck_pr_fence_acquire();
        used = (p->pos - p->head_pos) & RING__POS_MASK;
        if (used + adv > p->lane_size) {
            ck_pr_store_64(&p->lane->full, ++p->full);
            return NULL;
        }
    }
    /* begun before the record bytes: if we die from here to the tail store,
     * begun - committed says one write was torn.  No fence needed for the
     * consumer: the fence before the tail store orders it too. */
    ck_pr_store_64(&p->lane->begun, ++p->begun);
    uint64_t pos = p->pos;
    if (need > to_end) {
        /* a record never wraps: fill the end with a PAD record */
        uint32_t *ph = (uint32_t *)(void *)(p->data + off);
        ph[0] = (uint32_t)(to_end - RING_RECORD_HEADER);
        ph[1] = RING__REC_PAD;
        *(uint64_t *)(void *)(ph + 2) = p->begun;
        pos += to_end;
        off = 0;
    }
    return ring__start_record_spsc(p, off, len, pos + need);
}

void *ring_try_reserve_spsc(ring_producer_t *p, uint32_t len)
{
    if (len > p->max_payload || p->reserved)
        return NULL;
    uint64_t need = ring__round16((uint64_t)RING_RECORD_HEADER + len);
    uint64_t off = p->pos & p->mask;
    /* the common case: fits before the lane's end and before the cached
     * head; same stores, in the same order, as the slow path */
    if (__builtin_expect(need > p->lane_size - off ||
                             ((p->pos - p->head_pos) & RING__POS_MASK) + need > p->lane_size,
                         0))
        return ring__reserve_slow_spsc(p, len);
    ck_pr_store_64(&p->lane->begun, ++p->begun); /* see the slow path on begun */
    return ring__start_record_spsc(p, off, len, p->pos + need);
}

void ring_commit_spsc(ring_producer_t *p, bool truncated)
{
    if (!p->reserved) {
        fprintf(stderr, "ring_commit_spsc: commit without a reserve (caller bug)\n");
        abort();
    }
    p->reserved = 0;
    p->pos = p->res_end;
    p->cnt = (p->cnt + 1) & RING__CNT_MASK;
    /* orders the record header and payload stores (and begun) before the
     * tail store that publishes them; pairs with the consumer's load fence
     * after it loads tail */
    ck_pr_fence_store();
    ck_pr_store_64(&p->lane->tail, RING__WORD(p->cnt, p->pos));
    if (truncated)
        ck_pr_store_64(&p->lane->truncated, ++p->truncated);
    ring__prefetch_ahead_spsc(p);
}

int ring_count_drop(ring_t *r, ring_drop_reason_t reason, uint64_t n)
{
    if (reason == RING_DROP_FULL)
        ck_pr_add_64(&r->hdr->pdrop[0], n);
    else if (reason == RING_DROP_NO_LANE)
        ck_pr_add_64(&r->hdr->pdrop[1], n);
    else
        return -EINVAL;
    return 0;
}

/* ----------------------------------------------------------- consumer */

/* The consumer's crash-safe commit.  Everything the consumer shares (the
 * lanes' head words and the header counters) changes only here, as:
 *   1. write the new values into the journal (j_* fields, jlane[],
 *      lanes' j_head)                         -- ignored unless step 2 ran
 *   2. gen_begin = g                          -- commit point
 *   3. apply: head = j_head, counters = j_*   -- absolute stores, idempotent
 *   4. gen_end = g
 * A consumer killed anywhere is recovered by ring__cons_recover at the next
 * open: if gen_begin != gen_end it re-applies step 3 (same absolute values,
 * so applying twice is harmless).  Killed before step 2: nothing changed.
 * Readers (ring_stats) use gen_end/gen_begin as a sequence lock. */
typedef struct st_ring__cstate_t {
    uint64_t exported, inflight, redelivered, resyncs;
    uint64_t dropped[RING_DROP__COUNT];
} ring__cstate_t;

static void ring__cons_apply(ring_t *r, uint64_t g)
{
    ring__hdr_t *h = r->hdr;
    uint32_t nl = ck_pr_load_32(&h->j_nlanes);
    if (nl > r->geo.lanes)
        nl = r->geo.lanes; /* never trust shm for a bound */
    /* orders the consumer's earlier loads of released record bytes (and
     * the journal stores) before the head stores that let producers
     * overwrite those bytes */
    ck_pr_fence_release();
    for (uint32_t k = 0; k < nl; k++) {
        uint32_t i = ck_pr_load_32(&r->jlane[k]);
        if (i < r->geo.lanes)
            ck_pr_store_64(&r->lane[i].head, ck_pr_load_64(&r->lane[i].j_head));
    }
    ck_pr_store_64(&h->exported, ck_pr_load_64(&h->j_exported));
    ck_pr_store_64(&h->inflight, ck_pr_load_64(&h->j_inflight));
    ck_pr_store_64(&h->redelivered, ck_pr_load_64(&h->j_redelivered));
    ck_pr_store_64(&h->resyncs, ck_pr_load_64(&h->j_resyncs));
    for (int i = 0; i < RING_DROP__COUNT; i++)
        ck_pr_store_64(&h->dropped[i], ck_pr_load_64(&h->j_dropped[i]));
    /* orders the applied values before gen_end (readers' seqlock) */
    ck_pr_fence_store();
    ck_pr_store_64(&h->gen_end, g);
}

static void ring__cons_commit(ring_t *r, const ring__cstate_t *s, uint32_t ntouched)
{
    ring__hdr_t *h = r->hdr;
    uint64_t g = ck_pr_load_64(&h->gen_end) + 1;
    for (uint32_t k = 0; k < ntouched; k++) {
        uint32_t i = r->touched[k];
        ck_pr_store_64(&r->lane[i].j_head, r->cur[i].new_head);
        ck_pr_store_32(&r->jlane[k], i);
        r->cur[i].touched = 0;
    }
    ck_pr_store_32(&h->j_nlanes, ntouched);
    ck_pr_store_64(&h->j_exported, s->exported);
    ck_pr_store_64(&h->j_inflight, s->inflight);
    ck_pr_store_64(&h->j_redelivered, s->redelivered);
    ck_pr_store_64(&h->j_resyncs, s->resyncs);
    for (int i = 0; i < RING_DROP__COUNT; i++)
        ck_pr_store_64(&h->j_dropped[i], s->dropped[i]);
    /* orders the journal before the commit point */
    ck_pr_fence_store();
    ck_pr_store_64(&h->gen_begin, g);
    /* orders the commit point before any applied value (a reader that sees
     * a changed value then sees gen_begin moved and retries) */
    ck_pr_fence_store();
    ring__cons_apply(r, g);
}

static void ring__cons_load(ring_t *r, ring__cstate_t *s)
{
    ring__hdr_t *h = r->hdr;
    s->exported = ck_pr_load_64(&h->exported);
    s->inflight = ck_pr_load_64(&h->inflight);
    s->redelivered = ck_pr_load_64(&h->redelivered);
    s->resyncs = ck_pr_load_64(&h->resyncs);
    for (int i = 0; i < RING_DROP__COUNT; i++)
        s->dropped[i] = ck_pr_load_64(&h->dropped[i]);
}

static void ring__cons_recover(ring_t *r)
{
    ring__hdr_t *h = r->hdr;
    uint64_t b = ck_pr_load_64(&h->gen_begin);
    if (b != ck_pr_load_64(&h->gen_end))
        ring__cons_apply(r, b); /* a consumer died between steps 2 and 4 */
}

/* Maps the lane bytes between positions `from` and `to` (the backlog a
 * consumer is about to drain) into this process's page tables in one
 * system call, so that draining them takes no page fault (a fault per
 * 64 KiB of fault-around, ~10 % of the exporter's CPU when it drains a full
 * ring).  Only pages the producers already wrote are mapped: populating the
 * whole lane would allocate the shared memory object's untouched pages (a
 * read fault on a tmpfs hole allocates), so a lane's first lap still faults
 * once per 64 KiB as the consumer follows the producer; later laps find
 * every page mapped.  It adds no memory: the pages exist already and are
 * part of the ring's size (docs/ARCHITECTURE.md "Limits").  Best effort:
 * kernels before 5.14 refuse MADV_POPULATE_READ with EINVAL, and the pages
 * then fault in as before. */
static void ring__populate(ring_t *r, uint32_t lane, uint64_t from, uint64_t to)
{
    uint64_t size = r->geo.lane_size;
    uint64_t avail = (to - from) & RING__POS_MASK;
    if (avail == 0 || avail > size)
        return; /* empty, or a nonsense tail: peek resynchronises */
    uint64_t off = from & r->lane_mask;
    uint64_t first = size - off < avail ? size - off : avail; /* up to the lane's end */
    uint8_t *lane0 = r->data + (uint64_t)lane * size;
    for (int k = 0; k < 2; k++) {
        uint64_t o = k == 0 ? off : 0, len = k == 0 ? first : avail - first;
        if (len == 0)
            continue;
        uintptr_t a = (uintptr_t)(lane0 + o) & ~(uintptr_t)4095u;
        uintptr_t e = ((uintptr_t)(lane0 + o + len) + 4095u) & ~(uintptr_t)4095u;
        if (madvise((void *)a, e - a, MADV_POPULATE_READ) != 0 && errno == EINVAL)
            return; /* not supported here */
    }
}

int ring_consumer_open(ring_t *r, char *err, size_t errlen)
{
    ring__hdr_t *h = r->hdr;
    if (r->is_consumer)
        return 0;
    int32_t pid = (int32_t)getpid();
    for (;;) {
        uint64_t w = ck_pr_load_64(&h->consumer);
        int32_t holder = (int32_t)(w & RING__PID_MASK);
        if (holder != 0 && holder != pid &&
            ring__alive(holder, 0, ck_pr_load_64(&h->consumer_start))) {
            ring__err(err, errlen, "ring: consumer role held by live pid %d", (int)holder);
            return -EBUSY;
        }
        if (holder == pid) {
            ring__err(err, errlen, "ring: this process already holds the consumer role");
            return -EBUSY;
        }
        /* taking over from a dead holder: clear its start time first, so
         * that between our CAS and our own start-time store nobody compares
         * our pid with the dead one's start time and thinks us dead too
         * (0 = not known: only kill() is consulted) */
        if (holder != 0)
            ck_pr_store_64(&h->consumer_start, 0);
        uint64_t nw = ((w >> 32) + 1) << 32 | (uint32_t)pid;
        if (ck_pr_cas_64(&h->consumer, w, nw)) {
            r->cons_word = nw;
            break;
        }
    }
    ck_pr_store_64(&h->consumer_start, ring__proc_start(pid));
    uint32_t n = r->geo.lanes;
    r->cur = calloc(n, sizeof *r->cur);
    r->touched = calloc(n, sizeof *r->touched);
    r->fifo_cap = RING_CONSUMER_INFLIGHT_MAX + n; /* + one resync entry per lane */
    r->fifo = calloc(r->fifo_cap, sizeof *r->fifo);
    if (r->cur == NULL || r->touched == NULL || r->fifo == NULL) {
        free(r->cur);
        free(r->touched);
        free(r->fifo);
        r->cur = NULL;
        r->touched = NULL;
        r->fifo = NULL;
        ck_pr_cas_64(&h->consumer, r->cons_word, r->cons_word & ~RING__PID_MASK);
        ring__err(err, errlen, "ring: out of memory for the consumer state");
        return -ENOMEM;
    }
    r->fifo_head = r->fifo_len = r->fifo_records = 0;
    r->rr = 0;
    r->is_consumer = 1;
    ring__cons_recover(r);
    for (uint32_t i = 0; i < n; i++) {
        r->cur[i].word = ck_pr_load_64(&r->lane[i].head);
        ring__populate(r, i, RING__WPOS(r->cur[i].word), RING__WPOS(ck_pr_load_64(&r->lane[i].tail)));
    }
    ring__cstate_t s;
    ring__cons_load(r, &s);
    if (s.inflight != 0) {
        /* the previous consumer said these were being sent and never
         * released them: we will peek them again, maybe sending twice */
        s.redelivered += s.inflight;
        s.inflight = 0;
        ring__cons_commit(r, &s, 0);
    }
    ring_consumer_reap(r);
    return 0;
}

void ring_consumer_inflight(ring_t *r, uint64_t n)
{
    if (!r->is_consumer)
        return;
    ring__cstate_t s;
    ring__cons_load(r, &s);
    s.inflight += n;
    if (s.inflight > r->fifo_records)
        s.inflight = r->fifo_records; /* cannot send more than we peeked */
    ring__cons_commit(r, &s, 0);
}

static void ring__touch(ring_t *r, uint32_t lane, uint64_t word, uint32_t *ntouched)
{
    ring__cursor_t *c = &r->cur[lane];
    if (!c->touched) {
        c->touched = 1;
        r->touched[(*ntouched)++] = lane;
    }
    c->new_head = word;
}

/* Releases n records plus every resync entry before and right after them. */
static int ring__release(ring_t *r, uint64_t n, uint64_t exported, ring_drop_reason_t reason)
{
    ring__cstate_t s;
    uint32_t ntouched = 0;
    uint64_t done = 0, lost = 0;
    while (r->fifo_len > 0) {
        ring__peeked_t *e = &r->fifo[r->fifo_head];
        if (e->skip == 0 && done == n)
            break;
        ring__touch(r, e->lane, e->word, &ntouched);
        if (e->skip != 0)
            lost += e->skip - 1;
        else
            done++, r->fifo_records--;
        r->fifo_head = (r->fifo_head + 1) % r->fifo_cap;
        r->fifo_len--;
    }
    if (ntouched == 0)
        return 0;
    if (exported > done)
        exported = done;
    ring__cons_load(r, &s);
    s.exported += exported;
    s.dropped[reason] += done - exported;
    s.dropped[RING_DROP_CORRUPT] += lost;
    s.inflight = s.inflight > done ? s.inflight - done : 0;
    ring__cons_commit(r, &s, ntouched);
    return (int)done;
}

int ring_consumer_release(ring_t *r, uint64_t n, uint64_t exported, ring_drop_reason_t reason)
{
    if (!r->is_consumer)
        return -EPERM;
    if (exported > n || (unsigned)reason >= RING_DROP__COUNT ||
        (exported < n && !ring__consumer_reason(reason)))
        return -EINVAL;
    if (!ring__consumer_reason(reason))
        reason = RING_DROP_SHUTDOWN; /* unused: exported == n */
    return ring__release(r, n, exported, reason);
}

/* Queues a resync of lane i to tail word tw: the records between the
 * cursor and the tail are lost and will be counted CORRUPT on release. */
static void ring__resync(ring_t *r, uint32_t i, uint64_t tw)
{
    ring__cursor_t *c = &r->cur[i];
    if (r->fifo_len >= r->fifo_cap)
        return; /* no room to remember it: retried at the next peek */
    uint64_t lost = (RING__WCNT(tw) - RING__WCNT(c->word)) & RING__CNT_MASK;
    ring__peeked_t *e = &r->fifo[(r->fifo_head + r->fifo_len) % r->fifo_cap];
    e->lane = i;
    e->word = tw;
    e->skip = (uint32_t)lost + 1;
    r->fifo_len++;
    c->word = tw;
    c->last_seq = 0;
    ring__cstate_t s;
    ring__cons_load(r, &s);
    s.resyncs++;
    ring__cons_commit(r, &s, 0);
}

/* Peeks records of lane i into out[0..max).  Returns the count. */
static int ring__peek_lane(ring_t *r, uint32_t i, ring_record_t *out, int max)
{
    ring__cursor_t *c = &r->cur[i];
    ring__lane_t *l = &r->lane[i];
    const uint8_t *data = r->data + (uint64_t)i * r->geo.lane_size;
    uint64_t lane_size = r->geo.lane_size;
    uint64_t tw = ck_pr_load_64(&l->tail);
    /* orders the tail load before the loads of the record bytes it
     * publishes; pairs with the producer's store fence before its tail
     * store */
    ck_pr_fence_load();
    uint64_t avail = (RING__WPOS(tw) - RING__WPOS(c->word)) & RING__POS_MASK;
    uint64_t nrec = (RING__WCNT(tw) - RING__WCNT(c->word)) & RING__CNT_MASK;
    if (avail == 0)
        return 0;
    if (avail > lane_size || nrec > lane_size / 16u || (avail & 15u) != 0 ||
        (c->word & 15u) != 0) {
        /* the head or tail word is nonsense (shm corrupted): nothing in
         * this lane can be located or counted.  Jump the read position to
         * the tail word (the records in between cannot be counted, so they
         * leave `written` too); if the tail was the garbage one, the
         * producer's next commit stores a real tail and the next visit
         * resynchronises onto it.  Counted in resyncs. */
        if (c->bad_tail != tw && r->fifo_len < r->fifo_cap) {
            c->bad_tail = tw;
            ring__peeked_t *e = &r->fifo[(r->fifo_head + r->fifo_len) % r->fifo_cap];
            e->lane = i;
            e->word = tw;
            e->skip = 1; /* no countable records */
            r->fifo_len++;
            c->word = tw;
            c->last_seq = 0;
            ring__cstate_t s;
            ring__cons_load(r, &s);
            s.resyncs++;
            ring__cons_commit(r, &s, 0);
        }
        return 0;
    }
    uint64_t begun = ck_pr_load_64(&l->begun);
    uint32_t maxp = r->geo.max_record - RING_RECORD_HEADER;
    int got = 0;
    uint64_t pos = RING__WPOS(c->word), cnt = RING__WCNT(c->word);
    /* Read-ahead (RING__PEEK_AHEAD): pf is the first byte, counted from pos,
     * not yet prefetched; never past the tail.  Read prefetches: the
     * consumer only reads. */
    const uint64_t start = pos, total = avail;
    uint64_t pf = 0;
    while (avail > 0 && got < max) {
        uint64_t ahead = total - avail + RING__PEEK_AHEAD;
        if (ahead > total)
            ahead = total;
        for (; pf < ahead; pf += RING_CACHELINE)
            __builtin_prefetch(data + ((start + pf) & r->lane_mask), 0, 3);
        if (r->fifo_records >= RING_CONSUMER_INFLIGHT_MAX || r->fifo_len + 1 >= r->fifo_cap)
            break;
        uint64_t off = pos & r->lane_mask;
        /* copy the header once, then validate the copy (no double fetch) */
        uint32_t len, type;
        uint64_t seq;
        memcpy(&len, data + off, 4);
        memcpy(&type, data + off + 4, 4);
        memcpy(&seq, data + off + 8, 8);
        if (type == RING__REC_PAD) {
            uint64_t to_end = lane_size - off;
            if ((uint64_t)len + RING_RECORD_HEADER != to_end || to_end > avail ||
                seq > begun || seq <= c->last_seq) {
                ring__resync(r, i, tw);
                return got;
            }
            pos = (pos + to_end) & RING__POS_MASK;
            avail -= to_end;
            continue;
        }
        uint64_t need = ring__round16((uint64_t)RING_RECORD_HEADER + len);
        if (type != RING__REC_SPAN || len > maxp || need > avail || off + need > lane_size ||
            seq > begun || seq <= c->last_seq || nrec == 0) {
            ring__resync(r, i, tw);
            return got;
        }
        pos = (pos + need) & RING__POS_MASK;
        cnt = (cnt + 1) & RING__CNT_MASK;
        avail -= need;
        nrec--;
        c->last_seq = seq;
        c->word = RING__WORD(cnt, pos);
        out[got].data = data + off + RING_RECORD_HEADER;
        out[got].len = len;
        out[got].lane = i;
        out[got].seq = seq;
        got++;
        ring__peeked_t *e = &r->fifo[(r->fifo_head + r->fifo_len) % r->fifo_cap];
        e->lane = i;
        e->word = c->word;
        e->skip = 0;
        r->fifo_len++;
        r->fifo_records++;
    }
    if (avail == 0 && nrec != 0) {
        /* bytes all consumed but the count says more records: corrupt */
        ring__resync(r, i, tw);
        return got;
    }
    c->word = RING__WORD(cnt, pos); /* also steps over a trailing PAD */
    return got;
}

int ring_consumer_peek(ring_t *r, ring_record_t *out, int max)
{
    if (!r->is_consumer || max <= 0)
        return 0;
    uint32_t n = r->geo.lanes;
    int got = 0;
    /* round robin with a per-visit quota so one busy lane cannot starve
     * the others */
    int quota = max / (int)n;
    if (quota < 16)
        quota = 16;
    for (uint32_t k = 0; k < n && got < max; k++) {
        uint32_t i = (r->rr + k) % n;
        int want = max - got < quota ? max - got : quota;
        got += ring__peek_lane(r, i, out + got, want);
    }
    r->rr = (r->rr + 1) % n;
    /* resync entries at the front of the FIFO release themselves now */
    if (r->fifo_len > 0 && r->fifo[r->fifo_head].skip != 0)
        ring__release(r, 0, 0, RING_DROP_CORRUPT);
    return got;
}

int ring_consumer_reap(ring_t *r)
{
    int reaped = 0;
    for (uint32_t i = 0; i < r->geo.lanes; i++) {
        ring__lane_t *l = &r->lane[i];
        uint64_t w = ck_pr_load_64(&l->owner);
        int32_t pid = (int32_t)(w & RING__PID_MASK);
        if (pid == 0)
            continue;
        if (ring__alive(pid, (int32_t)ck_pr_load_32((uint32_t *)&l->owner_tid),
                        ck_pr_load_64(&l->owner_start)))
            continue;
        /* a dead owner: its fields are stable.  torn = writes it began and
         * never published; absolute store, so a reaper killed and rerun
         * computes and stores the same value */
        uint64_t committed =
            (RING__WCNT(ck_pr_load_64(&l->tail)) - RING__WCNT(ck_pr_load_64(&l->claim_tail))) &
            RING__CNT_MASK;
        uint64_t x = ck_pr_load_64(&l->begun) - ck_pr_load_64(&l->claim_begun) - committed;
        if (x > 1)
            x = 1; /* at most one write in progress per owner; more means shm garbage */
        ck_pr_store_64(&l->torn, ck_pr_load_64(&l->torn_at_claim) + x);
        ck_pr_store_64(&l->owner_start, 0);
        ck_pr_store_32((uint32_t *)&l->owner_tid, 0);
        /* the CAS is a full barrier: stores above land before the lane is
         * claimable again.  Its records stay and are drained (promise 4);
         * the lane is claimed again once drained. */
        if (ck_pr_cas_64(&l->owner, w, w & ~RING__PID_MASK))
            reaped++;
    }
    return reaped;
}

int ring_lane_meta(const ring_t *r, uint32_t lane, const void **meta, int32_t *pid)
{
    if (lane >= r->geo.lanes)
        return -ENOENT;
    ring__lane_t *l = &r->lane[lane];
    uint32_t len = ck_pr_load_32(&l->meta_len);
    if (len > RING_LANE_META_MAX)
        return -ENOENT; /* corrupted */
    if (pid != NULL)
        *pid = (int32_t)(ck_pr_load_64(&l->owner) & RING__PID_MASK);
    if (meta != NULL)
        *meta = l->meta;
    return (int)len;
}

/* -------------------------------------------------------------- stats */

int ring_lane_stats(const ring_t *r, uint32_t lane, ring_lane_stats_t *out)
{
    if (lane >= r->geo.lanes)
        return -ENOENT;
    ring__lane_t *l = &r->lane[lane];
    memset(out, 0, sizeof *out);
    uint64_t w = ck_pr_load_64(&l->owner);
    out->pid = (int32_t)(w & RING__PID_MASK);
    if (out->pid != 0) {
        out->tid = (int32_t)ck_pr_load_32((uint32_t *)&l->owner_tid);
        out->alive = ring__alive(out->pid, out->tid, ck_pr_load_64(&l->owner_start));
    }
    uint64_t hw = ck_pr_load_64(&l->head);
    uint64_t tw = ck_pr_load_64(&l->tail); /* after head: tail >= head */
    uint64_t b = (RING__WPOS(tw) - RING__WPOS(hw)) & RING__POS_MASK;
    uint64_t c = (RING__WCNT(tw) - RING__WCNT(hw)) & RING__CNT_MASK;
    if (b <= r->geo.lane_size && c <= r->geo.lane_size / 16u) {
        out->in_ring = c;
        out->bytes_used = b;
    }
    out->full = ck_pr_load_64(&l->full);
    out->truncated = ck_pr_load_64(&l->truncated);
    if (out->pid != 0) {
        /* records committed since the claim: begun - claim_begun counts in
         * 64 bits but includes a write in progress (at most one); the tail's
         * count is exact but 25 bits wide.  Their difference mod 2^25 is the
         * write in progress (a few more if records committed between the
         * loads: then the tail's count is the better figure). */
        uint64_t committed = (RING__WCNT(tw) - RING__WCNT(ck_pr_load_64(&l->claim_tail))) & RING__CNT_MASK;
        uint64_t d = ck_pr_load_64(&l->begun) - ck_pr_load_64(&l->claim_begun);
        uint64_t x = (d - committed) & RING__CNT_MASK;
        out->written = x <= d && x <= 1 ? d - x : committed;
        out->full -= ck_pr_load_64(&l->full_at_claim) <= out->full ? ck_pr_load_64(&l->full_at_claim) : 0;
        out->truncated -= ck_pr_load_64(&l->truncated_at_claim) <= out->truncated
                              ? ck_pr_load_64(&l->truncated_at_claim)
                              : 0;
    }
    return 0;
}

void ring_stats(const ring_t *r, ring_stats_t *out)
{
    ring__hdr_t *h = r->hdr;
    uint32_t n = r->geo.lanes;
    memset(out, 0, sizeof *out);
    out->geometry = r->geo;
    out->bytes_capacity = (uint64_t)n * r->geo.lane_size;
    ring__cstate_t s;
    uint64_t in_ring, bytes;
    /* consumer side: a sequence-locked cut of counters and head words,
     * then every tail word read after it (so tail >= head per lane) */
    for (int tries = 0;; tries++) {
        uint64_t e1 = ck_pr_load_64(&h->gen_end);
        /* orders the gen_end load before the value loads */
        ck_pr_fence_load();
        ring__cons_load((ring_t *)r, &s);
        in_ring = bytes = 0;
        for (uint32_t i = 0; i < n; i++) {
            uint64_t hw = ck_pr_load_64(&r->lane[i].head);
            /* the head loads stay inside the seqlock; the tail load
             * after them may only see a later (larger) tail */
            uint64_t tw = ck_pr_load_64(&r->lane[i].tail);
            uint64_t b = (RING__WPOS(tw) - RING__WPOS(hw)) & RING__POS_MASK;
            uint64_t c = (RING__WCNT(tw) - RING__WCNT(hw)) & RING__CNT_MASK;
            if (b > r->geo.lane_size || c > r->geo.lane_size / 16u) {
                continue; /* corrupted lane words: report nothing in it */
            }
            bytes += b;
            in_ring += c;
        }
        /* orders the value loads before the gen_begin load */
        ck_pr_fence_load();
        if (ck_pr_load_64(&h->gen_begin) == e1 || tries >= 1000)
            break; /* consistent (or give up after 1000 tries: best effort) */
    }
    out->exported = s.exported;
    out->redelivered = s.redelivered;
    out->resyncs = s.resyncs;
    for (int i = 0; i < RING_DROP__COUNT; i++)
        if (ring__consumer_reason((ring_drop_reason_t)i))
            out->dropped[i] = s.dropped[i];
    out->in_ring = in_ring;
    out->bytes_used = bytes;
    out->written = s.exported + in_ring;
    for (int i = 0; i < RING_DROP__COUNT; i++)
        if (ring__consumer_reason((ring_drop_reason_t)i))
            out->written += s.dropped[i];
    out->dropped[RING_DROP_FULL] = ck_pr_load_64(&h->pdrop[0]);
    out->dropped[RING_DROP_NO_LANE] = ck_pr_load_64(&h->pdrop[1]);
    for (uint32_t i = 0; i < n; i++) {
        ring__lane_t *l = &r->lane[i];
        out->dropped[RING_DROP_FULL] += ck_pr_load_64(&l->full);
        out->truncated += ck_pr_load_64(&l->truncated);
        uint64_t w = ck_pr_load_64(&l->owner);
        int32_t pid = (int32_t)(w & RING__PID_MASK);
        if (pid == 0) {
            out->torn += ck_pr_load_64(&l->torn);
        } else if (ring__alive(pid, (int32_t)ck_pr_load_32((uint32_t *)&l->owner_tid),
                               ck_pr_load_64(&l->owner_start))) {
            out->producers++;
            out->torn += ck_pr_load_64(&l->torn_at_claim);
        } else {
            /* dead, not reaped yet: what the reaper will store */
            uint64_t committed = (RING__WCNT(ck_pr_load_64(&l->tail)) -
                                  RING__WCNT(ck_pr_load_64(&l->claim_tail))) &
                                 RING__CNT_MASK;
            uint64_t x = ck_pr_load_64(&l->begun) - ck_pr_load_64(&l->claim_begun) - committed;
            out->torn += ck_pr_load_64(&l->torn_at_claim) + (x > 1 ? 1 : x);
        }
    }
    uint64_t cw = ck_pr_load_64(&h->consumer);
    int32_t cpid = (int32_t)(cw & RING__PID_MASK);
    if (cpid != 0 && ring__alive(cpid, 0, ck_pr_load_64(&h->consumer_start)))
        out->consumer_pid = cpid;
}
