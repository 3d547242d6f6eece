/*
 * tests/ipc/test_ring_unit.c - single-process checks of the span ring:
 * geometry messages (promise 7), owner-only creation and the layout check
 * on attach (promise 6), a byte-exact round trip through wrap and PAD, the
 * full lane (promise 1's drop+count), deterministic and random corruption
 * of records and control words (never a crash; counted), the per-lane
 * counters of the current owner (ring_lane_stats), and shop-ring.
 *
 * Run: meson test -C BUILD --suite unit test_ring_unit   (TAP)
 */
#include "ring.h"
#include "ring_test_util.h"
#include "tap.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

static char err[512];

static void test_geometry(void)
{
    ring_geometry_t g = {.lanes = 4, .max_record = 1024, .lane_size = 1000};
    tap_check(ring_geometry_check(&g, err, sizeof err) == -EINVAL &&
                  strcmp(err, "ring.lane_size=1000: must be a power of two between 65536 and "
                              "268435456") == 0,
              "geometry: lane_size=1000 refused with key, value and range: %s", err);
    g.lane_size = 1u << 29;
    tap_check(ring_geometry_check(&g, err, sizeof err) == -EINVAL &&
                  strstr(err, "ring.lane_size=536870912") != NULL,
              "geometry: lane_size above the range refused: %s", err);
    g.lane_size = 65536;
    g.lanes = 0;
    tap_check(ring_geometry_check(&g, err, sizeof err) == -EINVAL &&
                  strcmp(err, "ring.lanes=0: must be between 1 and 1024") == 0,
              "geometry: lanes=0 refused: %s", err);
    g.lanes = 4;
    g.max_record = 100;
    tap_check(ring_geometry_check(&g, err, sizeof err) == -EINVAL &&
                  strstr(err, "ring.max_record=100: must be between 256 and 16384") != NULL,
              "geometry: max_record=100 refused: %s", err);
    g.max_record = 20000;
    tap_check(ring_geometry_check(&g, err, sizeof err) == -EINVAL &&
                  strstr(err, "ring.max_record=20000") != NULL,
              "geometry: max_record > lane_size/4 refused: %s", err);
    g.max_record = 16384;
    tap_check(ring_geometry_check(&g, err, sizeof err) == 0, "geometry: a valid one is accepted");
    ring_t *r;
    g.lane_size = 3u << 16;
    char name[96];
    rt_name(name, sizeof name, "geo");
    tap_check(ring_open(name, &g, true, &r, err, sizeof err) == -EINVAL &&
                  strstr(err, "ring.lane_size=196608") != NULL,
              "ring_open refuses a bad geometry before creating anything: %s", err);
    tap_check(ring_open(name, NULL, false, &r, err, sizeof err) == -ENOENT,
              "ring_open of a missing ring without create: -ENOENT (%s)", err);
}

