/*
 * perf/bench_harness.h - the measuring harness shared by the span-write
 * benchmarks (bench_ring for core's tracing API into the ipc ring,
 * bench_lttng for the LTTng-UST baseline), so both run the same loop with
 * the same timing and the same statistics.
 *
 * Shape of one run (bench_run):
 *   driver process: parses options, creates a memfd holding the control
 *     block and one preallocated sample array per producer, calls
 *     ops->setup (e.g. creates the ring), forks + re-execs itself once per
 *     producer (and once for the consumer when ops->consumer is set),
 *     releases the producers together, waits, computes percentiles and
 *     prints one JSON object on stdout.
 *   producer k (its own process, pinned to CPU k % ncpu): ops->producer_init,
 *     warm-up spans, barrier, then BENCH_TIMED_LOOP over `spans` spans.
 *   consumer (its own process): ops->consumer until told to stop and the
 *     producers' records are drained.
 *
 * Children are re-executed (not just forked) so that libraries with
 * per-process constructors (LTTng-UST registers each process with
 * lttng-sessiond) see a fresh process, as a real service would be.
 *
 * Timing: each span is bracketed by lfence;rdtsc;lfence ... rdtscp;lfence,
 * the cycle delta stored as uint32.  The TSC rate is calibrated against
 * CLOCK_MONOTONIC_RAW by the driver (or given with --tsc-hz), and the
 * median cost of an empty bracket (the timer overhead) is measured in each
 * producer, reported, and subtracted from the reported percentiles.
 */
#ifndef SHOP_PERF_BENCH_HARNESS_H
#define SHOP_PERF_BENCH_HARNESS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "buildconf.h"

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define BENCH_HAVE_TSC 1
#else
#include <time.h>
#define BENCH_HAVE_TSC 0
#endif

/* config.h's HAVE_RDTSCP may be an empty define (meson conf.set(true)) or
 * 0/1 (conf.set10); this is true for "empty" and non-zero. */
#if BENCH_HAVE_TSC && defined(HAVE_RDTSCP) && ((HAVE_RDTSCP + 0) != 0 || (0 - HAVE_RDTSCP - 1) == 1)
#define BENCH_HAVE_RDTSCP 1
#else
#define BENCH_HAVE_RDTSCP 0
#endif

#define BENCH_MAX_PRODUCERS 16
#define BENCH_NAME_MAX 64

/* Control block shared by the driver and every child (in the memfd). */
typedef struct st_bench_ctl_t {
    /* options, written by the driver before any fork */
    uint32_t producers;        /* producer processes, 1..BENCH_MAX_PRODUCERS */
    uint32_t ncpu;             /* producer k is pinned to CPU k % ncpu */
    uint64_t spans;            /* timed spans per producer */
    uint64_t warmup;           /* untimed spans per producer before the barrier */
    uint64_t lane_size;        /* ring mode: bytes per lane (0 = choose) */
    double tsc_hz;             /* calibrated TSC rate */
    char name[BENCH_NAME_MAX]; /* mode-specific object name (shm name) */

    /* barrier and stop (atomics: every process touches them) */
    _Atomic uint32_t ready;          /* producers past warm-up */
    _Atomic uint32_t go;             /* 1: start the timed loop */
    _Atomic uint32_t producers_done; /* producers past the timed loop */
    _Atomic uint32_t consumer_ready; /* consumer attached */
    _Atomic uint32_t stop;           /* 1: consumer drains what is left, exits */

    /* per-producer results, each written by its producer only */
    struct {
        uint64_t begin_ns, end_ns; /* CLOCK_MONOTONIC around the timed loop */
        uint64_t overhead_cyc;     /* median empty-bracket cost */
        uint64_t written;          /* spans that reached the buffer */
        uint64_t dropped;          /* spans the buffer refused (full, ...) */
        int32_t status;            /* 0 or -errno */
        int32_t cpu;               /* CPU it was pinned to */
    } prod[BENCH_MAX_PRODUCERS];

    /* consumer results, written by the consumer only */
    uint64_t consumed;   /* records peeked, decoded, validated, released */
    uint64_t invalid;    /* records that failed decoding or validation */
    uint64_t empty_polls;
    int32_t consumer_status;

    /* filled by ops->finish from the buffer's own accounting */
    uint64_t buf_written, buf_dropped;
    char extra_json[1024]; /* `,"key":value...` appended to the result */
} bench_ctl_t;

