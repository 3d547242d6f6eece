/*
 * ipc/ring.h - the shared-memory span ring: the one public header of ipc/.
 *
 * Every process of shop-trace writes its finished spans into one POSIX
 * shared-memory object; one exporter process drains it.  ipc/ is a leaf: it
 * knows nothing of spans (records are opaque bytes) and includes nothing of
 * ours, so a foreign writer or reader can use this header and ring.c alone.
 *
 * Shape: the object is split into `lanes` single-producer/single-consumer
 * byte rings.  A producer thread claims one lane for itself (one CAS at
 * attach time) and from then on writes with plain stores to fields only it
 * owns plus one release store of its tail: no lock, no system call, no
 * allocation, and no cache line shared with another producer.  The single
 * consumer visits every lane.  See docs/ARCHITECTURE.md for why this and not
 * one shared head (ck_ring MPMC) and for the exact memory-ordering argument.
 *
 * Promises (design brief), each proven by tests/ipc/test_ring_*:
 *  1. lock-free multi-producer across processes and threads; full -> drop+count
 *  2. a producer killed mid-write: record skipped, counted torn, nothing else lost
 *  3. the consumer's committed read position lives in shared memory
 *  4. spans ended by a process that then crashes are still drained
 *  5. written = exported + dropped(by reason) + in ring, counters in the header
 *  6. created 0600; magic, layout version and geometry checked on attach
 *  7. geometry comes from the config; bad values refused with key/value/range
 *
 * Return convention: 0 (or a count) on success, -errno on failure.  Functions
 * that can fail for a reason a person must read take `char *err, size_t errlen`
 * and write one line there.
 */
#ifndef SHOP_IPC_RING_H
#define SHOP_IPC_RING_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ codes */

#define RING_MAGIC 0x474e4952504f4853ULL /* "SHOPRING" little-endian */
#define RING_LAYOUT_VERSION 1u
#define RING_CACHELINE 64u

/* Geometry limits (promise 7: anything outside is refused with the range). */
#define RING_LANES_MIN 1u
#define RING_LANES_MAX 1024u
#define RING_LANE_SIZE_MIN (64u * 1024u)           /* bytes, power of two */
#define RING_LANE_SIZE_MAX (256u * 1024u * 1024u)  /* bytes, power of two */
#define RING_RECORD_MIN 256u                        /* max_record lower bound */
#define RING_RECORD_MAX (1024u * 1024u)             /* max_record upper bound */
#define RING_LANE_META_MAX 1024u /* bytes of producer metadata per lane */
/* Added by the ring implementation: every record starts with a 16-byte
 * header (payload length, type, per-lane seq) and occupies a multiple of 16
 * bytes, so the largest payload is max_record - RING_RECORD_HEADER. */
#define RING_RECORD_HEADER 16u
/* Added: most records one consumer keeps peeked and unreleased at a time;
 * ring_consumer_peek returns fewer when that many are outstanding. */
#define RING_CONSUMER_INFLIGHT_MAX 65536u

/*
 * Drop reasons, one X-macro table for names and help strings (libuv
 * UV_ERRNO_MAP style).  Producer-side: FULL, NO_LANE.  Consumer-side:
 * CORRUPT (record failed validation), and the exporter's own reasons.
 */
#define RING_DROP_MAP(X)                                                       \
    X(FULL, "full", "the producer's lane had no room")                        \
    X(NO_LANE, "no_lane", "every lane was held by a live producer")           \
    X(CORRUPT, "corrupt", "record failed validation in the consumer")         \
    X(REJECTED, "rejected", "the receiver refused it (non-retryable or partial success)") \
    X(EXPIRED, "expired", "retries or the export timeout ran out")            \
    X(SHUTDOWN, "shutdown", "given up at exporter shutdown")

typedef enum {
#define RING__DROP_ENUM(name, str, help) RING_DROP_##name,
    RING_DROP_MAP(RING__DROP_ENUM)
#undef RING__DROP_ENUM
    RING_DROP__COUNT
} ring_drop_reason_t;

/* --------------------------------------------------------------- structs */

typedef struct st_ring_t ring_t;                   /* one process's mapping */
typedef struct st_ring_producer_t ring_producer_t; /* one thread's lane */

/* Geometry: total data bytes = lanes * lane_size.  Every field is checked
 * by ring_geometry_check(). */
typedef struct st_ring_geometry_t {
    uint32_t lanes;      /* number of SPSC lanes, RING_LANES_MIN..MAX */
    uint32_t max_record; /* largest record in bytes, incl. header; <= lane_size/4 */
    uint64_t lane_size;  /* bytes of data per lane, power of two */
} ring_geometry_t;

/* A record handed to the consumer.  `data` points into the shared mapping
 * and stays valid until the consumer releases past it. */