static void test_round_trip(void)
{
    char name[96];
    rt_name(name, sizeof name, "rt");
    ring_unlink(name);
    ring_geometry_t g = {.lanes = 1, .max_record = 4096, .lane_size = 65536};
    ring_t *r;
    mode_t old = umask(0); /* creation must be 0600 whatever the umask */
    int rc = ring_open(name, &g, true, &r, err, sizeof err);
    umask(old);
    if (!tap_check(rc == 0, "create ring %s: %s", name, rc ? err : "ok"))
        return;
    char path[128];
    snprintf(path, sizeof path, "/dev/shm%s", name);
    struct stat st;
    int src = stat(path, &st);
    tap_check(src == 0 && (st.st_mode & 0777) == 0600,
              "ring object is owner-only 0600 under umask 0 (mode %o)",
              (unsigned)(st.st_mode & 0777));

    const char meta[] = "service.name=unit";
    ring_producer_t *p;
    tap_check(ring_producer_acquire(r, meta, sizeof meta, &p) == 0, "acquire a lane");
    ring_producer_t *p2;
    tap_check(ring_producer_acquire(r, NULL, 0, &p2) == -EBUSY,
              "second acquire on a 1-lane ring: -EBUSY");
    tap_check(ring_count_drop(r, RING_DROP_NO_LANE, 3) == 0 &&
                  ring_count_drop(r, RING_DROP_CORRUPT, 1) == -EINVAL,
              "ring_count_drop takes NO_LANE, refuses consumer-side reasons");
    tap_check(ring_consumer_open(r, err, sizeof err) == 0, "consumer role taken");
    ring_t *r2;
    ring_open(name, NULL, false, &r2, err, sizeof err);
    tap_check(ring_consumer_open(r2, err, sizeof err) == -EBUSY,
              "a second consumer is refused: %s", err);
    ring_close(r2);
    const void *m;
    int32_t pid;
    int ml = ring_lane_meta(r, 0, &m, &pid);
    tap_check(ml == (int)sizeof meta && memcmp(m, meta, sizeof meta) == 0 && pid == getpid(),
              "lane metadata and owner pid are visible to the consumer");
    tap_check(ring_try_reserve_spsc(p, 4096 - RING_RECORD_HEADER + 1) == NULL,
              "a record over max_record is refused");

    /* Write/peek/release with odd sizes through many wraps; the consumer
     * keeps up to 40 records peeked before releasing them. */
    uint64_t seq_w = 0, seq_r = 0, bad = 0, pads = 0, off = 0, lastseq = 0;
    ring_record_t recs[64];
    int held = 0;
    while (seq_w < 3000) {
        uint64_t s = seq_w + 1;
        uint32_t len = rt_len(1, 0, s, 4000);
        uint8_t *dst = ring_try_reserve_spsc(p, len);
        if (dst != NULL) {
            uint64_t need = (RING_RECORD_HEADER + len + 15u) & ~15u;
            if (65536 - off < need) {
                pads++;
                off = 0;
            }
            off = (off + need) % 65536;
            rt_fill(dst, len, 1, 0, s);
            ring_commit_spsc(p, false);
            seq_w++;
        }
        if (dst == NULL || seq_w % 7 == 0) {
            int n = ring_consumer_peek(r, recs + held, 64 - held);
            for (int i = held; i < held + n; i++) {
                uint32_t a, b;
                uint64_t q;
                if (rt_verify(recs[i].data, recs[i].len, &a, &b, &q) != 0 || a != 1 ||
                    q != ++seq_r || recs[i].seq <= lastseq)
                    bad++;
                lastseq = recs[i].seq;
            }
            held += n;
            if (held >= 40 || dst == NULL) {
                ring_consumer_inflight(r, (uint64_t)held);
                ring_consumer_release(r, (uint64_t)held, (uint64_t)held, RING_DROP_SHUTDOWN);
                held = 0;
            }
        }
    }
    ring_consumer_release(r, (uint64_t)held, (uint64_t)held, RING_DROP_SHUTDOWN);
    int n;
    while ((n = ring_consumer_peek(r, recs, 64)) > 0) {
        for (int i = 0; i < n; i++) {
            uint32_t a, b;
            uint64_t q;
            if (rt_verify(recs[i].data, recs[i].len, &a, &b, &q) != 0 || q != ++seq_r)
                bad++;
        }
        ring_consumer_release(r, (uint64_t)n, (uint64_t)n, RING_DROP_SHUTDOWN);
    }
    tap_check(bad == 0 && seq_r == 3000, "3000 records round-trip byte for byte in order "
                                         "(%" PRIu64 " read, %" PRIu64 " bad)", seq_r, bad);
    tap_check(pads > 10, "the run wrapped the lane through PAD records (%" PRIu64 " pads)", pads);
    ring_stats_t s;
    ring_stats(r, &s);
    tap_check(s.written == 3000 && s.exported == 3000 && s.in_ring == 0 && s.bytes_used == 0 &&
                  rt_balanced(&s) && s.dropped[RING_DROP_NO_LANE] == 3 && s.producers == 1 &&
                  s.consumer_pid == getpid() && s.redelivered == 0,
              "stats after round trip: written %" PRIu64 " exported %" PRIu64 " in_ring %" PRIu64
              " producers %u",
              s.written, s.exported, s.in_ring, s.producers);

    /* full lane: no consumer progress -> NULL, counted FULL, never blocks */
    uint64_t committed = 0, nulls = 0, full0 = s.dropped[RING_DROP_FULL];
    for (int i = 0; i < 2000; i++) {
        uint8_t *dst = ring_try_reserve_spsc(p, 200);
        if (dst == NULL) {
            nulls++;
            continue;
        }
        rt_fill(dst, 200, 1, 0, 0);
        ring_commit_spsc(p, i % 2 == 0);
        committed++;
    }
    ring_stats(r, &s);
    tap_check(committed == 65536 / 224 && nulls == 2000 - committed &&
                  s.dropped[RING_DROP_FULL] - full0 == nulls && s.in_ring == committed &&
                  s.written == 3000 + committed && s.bytes_used >= committed * 224 &&
                  s.bytes_used <= 65536 &&
                  rt_balanced(&s),
              "full lane: %" PRIu64 " fit, %" PRIu64 " NULL counted FULL=%" PRIu64
              ", in_ring %" PRIu64,
              committed, nulls, s.dropped[RING_DROP_FULL] - full0, s.in_ring);
    tap_check(s.truncated == (committed + 1) / 2, "truncated counted (%" PRIu64 ")",
              s.truncated);
    /* drain with a mix of exported and rejected */
    uint64_t got = 0;
    while ((n = ring_consumer_peek(r, recs, 64)) > 0) {
        got += (uint64_t)n;
        ring_consumer_release(r, (uint64_t)n, (uint64_t)n / 2, RING_DROP_REJECTED);
    }
    ring_stats(r, &s);
    tap_check(got == committed && s.in_ring == 0 && rt_balanced(&s) &&
                  s.dropped[RING_DROP_REJECTED] > 0,
              "drained with rejects: balanced, rejected %" PRIu64,
              s.dropped[RING_DROP_REJECTED]);
    tap_check(ring_consumer_release(r, 2, 1, RING_DROP_FULL) == -EINVAL &&
                  ring_consumer_release(r, 1, 2, RING_DROP_REJECTED) == -EINVAL,
              "release refuses a producer-side reason and exported > n");
    tap_check(ring_try_reserve_spsc(p, 200) != NULL, "room again after the drain");
    ring_commit_spsc(p, false);

    ring_producer_release(p);
    tap_check(ring_producer_acquire(r, NULL, 0, &p2) == -EBUSY,
              "a released lane that still holds a record is not claimable");
    n = ring_consumer_peek(r, recs, 64);
    ring_consumer_release(r, (uint64_t)n, (uint64_t)n, RING_DROP_SHUTDOWN);
    tap_check(ring_producer_acquire(r, NULL, 0, &p2) == 0, "once drained it is claimable");
    ring_producer_release(p2);
    ring_close(r);
    ring_unlink(name);
}

