/*
 * tests/ipc/test_ring_procs.c - the ring's promises with real processes.
 *
 *   mp        N producer processes x M threads and a consumer process at
 *             once: every record byte for byte, in per-thread order, with
 *             the right lane metadata; accounting balanced in snapshots
 *             taken during the run and exact at the end     (promises 1, 5)
 *   full      no consumer: a producer's loop of tries finishes (never
 *             blocks) and every refusal is counted FULL     (promise 1)
 *   crashed   producers that commit and then _exit or SIGKILL themselves:
 *             their records are still drained, lanes reusable (promise 4)
 *   restart   the consumer SIGKILLed at random moments and restarted under
 *             load: every record delivered, duplicates <= redelivered,
 *             accounting exact                              (promise 3)
 *
 * Children are fork()ed; results come back through MAP_SHARED anonymous
 * memory.  Every loop is bounded by a count and by wall time.
 * Run: meson test -C BUILD --suite integration test_ring_procs   (TAP)
 */
#include "ring.h"
#include "ring_test_util.h"
#include "tap.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define MP_PROCS 3
#define MP_THREADS 2
#define MP_RECORDS 20000
#define RS_PROCS 2
#define RS_RECORDS 30000
#define LIMIT_NS (15ull * 1000000000ull) /* wall-time bound of any one phase */

static char err[512];
static char name[96];