typedef struct st_ring_record_t {
    const uint8_t *data; /* payload (record header stripped) */
    uint32_t len;        /* payload bytes */
    uint32_t lane;       /* lane index it came from */
    uint64_t seq;        /* per-lane record sequence, 1-based */
} ring_record_t;

/* A snapshot of the counters (promise 5).  Read with ring_stats(). */
typedef struct st_ring_stats_t {
    ring_geometry_t geometry;
    uint64_t written;   /* records committed by producers */
    uint64_t truncated; /* of those, records cut down to fit (still written) */
    uint64_t torn;      /* writes begun by a producer that died before commit */
    uint64_t exported;  /* records released by the consumer as delivered */
    uint64_t dropped[RING_DROP__COUNT]; /* by reason */
    uint64_t in_ring;   /* committed, not yet released (includes in flight) */
    uint64_t redelivered; /* records a restarted consumer may send a 2nd time */
    uint64_t bytes_used;  /* committed bytes not yet released, all lanes */
    uint32_t producers;   /* lanes held by a live producer */
    int32_t consumer_pid; /* 0 when no consumer is attached */
    /* Added: times the consumer found a lane's bytes or control words
     * invalid and skipped ahead (the records lost are in dropped[CORRUPT]). */
    uint64_t resyncs;
    uint64_t bytes_capacity; /* lanes * lane_size, for a fill percentage */
} ring_stats_t;

/* One lane's owner and counters (ring_lane_stats).  With an owner (pid != 0)
 * the counters are those of the current owner, since it claimed the lane;
 * with none, of the lane's whole life. */
typedef struct st_ring_lane_stats_t {
    int32_t pid;        /* owner process, 0 = free */
    int32_t tid;        /* owner thread, 0 = unknown */
    bool alive;         /* the owner still runs (pid, tid and start time) */
    uint64_t written;   /* records committed since the claim (owner only) */
    uint64_t full;      /* spans dropped because this lane was full */
    uint64_t truncated; /* committed records cut down to fit */
    uint64_t in_ring;   /* committed, not yet released by the consumer */
    uint64_t bytes_used;
} ring_lane_stats_t;

/* ------------------------------------------------------------ prototypes */

/* Names of drop reasons ("full", ...); NULL for an out-of-range value. */
const char *ring_drop_reason_name(ring_drop_reason_t r);

/* Checks a geometry.  Returns 0, or -EINVAL with "key=value: reason (range)"
 * in err, where key is one of ring.lanes, ring.lane_size, ring.max_record. */
int ring_geometry_check(const ring_geometry_t *g, char *err, size_t errlen);

/* Opens the shared-memory object `name` (a POSIX shm name, "/shop-trace").
 * If it does not exist and `create` is true, creates it owner-only (0600)
 * with geometry *g.  If it exists, attaches and refuses (-EPROTO, message in
 * err saying which of magic / layout version / geometry differs) when the
 * header does not match; g may be NULL to accept the stored geometry.
 * Returns 0 and *out, or -errno: -ENOENT (absent, create false), -EPROTO
 * (layout mismatch), -EACCES, -EINVAL (bad geometry), -ENOMEM.
 * Free with ring_close(). */
int ring_open(const char *name, const ring_geometry_t *g, bool create,
              ring_t **out, char *err, size_t errlen);

/* Unmaps and frees the handle; releases the consumer role if held.  The
 * shared object stays. */
void ring_close(ring_t *r);

/* Removes the shared object's name (existing mappings stay valid). */
int ring_unlink(const char *name);

/* The geometry of an open ring. */
const ring_geometry_t *ring_geometry(const ring_t *r);

/* --- producer (one per thread; `_spsc`: the lane has one writer) --- */

/* Claims a free, drained lane for the calling thread and stores `meta`
 * (<= RING_LANE_META_MAX bytes, e.g. the producer's encoded resource) in it
 * for the consumer.  Returns 0 and *out, -EBUSY when no lane is free (the
 * caller counts its spans as RING_DROP_NO_LANE through ring_count_drop),
 * -E2BIG for oversized meta.  Free with ring_producer_release(). */
int ring_producer_acquire(ring_t *r, const void *meta, uint32_t meta_len,
                          ring_producer_t **out);

/* Gives the lane back; records already committed stay for the consumer. */
void ring_producer_release(ring_producer_t *p);

/* Reserves `len` payload bytes (len <= max_record - RING_RECORD_HEADER).
 * Returns a pointer to write the payload into, or NULL when the lane is full
 * (counted as RING_DROP_FULL), len is too large (-> caller must truncate
 * first; not counted), or a reserve is already pending (caller bug).
 * Exactly one ring_commit_spsc() must follow a non-NULL reserve before the
 * next reserve.  Never blocks, never calls the kernel. */
void *ring_try_reserve_spsc(ring_producer_t *p, uint32_t len);