/* Header field offsets the test patches (identity line of ring.c). */
#define OFF_MAGIC 0
#define OFF_VERSION 8
#define OFF_LANES 16
#define OFF_LANE_SIZE 24

static void patch(const char *name, size_t off, const void *v, size_t len, void *save)
{
    int fd = shm_open(name, O_RDWR, 0);
    uint8_t *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (save)
        memcpy(save, p + off, len);
    memcpy(p + off, v, len);
    munmap(p, 4096);
    close(fd);
}

static void test_layout(void)
{
    char name[96];
    rt_name(name, sizeof name, "layout");
    ring_unlink(name);
    ring_geometry_t g = {.lanes = 2, .max_record = 1024, .lane_size = 65536};
    ring_t *r;
    if (!tap_check(ring_open(name, &g, true, &r, err, sizeof err) == 0, "create %s", name))
        return;
    ring_close(r);
    uint32_t v2 = 2, save32;
    uint64_t save64, bad64 = 0x1122334455667788ull;
    patch(name, OFF_VERSION, &v2, 4, &save32);
    int rc = ring_open(name, NULL, false, &r, err, sizeof err);
    char want[512];
    snprintf(want, sizeof want,
             "ring %s: layout version 2, this build reads 1; stop the processes of the other "
             "build or remove /dev/shm%s",
             name, name);
    tap_check(rc == -EPROTO && strcmp(err, want) == 0, "layout version 2 refused: %s", err);
    patch(name, OFF_VERSION, &save32, 4, NULL);
    patch(name, OFF_MAGIC, &bad64, 8, &save64);
    rc = ring_open(name, NULL, false, &r, err, sizeof err);
    tap_check(rc == -EPROTO && strstr(err, "bad magic 0x1122334455667788") != NULL,
              "bad magic refused: %s", err);
    patch(name, OFF_MAGIC, &save64, 8, NULL);
    uint32_t lanes3 = 3;
    patch(name, OFF_LANES, &lanes3, 4, &save32);
    rc = ring_open(name, NULL, false, &r, err, sizeof err);
    tap_check(rc == -EPROTO && (strstr(err, "object is") || strstr(err, "header size")),
              "patched lane count (object size no longer matches) refused: %s", err);
    patch(name, OFF_LANES, &save32, 4, NULL);
    uint64_t ls = 1000;
    patch(name, OFF_LANE_SIZE, &ls, 8, &save64);
    rc = ring_open(name, NULL, false, &r, err, sizeof err);
    tap_check(rc == -EPROTO && strstr(err, "ring.lane_size=1000") != NULL,
              "nonsense stored geometry refused: %s", err);
    patch(name, OFF_LANE_SIZE, &save64, 8, NULL);
    ring_geometry_t g2 = {.lanes = 4, .max_record = 1024, .lane_size = 65536};
    rc = ring_open(name, &g2, false, &r, err, sizeof err);
    tap_check(rc == -EPROTO && strstr(err, "lanes=2") != NULL && strstr(err, "asks lanes=4"),
              "open with another expected geometry refused: %s", err);
    rc = ring_open(name, &g, true, &r, err, sizeof err);
    tap_check(rc == 0, "restored header attaches again (create on an existing ring attaches)");
    if (rc == 0)
        ring_close(r);
    int fd = shm_open(name, O_RDWR, 0);
    tap_check(ftruncate(fd, 8192) == 0, "shrink the object");
    close(fd);
    rc = ring_open(name, NULL, false, &r, err, sizeof err);
    tap_check(rc == -EPROTO && strstr(err, "object is 8192 bytes") != NULL,
              "a truncated object is refused: %s", err);
    ring_unlink(name);
}

