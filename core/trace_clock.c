/*
 * core/trace_clock.c - the span clock: wall-clock start times with
 * monotonic durations, without a system call on the span path.
 *
 * Why: two clock_gettime vDSO reads (~20-25 ns each on the dev VM, whose
 * clocksource is the TSC anyway) were ~40% of a span's cost; rdtsc is
 * ~8-10 ns and overlaps with the work around it.
 *
 * How: ticks are TSC cycles when the CPU reports an invariant TSC (cpuid
 * 0x80000007 EDX bit 8: constant rate, runs in every C/P-state, the same on
 * every core of a machine), else CLOCK_MONOTONIC ns.  SHOP_TRACE_CLOCK=system
 * forces clock_gettime, =tsc asks for the TSC (still only when invariant).
 *   - Calibration (per process, at trace_init or first use): the TSC is
 *     read between two CLOCK_MONOTONIC reads (the tightest of a few
 *     brackets) at t0 and ~2 ms later; mult = 2^32 * dns / dticks.  Then it
 *     is refined in the slow path from the same t0 pair whenever the
 *     baseline has grown 4x (8 ms, 32 ms, ... up to ~9 min), so the rate
 *     error falls from ~25 ppm (50 ns of read jitter over 2 ms) to well
 *     under 0.1 ppm after a second.
 *   - Anchors (per thread, initial-exec TLS): (ticks, CLOCK_REALTIME) read
 *     as a pair; wall(t) = anchor.wall + (t - anchor.ticks) * mult >> 32.
 *     A thread re-reads its anchor when it is older than 100 ms, when the
 *     ticks went backwards, or after a new setup (gen).  So an NTP step or
 *     slew of the wall clock reaches new spans within 100 ms.
 *   - Precision: a start time is off from CLOCK_REALTIME by at most the
 *     pair's read jitter (~50 ns) plus rate error x 100 ms: <= ~2.5 us just
 *     after start-up (25 ppm), < 10 ns once refined.  A duration is off by
 *     rate error x duration (25 ppm of a 10 ms span = 250 ns at worst).
 *     Spans are not ordered by start time across a re-anchor finer than that.
 *   - end = start + duration in ticks (never negative: clamped to 0), so an
 *     end is never before its start whatever the wall clock does.
 * fork(): the TSC is machine-wide, so the parent's calibration and the
 * thread's anchor stay right in the child.  Threads: the calibration is
 * read with relaxed atomic loads (one word, any written value is valid);
 * anchors are thread-local.
 */
#include "trace_clock.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

#define CLK_NS_PER_S 1000000000ULL
#define CLK_REANCHOR_NS (100ULL * 1000000ULL) /* anchor age before a re-read */
#define CLK_CAL_NS (2ULL * 1000000ULL)        /* first calibration window */
#define CLK_CAL_MAX_NS (600ULL * CLK_NS_PER_S) /* stop refining past ~10 min */
#define CLK_SYSTEM_MULT (1ULL << 32)

/* gen starts at 1 so a zeroed thread anchor (gen 0) is stale: the first
 * read of every thread takes the slow path, which sets the clock up. */
trace_clock_t trace__clk = {.mult = CLK_SYSTEM_MULT, .reanchor = CLK_REANCHOR_NS, .gen = 1};
_Thread_local trace_clock_anchor_t trace__clk_anchor __attribute__((tls_model("initial-exec")));

/* Calibration base and state (slow path only).  cal_ns is the window the
 * current mult was measured over; refinement swaps it with a CAS so two
 * threads do not both store. */
static struct {
    uint64_t t0;     /* ticks of the base pair */
    uint64_t m0;     /* CLOCK_MONOTONIC ns of the base pair */
    uint64_t cal_ns; /* atomic: window of the current mult; 0 = not refinable */
    uint64_t hz;     /* TSC rate from the first calibration (describe) */
} cal;
static pthread_once_t clk_once = PTHREAD_ONCE_INIT;

int trace__clock_mode_from_env(trace_clock_mode_t *mode, char *err, size_t errlen)
{
    const char *v = getenv("SHOP_TRACE_CLOCK");
    *mode = TRACE_CLOCK_AUTO;
    if (v == NULL || *v == '\0' || strcmp(v, "auto") == 0)
        return 0;
    if (strcmp(v, "tsc") == 0) {
        *mode = TRACE_CLOCK_TSC;
        return 0;
    }
    if (strcmp(v, "system") == 0) {
        *mode = TRACE_CLOCK_SYSTEM;
        return 0;
    }
    if (err && errlen)
        snprintf(err, errlen, "SHOP_TRACE_CLOCK=%.64s: expected tsc, system or auto", v);
    return -EINVAL;
}

static bool tsc_invariant(void)
{
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (__get_cpuid(0x80000000u, &a, &b, &c, &d) == 0 || a < 0x80000007u)
        return false;
    if (__get_cpuid(0x80000007u, &a, &b, &c, &d) == 0)
        return false;
    return (d >> 8) & 1u;
#else
    return false;
#endif
}

#if defined(__x86_64__)
/* A (tsc, CLOCK_MONOTONIC) pair: the TSC read between two monotonic reads,
 * the tightest bracket of 8, the monotonic time taken as its midpoint. */