/* Publishes the reserved record (release store of the lane tail).
 * `truncated` counts it in the truncated counter as well. */
void ring_commit_spsc(ring_producer_t *p, bool truncated);

/* Adds n to a producer-side drop counter in the header (atomic; for rare
 * paths such as NO_LANE where the caller has no lane).
 * Changed (was void, and accepted the consumer's reasons too): returns 0, or
 * -EINVAL for CORRUPT/REJECTED/EXPIRED/SHUTDOWN or an unknown reason.  Those
 * describe records that were in the ring, so only ring_consumer_release may
 * count them: it moves the read position and the counter in one crash-safe
 * step, which is what keeps written = exported + dropped + in_ring exact. */
int ring_count_drop(ring_t *r, ring_drop_reason_t reason, uint64_t n);

/* --- consumer (one per ring) --- */

/* Takes the consumer role (refuses -EBUSY if a live process holds it) and
 * starts reading at the committed read positions in the header.  A previous
 * consumer's in-flight records become `redelivered`.  Reclaims lanes of dead
 * producers, counting their unfinished write as torn.  Finishes a commit a
 * killed consumer left half applied (see ring.c, ring__cons_commit).
 * Returns 0, -EBUSY (message names the holder), -ENOMEM.  The consumer's
 * FIFO (RING_CONSUMER_INFLIGHT_MAX entries) is allocated here and freed by
 * ring_close(), which also gives the role back.
 * Added: maps every lane's backlog (committed, unreleased bytes) into this
 * process's page tables at once (MADV_POPULATE_READ, Linux >= 5.14, best
 * effort), so draining it takes no page fault; no memory is added, those
 * pages are the ring's own (docs/ARCHITECTURE.md "Limits"). */
int ring_consumer_open(ring_t *r, char *err, size_t errlen);

/* Hands out up to `max` committed records past the read cursor without
 * releasing them.  Invalid records are skipped and counted CORRUPT.
 * Returns the count (0 when nothing is ready). */
int ring_consumer_peek(ring_t *r, ring_record_t *out, int max);

/* Says that `n` more peeked records are about to be sent (for
 * redelivered): the count is kept in the header and lowered by every
 * release; a consumer that opens after one that died with a non-zero count
 * adds it to `redelivered` (those records are peeked again and may reach
 * the receiver twice). */
void ring_consumer_inflight(ring_t *r, uint64_t n);

/* Releases records in peek order: the first `n` peeked and not yet released
 * records leave the ring; `exported` of them are counted exported and the
 * rest dropped with `reason`.  Advances the committed positions in shared
 * memory (promise 3) together with the counters, crash-safely.
 * Changed (was void): returns the number released (less than n when fewer
 * were peeked), or -EINVAL when exported > n or some are dropped with a
 * producer-side reason (FULL, NO_LANE), or -EPERM without the consumer role. */
int ring_consumer_release(ring_t *r, uint64_t n, uint64_t exported,
                          ring_drop_reason_t reason);

/* Reclaims lanes whose owner died (torn accounting); call now and then
 * (the exporter: once a second).  Liveness: kill(pid, 0), tgkill(pid, tid,
 * 0) and the process start time recorded at claim (guards pid reuse).
 * Returns the number of lanes reclaimed.  Consumer only. */
int ring_consumer_reap(ring_t *r);

/* Producer metadata of a lane (what ring_producer_acquire stored) and its
 * owner pid.  Returns meta length, or -ENOENT. */
int ring_lane_meta(const ring_t *r, uint32_t lane, const void **meta,
                   int32_t *pid);

/* One lane's owner and counters, read without any role (the per-producer
 * view of `shop-ring lanes`).  Returns 0, or -ENOENT for a lane out of range. */
int ring_lane_stats(const ring_t *r, uint32_t lane, ring_lane_stats_t *out);

/* A snapshot of all counters; any process may call it (it takes no role
 * and no lane).  The consumer-side values come from one consistent cut
 * (sequence-checked), each lane's producer values are read after it, so
 * written == exported + sum(dropped CORRUPT..SHUTDOWN) + in_ring holds
 * exactly in every snapshot, and every value is exact at quiescence; while
 * producers run, `written` is a value it had during the call.
 * See docs/ARCHITECTURE.md "The span ring". */
void ring_stats(const ring_t *r, ring_stats_t *out);

#ifdef RING_TEST_HOOKS
/* Test builds only (ipc_hooks_dep): when set, called by
 * ring_try_reserve_spsc after the record header is written and before it
 * returns, i.e. strictly between "begun" and the commit, so a test can stop
 * a producer mid-write and SIGKILL it.  Absent from the normal library. */
extern void (*ring_test_hook_mid_write)(void);
#endif

#ifdef __cplusplus
}
#endif
#endif /* SHOP_IPC_RING_H */