static void xatomic_add(uint64_t *p, uint64_t v) { __atomic_add_fetch(p, v, __ATOMIC_SEQ_CST); }
static uint64_t xload(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static void xstore(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }

/* Waits for pid until deadline (ns); kills it past the deadline.  Returns
 * the wait status, or -1 if it had to be killed. */
static int wait_bounded(pid_t pid, uint64_t deadline)
{
    int st;
    for (;;) {
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid)
            return st;
        if (rt_now_ns() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        usleep(1000);
    }
}

/* ------------------------------------------------------------------ mp */

typedef struct {
    uint64_t committed[MP_PROCS][MP_THREADS];
    uint64_t nulls[MP_PROCS][MP_THREADS];
    uint64_t failed; /* producer-side setup failures */
    uint64_t stop;   /* parent -> consumer: producers are done */
    uint64_t delivered, bad, badmeta;
    uint64_t next[MP_PROCS][MP_THREADS]; /* consumer: next expected seq */
} mp_shared_t;

static mp_shared_t *mp;

typedef struct {
    ring_t *r;
    uint32_t prod, thread;
} mp_arg_t;

static void *mp_thread(void *arg)
{
    mp_arg_t *a = arg;
    char meta[32];
    int ml = snprintf(meta, sizeof meta, "p=%u t=%u", a->prod, a->thread);
    ring_producer_t *p;
    if (ring_producer_acquire(a->r, meta, (uint32_t)ml + 1, &p) != 0) {
        xatomic_add(&mp->failed, 1);
        return NULL;
    }
    uint64_t deadline = rt_now_ns() + LIMIT_NS;
    for (uint64_t s = 1; s <= MP_RECORDS;) {
        uint32_t len = rt_len(a->prod, a->thread, s, 400);
        uint8_t *d = ring_try_reserve_spsc(p, len);
        if (d == NULL) {
            /* full: the ring refused at once; the test retries so that
             * nothing is lost while the consumer makes room */
            xstore(&mp->nulls[a->prod][a->thread], xload(&mp->nulls[a->prod][a->thread]) + 1);
            if (rt_now_ns() > deadline)
                break;
            usleep(20); /* 2 cores: let the consumer run */
            continue;
        }
        rt_fill(d, len, a->prod, a->thread, s);
        ring_commit_spsc(p, false);
        xstore(&mp->committed[a->prod][a->thread], s);
        s++;
    }
    ring_producer_release(p);
    return NULL;
}

static void mp_producer(uint32_t prod)
{
    ring_t *r;
    if (ring_open(name, NULL, false, &r, err, sizeof err) != 0) {
        xatomic_add(&mp->failed, 1);
        _exit(1);
    }
    pthread_t th[MP_THREADS];
    mp_arg_t args[MP_THREADS];
    for (uint32_t t = 0; t < MP_THREADS; t++) {
        args[t] = (mp_arg_t){r, prod, t};
        pthread_create(&th[t], NULL, mp_thread, &args[t]);
    }
    for (int t = 0; t < MP_THREADS; t++)
        pthread_join(th[t], NULL);
    ring_close(r);
    _exit(0);
}

static void mp_consumer(void)
{
    ring_t *r;
    if (ring_open(name, NULL, false, &r, err, sizeof err) != 0 ||
        ring_consumer_open(r, err, sizeof err) != 0) {
        xatomic_add(&mp->failed, 1);
        _exit(1);
    }
    ring_record_t recs[256];
    uint64_t deadline = rt_now_ns() + LIMIT_NS + 2000000000ull;
    for (;;) {
        int stop = xload(&mp->stop) != 0; /* read before the peek */
        int n = ring_consumer_peek(r, recs, 256);
        for (int i = 0; i < n; i++) {
            uint32_t a, b;
            uint64_t q;
            if (rt_verify(recs[i].data, recs[i].len, &a, &b, &q) != 0 || a >= MP_PROCS ||
                b >= MP_THREADS || q != mp->next[a][b] + 1) {
                mp->bad++;
                continue;
            }
            mp->next[a][b] = q;
            const void *m;
            char want[32];
            snprintf(want, sizeof want, "p=%u t=%u", a, b);
            if (ring_lane_meta(r, recs[i].lane, &m, NULL) <= 0 || strcmp(m, want) != 0)
                mp->badmeta++;
        }
        if (n > 0) {
            ring_consumer_inflight(r, (uint64_t)n);
            ring_consumer_release(r, (uint64_t)n, (uint64_t)n, RING_DROP_SHUTDOWN);
            xatomic_add(&mp->delivered, (uint64_t)n);
        } else if (stop || rt_now_ns() > deadline) {
            break;
        } else {
            sched_yield();
        }
    }
    ring_close(r);
    _exit(0);
}

static void test_mp(void)
{
    rt_name(name, sizeof name, "mp");
    ring_unlink(name);
    ring_geometry_t g = {.lanes = 8, .max_record = 512, .lane_size = 65536};
    ring_t *r;
    if (!tap_check(ring_open(name, &g, true, &r, err, sizeof err) == 0, "mp: create %s", name))
        return;
    mp = rt_shared(sizeof *mp);
    pid_t cons = fork();
    if (cons == 0)
        mp_consumer();
    pid_t prods[MP_PROCS];
    for (uint32_t i = 0; i < MP_PROCS; i++)
        if ((prods[i] = fork()) == 0)
            mp_producer(i);
    /* snapshots while everything runs */
    uint64_t snaps = 0, unbalanced = 0, nonmono = 0, outside = 0;
    ring_stats_t prev = {0};
    int running = MP_PROCS;
    uint64_t deadline = rt_now_ns() + LIMIT_NS + 3000000000ull;
    while (running > 0 && rt_now_ns() < deadline) {
        uint64_t before = 0, after = 0;
        for (int i = 0; i < MP_PROCS; i++)
            for (int t = 0; t < MP_THREADS; t++)
                before += xload(&mp->committed[i][t]);
        ring_stats_t s;
        ring_stats(r, &s);
        for (int i = 0; i < MP_PROCS; i++)
            for (int t = 0; t < MP_THREADS; t++)
                after += xload(&mp->committed[i][t]);
        snaps++;
        if (!rt_balanced(&s))
            unbalanced++;
        if (s.written < prev.written || s.exported < prev.exported || s.exported > s.written)
            nonmono++;
        /* the producer bumps its shared count just after its commit: the
         * snapshot's written lies in [before, after + one per thread] */
        if (s.written < before || s.written > after + MP_PROCS * MP_THREADS)
            outside++;
        prev = s;
        usleep(2000);
        running = 0;
        for (int i = 0; i < MP_PROCS; i++) {
            if (prods[i] <= 0)
                continue; /* never waitpid(-1): it would reap the consumer */
            if (waitpid(prods[i], NULL, WNOHANG) == 0)
                running++;
            else
                prods[i] = -1; /* reaped; wait_bounded skips it below */
        }
    }
    for (int i = 0; i < MP_PROCS; i++)
        if (prods[i] > 0)
            wait_bounded(prods[i], rt_now_ns() + 5000000000ull);
    xstore(&mp->stop, 1);
    int st = wait_bounded(cons, rt_now_ns() + 10000000000ull);
    tap_check(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0 && mp->failed == 0,
              "mp: %d producer processes x %d threads and a consumer process ran to the end",
              MP_PROCS, MP_THREADS);
    uint64_t total = 0, nulls = 0;
    for (int i = 0; i < MP_PROCS; i++)
        for (int t = 0; t < MP_THREADS; t++) {
            total += mp->committed[i][t];
            nulls += mp->nulls[i][t];
        }
    tap_check(total == (uint64_t)MP_PROCS * MP_THREADS * MP_RECORDS,
              "mp: every producer thread committed all %d records (%" PRIu64 ")", MP_RECORDS,
              total);
    tap_check(mp->delivered == total && mp->bad == 0,
              "mp: %" PRIu64 " records delivered byte for byte in per-thread order, %" PRIu64
              " bad",
              mp->delivered, mp->bad);
    tap_check(mp->badmeta == 0, "mp: each record's lane carries its producer's metadata");
    ring_stats_t s;
    ring_stats(r, &s);
    tap_check(s.written == total && s.exported == total && s.in_ring == 0 && s.torn == 0 &&
                  s.dropped[RING_DROP_FULL] == nulls && rt_balanced(&s) && s.producers == 0,
              "mp: final accounting exact: written %" PRIu64 " exported %" PRIu64
              " FULL %" PRIu64 " (producers saw %" PRIu64 " refusals)",
              s.written, s.exported, s.dropped[RING_DROP_FULL], nulls);
    tap_check(snaps > 10 && unbalanced == 0 && nonmono == 0 && outside == 0,
              "mp: %" PRIu64 " snapshots during the run: %" PRIu64 " unbalanced, %" PRIu64
              " non-monotonic, %" PRIu64 " with written outside what producers committed",
              snaps, unbalanced, nonmono, outside);
    ring_close(r);
    ring_unlink(name);
    munmap(mp, sizeof *mp);
}

/* ---------------------------------------------------------------- full */

typedef struct {
    uint64_t committed, nulls, tries, elapsed_ns, ok;
} full_shared_t;

static void test_full(void)
{
    rt_name(name, sizeof name, "full");
    ring_unlink(name);
    ring_geometry_t g = {.lanes = 2, .max_record = 512, .lane_size = 65536};
    ring_t *r;
    if (!tap_check(ring_open(name, &g, true, &r, err, sizeof err) == 0, "full: create %s", name))
        return;
    full_shared_t *fs = rt_shared(sizeof *fs);
    pid_t pid = fork();
    if (pid == 0) {
        ring_t *cr;
        ring_producer_t *p;
        if (ring_open(name, NULL, false, &cr, err, sizeof err) != 0 ||
            ring_producer_acquire(cr, "full", 5, &p) != 0)
            _exit(1);
        uint64_t t0 = rt_now_ns();
        for (uint64_t i = 1; i <= 200000; i++) {
            uint32_t len = rt_len(7, 0, i, 300);
            uint8_t *d = ring_try_reserve_spsc(p, len);
            if (d == NULL) {
                fs->nulls++;
                continue;
            }
            rt_fill(d, len, 7, 0, i);
            ring_commit_spsc(p, false);
            fs->committed++;
        }
        fs->elapsed_ns = rt_now_ns() - t0;
        fs->tries = 200000;
        fs->ok = 1;
        ring_producer_release(p);
        ring_close(cr);
        _exit(0);
    }
    /* no consumer runs: the loop must still end (bounded, not timed) */
    int st = wait_bounded(pid, rt_now_ns() + LIMIT_NS);
    tap_check(st != -1 && fs->ok,
              "full: 200000 tries with no consumer finished (%.1f ms; never blocked)",
              (double)fs->elapsed_ns / 1e6);
    ring_stats_t s;
    ring_stats(r, &s);
    tap_check(fs->committed + fs->nulls == 200000 && s.written == fs->committed &&
                  s.dropped[RING_DROP_FULL] == fs->nulls && s.in_ring == fs->committed &&
                  rt_balanced(&s),
              "full: %" PRIu64 " written, %" PRIu64 " refused, FULL counted exactly (%" PRIu64
              ")",
              fs->committed, fs->nulls, s.dropped[RING_DROP_FULL]);
    tap_check(s.bytes_used <= 65536 && s.bytes_used > 65536 - 512,
              "full: the lane is full to within one record (%" PRIu64 " bytes)", s.bytes_used);
    ring_consumer_open(r, err, sizeof err);
    ring_record_t recs[128];
    uint64_t got = 0, bad = 0, last = 0;
    int n;
    while ((n = ring_consumer_peek(r, recs, 128)) > 0) {
        for (int i = 0; i < n; i++) {
            uint32_t a, b;
            uint64_t q;
            if (rt_verify(recs[i].data, recs[i].len, &a, &b, &q) != 0 || a != 7 || q <= last)
                bad++;
            last = q;
        }
        got += (uint64_t)n;
        ring_consumer_release(r, (uint64_t)n, (uint64_t)n, RING_DROP_SHUTDOWN);
    }
    ring_stats(r, &s);
    tap_check(got == fs->committed && bad == 0 && s.exported == fs->committed &&
                  s.in_ring == 0 && rt_balanced(&s),
              "full: everything that was written is drained intact afterwards (%" PRIu64 ")",
              got);
    ring_close(r);
    ring_unlink(name);
    munmap(fs, sizeof *fs);
}

/* ------------------------------------------------------------- crashed */

static void crash_child(uint32_t prod, int how)
{
    ring_t *r;
    ring_producer_t *p;
    char meta[16];
    snprintf(meta, sizeof meta, "crash%u", prod);
    if (ring_open(name, NULL, false, &r, err, sizeof err) != 0 ||
        ring_producer_acquire(r, meta, (uint32_t)strlen(meta) + 1, &p) != 0)
        _exit(1);
    for (uint64_t s = 1; s <= 500; s++) {
        uint32_t len = rt_len(prod, 0, s, 100);
        uint8_t *d = ring_try_reserve_spsc(p, len);
        if (d == NULL)
            _exit(1);
        rt_fill(d, len, prod, 0, s);
        ring_commit_spsc(p, false);
    }
    /* no ring_producer_release, no ring_close: the process just ends */
    if (how == 0)
        _exit(0);
    raise(SIGKILL);
    _exit(1);
}

static void test_crashed(void)
{
    rt_name(name, sizeof name, "crashed");
    ring_unlink(name);
    ring_geometry_t g = {.lanes = 2, .max_record = 256, .lane_size = 65536};
    ring_t *r;
    if (!tap_check(ring_open(name, &g, true, &r, err, sizeof err) == 0, "crashed: create %s",
                   name))
        return;
    pid_t a = fork();
    if (a == 0)
        crash_child(1, 0);
    pid_t b = fork();
    if (b == 0)
        crash_child(2, 1);
    int sa = wait_bounded(a, rt_now_ns() + LIMIT_NS);
    int sb = wait_bounded(b, rt_now_ns() + LIMIT_NS);
    tap_check(sa != -1 && WIFEXITED(sa) && WEXITSTATUS(sa) == 0 && sb != -1 &&
                  WIFSIGNALED(sb) && WTERMSIG(sb) == SIGKILL,
              "crashed: one producer _exit()ed, one was SIGKILLed, both after committing 500");
    ring_stats_t s;
    ring_stats(r, &s);
    tap_check(s.written == 1000 && s.in_ring == 1000 && s.producers == 0 && s.torn == 0,
              "crashed: stats see 1000 written, in ring, no live producer, nothing torn");
    ring_producer_t *p;
    tap_check(ring_producer_acquire(r, NULL, 0, &p) == -EBUSY,
              "crashed: the dead producers' undrained lanes are not handed out");
    tap_check(ring_consumer_open(r, err, sizeof err) == 0, "crashed: consumer opens (and reaps)");
    ring_record_t recs[128];
    uint64_t got = 0, bad = 0, next[3] = {0, 0, 0}, badmeta = 0;
    int n;
    while ((n = ring_consumer_peek(r, recs, 128)) > 0) {
        for (int i = 0; i < n; i++) {
            uint32_t pa, pb;
            uint64_t q;
            if (rt_verify(recs[i].data, recs[i].len, &pa, &pb, &q) != 0 || pa < 1 || pa > 2 ||
                q != next[pa] + 1) {
                bad++;
                continue;
            }
            next[pa] = q;
            const void *m;
            char want[16];
            snprintf(want, sizeof want, "crash%u", pa);
            if (ring_lane_meta(r, recs[i].lane, &m, NULL) <= 0 || strcmp(m, want) != 0)
                badmeta++;
        }
        got += (uint64_t)n;
        ring_consumer_release(r, (uint64_t)n, (uint64_t)n, RING_DROP_SHUTDOWN);
    }
    tap_check(got == 1000 && bad == 0 && next[1] == 500 && next[2] == 500 && badmeta == 0,
              "crashed: all 1000 records of the crashed producers drained intact with their "
              "metadata (promise 4)");
    ring_stats(r, &s);
    tap_check(s.exported == 1000 && s.torn == 0 && s.in_ring == 0 && rt_balanced(&s),
              "crashed: exported 1000, torn 0, balanced");
    ring_producer_t *p2;
    int ra = ring_producer_acquire(r, NULL, 0, &p);
    int rb = ring_producer_acquire(r, NULL, 0, &p2);
    tap_check(ra == 0 && rb == 0, "crashed: both lanes are claimable again once drained");
    if (ra == 0)
        ring_producer_release(p);
    if (rb == 0)
        ring_producer_release(p2);
    ring_close(r);
    ring_unlink(name);
}

/* ------------------------------------------------------------- restart */

typedef struct {
    uint64_t committed[RS_PROCS];
    uint64_t nulls[RS_PROCS];
    uint64_t bad, failed, stop;
    uint64_t logn;                         /* entries in log[] */
    uint32_t count[RS_PROCS][RS_RECORDS + 1]; /* times each record was "sent" */
} rs_shared_t;

static rs_shared_t *rs;

static void rs_producer(uint32_t prod)
{
    ring_t *r;
    ring_producer_t *p;
    if (ring_open(name, NULL, false, &r, err, sizeof err) != 0 ||
        ring_producer_acquire(r, NULL, 0, &p) != 0) {
        xatomic_add(&rs->failed, 1);
        _exit(1);
    }
    uint64_t deadline = rt_now_ns() + LIMIT_NS;
    for (uint64_t s = 1; s <= RS_RECORDS && rt_now_ns() < deadline;) {
        uint32_t len = rt_len(prod, 0, s, 240);
        uint8_t *d = ring_try_reserve_spsc(p, len);
        if (d == NULL) {
            rs->nulls[prod]++;
            usleep(50);
            continue;
        }
        rt_fill(d, len, prod, 0, s);
        ring_commit_spsc(p, false);
        xstore(&rs->committed[prod], s);
        s++;
    }
    ring_producer_release(p);
    ring_close(r);
    _exit(0);
}

/* A consumer that "sends" a record by counting it in rs->count: peek,
 * declare in flight, send, release.  Killed anywhere. */
static void rs_consumer(int final)
{
    ring_t *r;
    if (ring_open(name, NULL, false, &r, err, sizeof err) != 0 ||
        ring_consumer_open(r, err, sizeof err) != 0) {
        xatomic_add(&rs->failed, 1);
        _exit(1);
    }
    ring_record_t recs[128];
    uint64_t deadline = rt_now_ns() + LIMIT_NS;
    while (rt_now_ns() < deadline) {
        int stop = xload(&rs->stop) != 0;
        int n = ring_consumer_peek(r, recs, 128);
        if (n == 0) {
            if (final && stop)
                break;
            usleep(100);
            continue;
        }
        ring_consumer_inflight(r, (uint64_t)n);
        usleep(100); /* the "network": a send takes a while, kills land in it */
        for (int i = 0; i < n; i++) {
            if (i == n / 2)
                usleep(200); /* half the batch is out when a kill lands here */
            uint32_t a, b;
            uint64_t q;
            if (rt_verify(recs[i].data, recs[i].len, &a, &b, &q) != 0 || a >= RS_PROCS ||
                q == 0 || q > RS_RECORDS) {
                xatomic_add(&rs->bad, 1);
                continue;
            }
            __atomic_add_fetch(&rs->count[a][q], 1, __ATOMIC_SEQ_CST);
            xatomic_add(&rs->logn, 1);
        }
        ring_consumer_release(r, (uint64_t)n, (uint64_t)n, RING_DROP_SHUTDOWN);
    }
    ring_close(r);
    _exit(0);
}

static void test_restart(void)
{
    rt_name(name, sizeof name, "restart");
    ring_unlink(name);
    ring_geometry_t g = {.lanes = 4, .max_record = 256, .lane_size = 65536};
    ring_t *r;
    if (!tap_check(ring_open(name, &g, true, &r, err, sizeof err) == 0, "restart: create %s",
                   name))
        return;
    rs = rt_shared(sizeof *rs);
    unsigned seed = (unsigned)getpid() ^ (unsigned)rt_now_ns();
    srand(seed);
    tap_diag("restart: kill schedule seed %u", seed);
    pid_t prods[RS_PROCS];
    for (uint32_t i = 0; i < RS_PROCS; i++)
        if ((prods[i] = fork()) == 0)
            rs_producer(i);
    int kills = 0, busy = 0;
    uint64_t unbalanced = 0, snaps = 0;
    uint64_t deadline = rt_now_ns() + LIMIT_NS;
    for (int round = 0; round < 8 && rt_now_ns() < deadline; round++) {
        pid_t c = fork();
        if (c == 0)
            rs_consumer(0);
        usleep((useconds_t)(2000 + rand() % 40000));
        ring_stats_t s;
        ring_stats(r, &s);
        snaps++;
        if (!rt_balanced(&s))
            unbalanced++;
        kill(c, SIGKILL);
        int st;
        waitpid(c, &st, 0); /* reaped: the next consumer sees it dead */
        if (WIFSIGNALED(st))
            kills++;
        else
            busy++;
    }
    /* the last consumer runs until the producers are done and it is empty */
    pid_t c = fork();
    if (c == 0)
        rs_consumer(1);
    for (int i = 0; i < RS_PROCS; i++)
        wait_bounded(prods[i], rt_now_ns() + LIMIT_NS);
    xstore(&rs->stop, 1);
    int st = wait_bounded(c, rt_now_ns() + LIMIT_NS);
    tap_check(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0 && rs->failed == 0,
              "restart: consumer killed %d times at random moments, final one drained (%d "
              "exited early)",
              kills, busy);
    uint64_t missing = 0, dups = 0, total = 0;
    for (int i = 0; i < RS_PROCS; i++) {
        total += rs->committed[i];
        for (uint64_t q = 1; q <= rs->committed[i]; q++) {
            if (rs->count[i][q] == 0)
                missing++;
            else
                dups += rs->count[i][q] - 1;
        }
    }
    ring_stats_t s;
    ring_stats(r, &s);
    tap_check(total == (uint64_t)RS_PROCS * RS_RECORDS && missing == 0 && rs->bad == 0,
              "restart: all %" PRIu64 " records delivered intact across restarts (%" PRIu64
              " missing)",
              total, missing);
    tap_check(dups <= s.redelivered,
              "restart: duplicates %" PRIu64 " <= redelivered %" PRIu64, dups, s.redelivered);
    tap_check(s.written == total && s.exported == total && s.in_ring == 0 && rt_balanced(&s) &&
                  unbalanced == 0 && s.torn == 0,
              "restart: accounting exact: written %" PRIu64 " exported %" PRIu64
              " in_ring %" PRIu64 " (%" PRIu64 " mid-run snapshots balanced)",
              s.written, s.exported, s.in_ring, snaps - unbalanced);
    ring_close(r);
    ring_unlink(name);
    munmap(rs, sizeof *rs);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* forked children must not re-flush TAP lines */
    /* optional: run one phase by name */
    const char *only = argc > 1 ? argv[1] : NULL;
    if (!only || strcmp(only, "mp") == 0)
        test_mp();
    if (!only || strcmp(only, "full") == 0)
        test_full();
    if (!only || strcmp(only, "crashed") == 0)
        test_crashed();
    if (!only || strcmp(only, "restart") == 0)
        test_restart();
    return tap_done();
}
