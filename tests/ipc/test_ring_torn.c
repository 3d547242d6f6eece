/*
 * tests/ipc/test_ring_torn.c - promise 2: a producer killed in the middle of
 * a write.  Linked against the RING_TEST_HOOKS build of ring.c: the child
 * sets ring_test_hook_mid_write to raise(SIGSTOP), so it stops after its
 * record header is written and before the commit; the parent then SIGKILLs
 * it.  The consumer must count exactly one torn write, deliver every record
 * the producer committed before it, and the lane must be claimable again.
 *
 * Run: meson test -C BUILD --suite integration test_ring_torn   (TAP)
 */
#include "ring.h"
#include "ring_test_util.h"
#include "tap.h"

#include <errno.h>
#include <pthread.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#ifndef RING_TEST_HOOKS
#error "test_ring_torn needs the RING_TEST_HOOKS build of ipc (ipc_hooks_dep)"
#endif

static char err[512];
static char name[96];

static void stop_hook(void) { raise(SIGSTOP); }

/* Child: commits n records as producer `prod`, then stops mid-write of the
 * next one (or, with stop == 0, releases its lane and exits). */
static void child(uint32_t prod, uint64_t n, int stop)
{
    ring_t *r;
    ring_producer_t *p;
    char meta[16];
    snprintf(meta, sizeof meta, "torn%u", prod);
    if (ring_open(name, NULL, false, &r, err, sizeof err) != 0)
        _exit(10);
    if (ring_producer_acquire(r, meta, (uint32_t)strlen(meta) + 1, &p) != 0)
        _exit(11);
    for (uint64_t s = 1; s <= n; s++) {
        uint32_t len = rt_len(prod, 0, s, 300);
        uint8_t *d = ring_try_reserve_spsc(p, len);
        if (d == NULL)
            _exit(12);
        rt_fill(d, len, prod, 0, s);
        ring_commit_spsc(p, false);
    }
    if (!stop) {
        ring_producer_release(p);
        ring_close(r);
        _exit(0);
    }
    ring_test_hook_mid_write = stop_hook;
    uint8_t *d = ring_try_reserve_spsc(p, 200); /* stops in here */
    memset(d, 0xEE, 200);                       /* never reached: SIGKILLed */
    ring_commit_spsc(p, false);
    _exit(13);
}

/* Forks a child that stops mid-write after n records; returns its pid
 * once it is stopped, or -1. */
static pid_t start_stopped(uint32_t prod, uint64_t n)
{
    pid_t pid = fork();
    if (pid == 0)
        child(prod, n, 1);
    int st;
    if (waitpid(pid, &st, WUNTRACED) != pid || !WIFSTOPPED(st))
        return -1;
    return pid;
}

static void kill_stopped(pid_t pid)
{
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0); /* reaped: a zombie would still look alive */
}

/* Drains everything; checks producer `prod` seqs run from *next+1 in order. */
static uint64_t drain(ring_t *r, uint32_t prod, uint64_t *next, uint64_t *bad)
{
    ring_record_t recs[64];
    uint64_t got = 0;
    int n;
    while ((n = ring_consumer_peek(r, recs, 64)) > 0) {
        for (int i = 0; i < n; i++) {
            uint32_t a, b;
            uint64_t q;
            const void *m;
            char want[16];
            snprintf(want, sizeof want, "torn%u", prod);
            if (rt_verify(recs[i].data, recs[i].len, &a, &b, &q) != 0 || a != prod ||
                q != *next + 1 || ring_lane_meta(r, recs[i].lane, &m, NULL) <= 0 ||
                strcmp(m, want) != 0) {
                (*bad)++;
                continue;
            }
            *next = q;
        }
        got += (uint64_t)n;
        ring_consumer_release(r, (uint64_t)n, (uint64_t)n, RING_DROP_SHUTDOWN);
    }
    return got;
}

/* A thread that claims a lane, commits 3 records and exits without
 * ring_producer_release (its process stays alive). */