static void tsc_mono_pair(uint64_t *t, uint64_t *m)
{
    uint64_t best = UINT64_MAX;
    for (int i = 0; i < 8; i++) {
        uint64_t a = trace__mono_ns();
        uint64_t x = __rdtsc();
        uint64_t b = trace__mono_ns();
        if (b - a < best) {
            best = b - a;
            *t = x;
            *m = a + (b - a) / 2;
        }
    }
}
#endif

void trace__clock_setup(trace_clock_mode_t mode)
{
    bool tsc = mode != TRACE_CLOCK_SYSTEM && tsc_invariant();
    uint64_t mult = CLK_SYSTEM_MULT, reanchor = CLK_REANCHOR_NS;
#if defined(__x86_64__)
    if (tsc) {
        uint64_t t0, m0, t1, m1;
        tsc_mono_pair(&t0, &m0);
        do
            tsc_mono_pair(&t1, &m1);
        while (m1 - m0 < CLK_CAL_NS);
        uint64_t dt = t1 - t0, dm = m1 - m0;
        uint64_t hz = (uint64_t)((unsigned __int128)dt * CLK_NS_PER_S / dm);
        if (dt > dm / 16 && hz >= 100000000ULL && hz <= 20000000000ULL) {
            mult = (uint64_t)(((unsigned __int128)dm << 32) / dt);
            reanchor = (uint64_t)((unsigned __int128)CLK_REANCHOR_NS * dt / dm);
            cal.t0 = t0;
            cal.m0 = m0;
            cal.hz = hz;
            __atomic_store_n(&cal.cal_ns, dm, __ATOMIC_RELAXED);
        } else {
            tsc = false; /* a rate no x86 TSC has: do not trust it */
        }
    }
#endif
    if (!tsc)
        __atomic_store_n(&cal.cal_ns, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&trace__clk.mult, mult, __ATOMIC_RELAXED);
    trace__clk.reanchor = reanchor;
    trace__clk.tsc = tsc;
    /* release: the parameters above before the gen that makes threads
     * re-anchor with them (pairs with the acquire load in reanchor) */
    __atomic_store_n(&trace__clk.gen, trace__clk.gen + 1, __ATOMIC_RELEASE);
}

static void clock_once(void)
{
    trace_clock_mode_t mode;
    if (trace__clock_mode_from_env(&mode, NULL, 0) != 0)
        mode = TRACE_CLOCK_AUTO; /* trace_init reports the bad value */
    trace__clock_setup(mode);
}

void trace__clock_init(void) { pthread_once(&clk_once, clock_once); }

#if defined(__x86_64__)
/* Longer baseline, better rate: refit mult from the base pair when the
 * window has grown 4x since the last fit. */
static void refine(void)
{
    uint64_t w = __atomic_load_n(&cal.cal_ns, __ATOMIC_RELAXED);
    if (w == 0 || w >= CLK_CAL_MAX_NS)
        return;
    uint64_t m = trace__mono_ns();
    if (m - cal.m0 < 4 * w)
        return;
    uint64_t t1, m1;
    tsc_mono_pair(&t1, &m1);
    uint64_t dm = m1 - cal.m0, dt = t1 - cal.t0;
    if (dt == 0 || !__atomic_compare_exchange_n(&cal.cal_ns, &w, dm, false, __ATOMIC_RELAXED,
                                                __ATOMIC_RELAXED))
        return; /* another thread refines now */
    uint64_t mult = (uint64_t)(((unsigned __int128)dm << 32) / dt);
    __atomic_store_n(&trace__clk.mult, mult, __ATOMIC_RELAXED);
}
#endif

void trace__clock_reanchor(void)
{
    trace__clock_init(); /* after the first call: one load and compare */
    uint32_t gen = __atomic_load_n(&trace__clk.gen, __ATOMIC_ACQUIRE);
    trace_clock_anchor_t *a = &trace__clk_anchor;
    struct timespec ts;
#if defined(__x86_64__)
    if (trace__clk.tsc) {
        refine();
        /* the realtime read bracketed by two TSC reads, tightest of 4 */
        uint64_t best = UINT64_MAX;
        for (int i = 0; i < 4; i++) {
            uint64_t x = __rdtsc();
            clock_gettime(CLOCK_REALTIME, &ts);
            uint64_t y = __rdtsc();
            if (y - x < best) {
                best = y - x;
                a->ticks = x + (y - x) / 2;
                a->wall = (uint64_t)ts.tv_sec * CLK_NS_PER_S + (uint64_t)ts.tv_nsec;
            }
            if (best < 200)
                break; /* tight enough (< 100 ns at 2 GHz): one pair is the rule */
        }
        a->gen = gen;
        return;
    }
#endif
    a->ticks = trace__mono_ns();
    clock_gettime(CLOCK_REALTIME, &ts);
    a->wall = (uint64_t)ts.tv_sec * CLK_NS_PER_S + (uint64_t)ts.tv_nsec;
    a->gen = gen;
}

int trace__clock_describe(char *out, size_t cap)
{
    if (trace__clk.tsc)
        return snprintf(out, cap, "tsc %.1f MHz", (double)cal.hz / 1e6);
    return snprintf(out, cap, "system");
}