/* One lane, ten 128-byte records, the 5th record's type smashed. */
static void test_corrupt_record(void)
{
    char name[96];
    rt_name(name, sizeof name, "crec");
    ring_unlink(name);
    ring_geometry_t g = {.lanes = 1, .max_record = 1024, .lane_size = 65536};
    ring_t *r;
    if (!tap_check(ring_open(name, &g, true, &r, err, sizeof err) == 0, "create %s", name))
        return;
    ring_producer_t *p;
    ring_producer_acquire(r, NULL, 0, &p);
    for (uint64_t s = 1; s <= 10; s++) {
        uint8_t *d = ring_try_reserve_spsc(p, 100);
        rt_fill(d, 100, 2, 0, s);
        ring_commit_spsc(p, false);
    }
    int fd = shm_open(name, O_RDWR, 0);
    struct stat st;
    fstat(fd, &st);
    uint8_t *m = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    uint8_t *data = m + st.st_size - 65536;
    memset(data + 4 * 128 + 4, 0xAB, 4); /* record 5's type */
    ring_consumer_open(r, err, sizeof err);
    ring_record_t recs[16];
    int n = ring_consumer_peek(r, recs, 16);
    int ok = n == 4;
    for (int i = 0; i < n; i++) {
        uint32_t a, b;
        uint64_t q;
        ok &= rt_verify(recs[i].data, recs[i].len, &a, &b, &q) == 0 && q == (uint64_t)i + 1;
    }
    tap_check(ok, "records before the bad one are handed out intact (%d)", n);
    ring_consumer_release(r, (uint64_t)n, (uint64_t)n, RING_DROP_SHUTDOWN);
    ring_stats_t s;
    ring_stats(r, &s);
    tap_check(s.dropped[RING_DROP_CORRUPT] == 6 && s.exported == 4 && s.in_ring == 0 &&
                  s.written == 10 && s.resyncs == 1 && rt_balanced(&s),
              "the bad record and the 5 after it counted CORRUPT=%" PRIu64 ", lane resynced",
              s.dropped[RING_DROP_CORRUPT]);
    /* the lane keeps working after the resync */
    uint8_t *d = ring_try_reserve_spsc(p, 100);
    rt_fill(d, 100, 2, 0, 11);
    ring_commit_spsc(p, false);
    n = ring_consumer_peek(r, recs, 16);
    uint32_t a, b;
    uint64_t q;
    tap_check(n == 1 && rt_verify(recs[0].data, recs[0].len, &a, &b, &q) == 0 && q == 11,
              "the lane delivers again after the resync");
    ring_consumer_release(r, 1, 1, RING_DROP_SHUTDOWN);
    /* a bad length at the very front: skipped at once, nothing handed out */
    for (uint64_t s2 = 12; s2 <= 14; s2++) {
        d = ring_try_reserve_spsc(p, 100);
        rt_fill(d, 100, 2, 0, s2);
        ring_commit_spsc(p, false);
    }
    memset(data + 11 * 128, 0xFF, 4); /* record 12's length */
    n = ring_consumer_peek(r, recs, 16);
    ring_stats(r, &s);
    tap_check(n == 0 && s.dropped[RING_DROP_CORRUPT] == 9 && s.in_ring == 0 && rt_balanced(&s),
              "a bad length at the lane front: 3 more CORRUPT, none handed out");
    munmap(m, (size_t)st.st_size);
    ring_producer_release(p);
    ring_close(r);
    ring_unlink(name);
}