static void *thread_exits(void *arg)
{
    ring_t *r = arg;
    ring_producer_t *p;
    if (ring_producer_acquire(r, "torn5", 6, &p) != 0)
        return NULL;
    for (uint64_t s = 1; s <= 3; s++) {
        uint32_t len = rt_len(5, 0, s, 300);
        uint8_t *d = ring_try_reserve_spsc(p, len);
        rt_fill(d, len, 5, 0, s);
        ring_commit_spsc(p, false);
    }
    return p;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    rt_name(name, sizeof name, "torn");
    ring_unlink(name);
    /* one lane: a reused lane can only be the torn one */
    ring_geometry_t g = {.lanes = 1, .max_record = 512, .lane_size = 65536};
    ring_t *r;
    if (!tap_check(ring_open(name, &g, true, &r, err, sizeof err) == 0, "create %s", name))
        return tap_done();

    /* 1: killed mid-write with no consumer running; consumer_open reaps */
    pid_t pid = start_stopped(1, 100);
    if (!tap_check(pid > 0, "producer 1 committed 100 records and stopped mid-write"))
        return tap_done();
    ring_stats_t s;
    ring_stats(r, &s);
    tap_check(s.written == 100 && s.torn == 0 && s.producers == 1,
              "while it is stopped: written 100, torn 0, 1 live producer");
    kill_stopped(pid);
    ring_stats(r, &s);
    tap_check(s.torn == 1 && s.producers == 0 && s.written == 100,
              "after SIGKILL, before any reap: stats already show torn 1 (%" PRIu64 ")", s.torn);
    tap_check(ring_consumer_open(r, err, sizeof err) == 0, "consumer opens and reaps the lane");
    uint64_t next = 0, bad = 0;
    uint64_t got = drain(r, 1, &next, &bad);
    ring_stats(r, &s);
    tap_check(got == 100 && next == 100 && bad == 0,
              "all 100 committed records of the killed producer delivered intact (%" PRIu64 ")",
              got);
    tap_check(s.torn == 1 && s.written == 100 && s.exported == 100 && s.in_ring == 0 &&
                  rt_balanced(&s),
              "exactly 1 torn; written 100 = exported 100; balanced");

    /* 2: the lane is reusable by a new producer process */
    pid = fork();
    if (pid == 0)
        child(2, 50, 0);
    int st;
    waitpid(pid, &st, 0);
    tap_check(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "a new producer claimed the torn lane and wrote 50 (exit %d)",
              WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    next = 0;
    got = drain(r, 2, &next, &bad);
    ring_stats(r, &s);
    tap_check(got == 50 && next == 50 && bad == 0 && s.torn == 1 && s.written == 150 &&
                  rt_balanced(&s),
              "its 50 records delivered; torn still 1, written 150");

    /* 3: killed mid-write while the consumer is attached: ring_consumer_reap */
    pid = start_stopped(3, 10);
    tap_check(pid > 0, "producer 3 committed 10 and stopped mid-write");
    tap_check(ring_consumer_reap(r) == 0, "reap leaves a live (stopped) producer alone");
    kill_stopped(pid);
    tap_check(ring_consumer_reap(r) == 1, "reap reclaims the killed producer's lane");
    tap_check(ring_consumer_reap(r) == 0, "a second reap changes nothing");
    next = 0;
    got = drain(r, 3, &next, &bad);
    ring_stats(r, &s);
    tap_check(got == 10 && bad == 0 && s.torn == 2 && s.written == 160 && s.exported == 160 &&
                  rt_balanced(&s),
              "its 10 committed records delivered; torn 2 in total; written 160");
    ring_producer_t *p;
    tap_check(ring_producer_acquire(r, NULL, 0, &p) == 0, "the lane is claimable again");
    ring_producer_release(p);
    ring_stats(r, &s);
    tap_check(s.torn == 2, "a clean acquire/release adds no torn write");

    /* 4: a consumer restarted after the kill also counts it once */
    pid = start_stopped(4, 5);
    kill_stopped(pid);
    ring_close(r);
    ring_open(name, NULL, false, &r, err, sizeof err);
    ring_consumer_open(r, err, sizeof err);
    next = 0;
    got = drain(r, 4, &next, &bad);
    ring_close(r);
    ring_open(name, NULL, false, &r, err, sizeof err);
    ring_consumer_open(r, err, sizeof err); /* reaps again: nothing new */
    ring_stats(r, &s);
    tap_check(got == 5 && bad == 0 && s.torn == 3 && s.written == 165 && rt_balanced(&s),
              "killed producer with a consumer restart in between: torn 3, nothing counted "
              "twice");

    /* 5: a thread that exits holding its lane (process alive): tgkill sees
     * the thread gone, reap frees the lane, its records are drained */
    pthread_t th;
    void *handle = NULL;
    pthread_create(&th, NULL, thread_exits, r);
    pthread_join(th, &handle);
    tap_check(handle != NULL && ring_consumer_reap(r) == 1,
              "a thread that exited without releasing its lane is reaped (process alive)");
    next = 0;
    got = drain(r, 5, &next, &bad);
    ring_stats(r, &s);
    tap_check(got == 3 && bad == 0 && s.torn == 3 && s.producers == 0 && rt_balanced(&s),
              "its 3 records delivered, no torn write added");
    ring_producer_release(handle); /* stale handle: must not touch the lane */
    tap_check(ring_producer_acquire(r, NULL, 0, &p) == 0, "the lane is claimable again");
    ring_producer_release(p);
    ring_close(r);
    ring_unlink(name);
    return tap_done();
}