/* What a benchmark plugs into the harness.  Every hook returns 0 or -errno
 * (and prints why on stderr). */
typedef struct st_bench_ops_t {
    const char *impl; /* "ours", "lttng": the JSON `impl` value */
    /* driver, before forking: create shared objects, fill ctl->name */
    int (*setup)(bench_ctl_t *ctl);
    /* driver, once every producer is past warm-up, before the go: e.g. wait
     * until the consumer drained the warm-up spans.  Optional. */
    int (*before_go)(bench_ctl_t *ctl);
    /* driver, after every child exited, before the report: fill buf_* and
     * extra_json.  Optional. */
    void (*finish)(bench_ctl_t *ctl);
    /* driver, at the end (also on failure): remove shared objects */
    void (*teardown)(bench_ctl_t *ctl);
    /* producer process: attach, prepare (no spans yet) */
    int (*producer_init)(bench_ctl_t *ctl, uint32_t k);
    /* producer process: write `n` spans; when `samples` is non-NULL time
     * each one with BENCH_TIMED_LOOP into samples[0..n) */
    int (*producer_run)(bench_ctl_t *ctl, uint32_t k, uint32_t *samples, uint64_t n);
    /* producer process: detach (after the timed loop) */
    void (*producer_fini)(bench_ctl_t *ctl, uint32_t k);
    /* consumer process, optional: drain until ctl->stop and empty */
    int (*consumer)(bench_ctl_t *ctl);
} bench_ops_t;

/* Runs the benchmark described by argv (see bench_usage) with `ops`;
 * also the entry point of the re-executed children.  Returns the exit
 * status for main(). */
int bench_main(int argc, char **argv, const bench_ops_t *ops);

/* Pins the calling process to one CPU.  Returns 0 or -errno. */
int bench_pin(int cpu);

/* Calibrates the TSC against CLOCK_MONOTONIC_RAW over about `ms` ms. */
double bench_tsc_calibrate(unsigned ms);

/* Median cycles of an empty timing bracket, over n brackets. */
uint64_t bench_timer_overhead(uint32_t *scratch, size_t n);

/* k-th smallest (0-based) of v[lo..hi) after partially reordering v;
 * Hoare selection (what std::nth_element does), O(n) expected. */
uint32_t bench_nth(uint32_t *v, size_t lo, size_t hi, size_t k);

/* CLOCK_MONOTONIC in ns. */
uint64_t bench_now_ns(void);

/* Spins until every producer passed warm-up and the driver said go. */
void bench_barrier(bench_ctl_t *ctl);

/* inline defs */

static inline uint64_t bench_tsc_begin(void)
{
#if BENCH_HAVE_TSC
    _mm_lfence(); /* earlier instructions finish before the read */
    uint64_t t = __rdtsc();
    _mm_lfence(); /* the read happens before the timed code starts */
    return t;
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
#endif
}

static inline uint64_t bench_tsc_end(void)
{
#if BENCH_HAVE_RDTSCP
    unsigned aux;
    uint64_t t = __rdtscp(&aux); /* waits for the timed code to finish */
    _mm_lfence();                /* later code does not start before it */
    return t;
#else
    return bench_tsc_begin();
#endif
}

/*
 * The one timed loop both implementations use: `body` writes span i.
 * Deltas above UINT32_MAX cycles (a >1 s preemption) saturate.
 */
#define BENCH_TIMED_LOOP(samples, n, i, body)                                  \
    for (uint64_t i = 0; i < (n); i++) {                                       \
        uint64_t bench__t0 = bench_tsc_begin();                                \
        body;                                                                  \
        uint64_t bench__d = bench_tsc_end() - bench__t0;                       \
        (samples)[i] = bench__d > UINT32_MAX ? UINT32_MAX : (uint32_t)bench__d; \
    }

#endif /* SHOP_PERF_BENCH_HARNESS_H */