/* Random bytes into lane data and into every control field past the
 * identity line, while producers write and the consumer peeks, releases,
 * reaps, re-opens and takes stats.  Under ASan this proves no out-of-bounds
 * read; the counters must show the damage was noticed. */
static void test_corrupt_random(void)
{
    char name[96];
    rt_name(name, sizeof name, "crand");
    ring_unlink(name);
    ring_geometry_t g = {.lanes = 4, .max_record = 1024, .lane_size = 65536};
    ring_t *r;
    if (!tap_check(ring_open(name, &g, true, &r, err, sizeof err) == 0, "create %s", name))
        return;
    ring_producer_t *p[4];
    for (int i = 0; i < 4; i++)
        ring_producer_acquire(r, NULL, 0, &p[i]);
    ring_consumer_open(r, err, sizeof err);
    int fd = shm_open(name, O_RDWR, 0);
    struct stat st;
    fstat(fd, &st);
    uint8_t *m = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    uint32_t hdr_size;
    memcpy(&hdr_size, m + 12, 4);
    srand(12345);
    ring_record_t recs[256];
    uint64_t handed = 0, reopen_ok = 0;
    for (int it = 0; it < 3000; it++) {
        for (int i = 0; i < 4; i++) {
            for (int k = 0; k < 8; k++) {
                uint32_t len = 20 + (uint32_t)(rand() % 900);
                uint8_t *d = ring_try_reserve_spsc(p[i], len);
                if (d == NULL)
                    break;
                rt_fill(d, len, (uint32_t)i, 0, (uint64_t)it);
                ring_commit_spsc(p[i], false);
            }
        }
        int nbytes = 1 + rand() % 16;
        size_t off;
        if (it % 3 == 0) /* control area: consumer role, journal, lanes */
            off = 64 + (size_t)rand() % (hdr_size - 64 - 16);
        else
            off = hdr_size + (size_t)rand() % ((size_t)st.st_size - hdr_size - 16);
        for (int b = 0; b < nbytes; b++)
            m[off + (size_t)b] = (uint8_t)rand();
        int n = ring_consumer_peek(r, recs, 256);
        for (int i = 0; i < n; i++) {
            /* touch every byte handed out: must be inside the mapping */
            volatile uint8_t x = 0;
            for (uint32_t j = 0; j < recs[i].len; j++)
                x ^= recs[i].data[j];
            (void)x;
        }
        handed += (uint64_t)n;
        ring_consumer_release(r, (uint64_t)n, (uint64_t)n, RING_DROP_SHUTDOWN);
        ring_stats_t s;
        ring_stats(r, &s);
        if (it % 500 == 499) {
            ring_close(r);
            if (ring_open(name, NULL, false, &r, err, sizeof err) != 0)
                break;
            if (ring_consumer_open(r, err, sizeof err) == 0)
                reopen_ok++;
            ring_consumer_reap(r);
            for (int i = 0; i < 4; i++) {
                ring_producer_release(p[i]);
                p[i] = NULL;
                if (ring_producer_acquire(r, NULL, 0, &p[i]) != 0)
                    p[i] = NULL;
            }
            for (int i = 0; i < 4; i++)
                if (p[i] == NULL)
                    ring_producer_acquire(r, NULL, 0, &p[i]);
            /* lanes we could not claim again: stop writing to them */
            for (int i = 0; i < 4; i++)
                if (p[i] == NULL) {
                    tap_diag("lane not reclaimable after corruption (left undrained)");
                    it = 3000;
                }
        }
    }
    ring_stats_t s;
    ring_stats(r, &s);
    tap_check(s.dropped[RING_DROP_CORRUPT] + s.resyncs > 0,
              "random corruption survived and noticed: %" PRIu64 " handed out, CORRUPT=%" PRIu64
              ", resyncs=%" PRIu64 ", consumer re-opened %" PRIu64 "x",
              handed, s.dropped[RING_DROP_CORRUPT], s.resyncs, reopen_ok);
    for (int i = 0; i < 4; i++)
        ring_producer_release(p[i]);
    ring_close(r);
    munmap(m, (size_t)st.st_size);
    ring_unlink(name);
}

/* ring_lane_stats: the owner's pid and its counters since it claimed the
 * lane (written, full, truncated), a write in progress not counted, the
 * counters starting again at 0 for the next owner of the same lane. */
static void test_lane_stats(void)
{
    char name[96];
    rt_name(name, sizeof name, "lanestats");
    ring_unlink(name);
    ring_geometry_t g = {.lanes = 1, .max_record = 512, .lane_size = 65536};
    ring_t *r;
    err[0] = '\0';
    if (!tap_check(ring_open(name, &g, true, &r, err, sizeof err) == 0, "lane stats: ring created (%s)", err))
        return;
    ring_lane_stats_t l;
    tap_check(ring_lane_stats(r, 0, &l) == 0 && l.pid == 0 && l.written == 0 && l.in_ring == 0,
              "lane stats: a fresh lane has no owner and nothing written");
    tap_check(ring_lane_stats(r, 1, &l) == -ENOENT, "lane stats: lane out of range -> -ENOENT");
    ring_producer_t *p;
    ring_producer_acquire(r, NULL, 0, &p);
    uint64_t committed = 0, nulls = 0;
    for (int i = 0; i < 400; i++) {
        uint8_t *dst = ring_try_reserve_spsc(p, 200);
        if (dst == NULL) {
            nulls++;
            continue;
        }
        ring_commit_spsc(p, i < 3);
        committed++;
    }
    ring_lane_stats(r, 0, &l);
    err[0] = '\0';
    tap_check(l.pid == (int32_t)getpid() && l.alive && l.written == committed && l.full == nulls &&
                  nulls > 0 && l.truncated == 3 && l.in_ring == committed,
              "lane stats: pid %d alive, written %" PRIu64 " (want %" PRIu64 "), full %" PRIu64
              " (want %" PRIu64 "), truncated %" PRIu64 ", in_ring %" PRIu64,
              (int)l.pid, l.written, committed, l.full, nulls, l.truncated, l.in_ring);
    if (!tap_check(ring_consumer_open(r, err, sizeof err) == 0, "lane stats: consumer (%s)", err)) {
        ring_producer_release(p);
        ring_close(r);
        ring_unlink(name);
        return;
    }
    ring_record_t recs[64];
    int n;
    while ((n = ring_consumer_peek(r, recs, 64)) > 0)
        ring_consumer_release(r, (uint64_t)n, (uint64_t)n, RING_DROP_REJECTED);
    tap_check(ring_try_reserve_spsc(p, 100) != NULL, "lane stats: a write begun");
    ring_lane_stats(r, 0, &l);
    tap_check(l.written == committed && l.in_ring == 0,
              "lane stats: a write in progress is not counted, drained lane in_ring 0 (written %" PRIu64 ")",
              l.written);
    ring_commit_spsc(p, false);
    ring_lane_stats(r, 0, &l);
    tap_check(l.written == committed + 1 && l.in_ring == 1, "lane stats: its commit is (written %" PRIu64 ")",
              l.written);
    while ((n = ring_consumer_peek(r, recs, 64)) > 0)
        ring_consumer_release(r, (uint64_t)n, (uint64_t)n, RING_DROP_REJECTED);
    ring_producer_release(p);
    ring_lane_stats(r, 0, &l);
    tap_check(l.pid == 0 && l.full == nulls && l.truncated == 3,
              "lane stats: released, the lane's lifetime counters remain (full %" PRIu64 ")", l.full);
    ring_producer_acquire(r, NULL, 0, &p);
    for (int i = 0; i < 2; i++) {
        ring_try_reserve_spsc(p, 64);
        ring_commit_spsc(p, false);
    }
    ring_lane_stats(r, 0, &l);
    tap_check(l.pid == (int32_t)getpid() && l.written == 2 && l.full == 0 && l.truncated == 0,
              "lane stats: the next owner's counters start at 0 (written %" PRIu64 ", full %" PRIu64
              ", truncated %" PRIu64 ")",
              l.written, l.full, l.truncated);
    ring_producer_release(p);
    ring_close(r);
    ring_unlink(name);
}

static void test_tool(void)
{
    const char *tool = getenv("SHOP_RING");
    if (tool == NULL) {
        tap_diag("SHOP_RING not set: shop-ring checks skipped");
        return;
    }
    char name[96], cmd[512];
    rt_name(name, sizeof name, "tool");
    ring_unlink(name);
    snprintf(cmd, sizeof cmd, "%s create --name %s --lanes 2 --lane-size 65536 --max-record 512 >/dev/null", tool, name);
    if (!tap_check(system(cmd) == 0, "shop-ring create"))
        return;
    ring_t *r;
    if (!tap_check(ring_open(name, NULL, false, &r, err, sizeof err) == 0,
                   "the ring shop-ring created attaches"))
        return;
    ring_producer_t *p;
    ring_producer_acquire(r, NULL, 0, &p);
    for (int i = 0; i < 5; i++) {
        ring_try_reserve_spsc(p, 64);
        ring_commit_spsc(p, false);
    }
    snprintf(cmd, sizeof cmd, "%s stat --name %s --json", tool, name);
    FILE *f = popen(cmd, "r");
    char out[2048] = "";
    size_t got = fread(out, 1, sizeof out - 1, f);
    out[got] = '\0';
    int st = pclose(f);
    tap_check(WIFEXITED(st) && WEXITSTATUS(st) == 0 && strstr(out, "\"written\":5,") &&
                  strstr(out, "\"in_ring\":5,") && strstr(out, "\"producers\":1,") &&
                  strstr(out, "\"consumer_pid\":0}"),
              "shop-ring stat --json reports written/in_ring/producers: %s", out);
    snprintf(cmd, sizeof cmd, "%s lanes --name %s --json", tool, name);
    f = popen(cmd, "r");
    got = fread(out, 1, sizeof out - 1, f);
    out[got] = '\0';
    st = pclose(f);
    char want[128];
    snprintf(want, sizeof want, "\"pid\":%d,", (int)getpid());
    tap_check(WIFEXITED(st) && WEXITSTATUS(st) == 0 && strstr(out, want) &&
                  strstr(out, "\"alive\":true,\"written\":5,\"dropped_full\":0,") &&
                  strstr(out, "\"in_ring\":5}"),
              "shop-ring lanes --json: the lane's owner pid and its written/in_ring: %s", out);
    ring_stats_t s;
    ring_stats(r, &s);
    tap_check(s.consumer_pid == 0 && s.producers == 1,
              "stat took neither the consumer role nor a lane");
    ring_producer_release(p);
    ring_close(r);
    snprintf(cmd, sizeof cmd, "%s unlink --name %s", tool, name);
    tap_check(system(cmd) == 0, "shop-ring unlink");
    snprintf(cmd, sizeof cmd, "%s stat --name %s 2>/dev/null", tool, name);
    st = system(cmd);
    tap_check(WIFEXITED(st) && WEXITSTATUS(st) == 2, "shop-ring stat of a missing ring exits 2");
}

int main(void)
{
    test_geometry();
    test_round_trip();
    test_layout();
    test_corrupt_record();
    test_corrupt_random();
    test_lane_stats();
    test_tool();
    return tap_done();
}
