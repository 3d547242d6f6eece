/*
 * core/trace_clock.h - internals of the span clock (core/trace_clock.c):
 * wall-clock start times with monotonic durations, read from the TSC when
 * the CPU has an invariant one, else from clock_gettime.  The public API is
 * trace_now_ns() in core.h.
 *
 * Ticks are either TSC cycles (rdtsc) or CLOCK_MONOTONIC ns; one mult
 * converts both: ns = ticks * mult >> 32 (mult = 2^32 for the system
 * clock).  Each thread keeps an anchor (ticks, CLOCK_REALTIME ns) and
 * re-reads it when the anchor is older than ~100 ms (or the ticks went
 * backwards, or the calibration changed), so a step or slew of the wall
 * clock shows up in new spans within 100 ms.
 */
#ifndef SHOP_CORE_TRACE_CLOCK_H
#define SHOP_CORE_TRACE_CLOCK_H

#include "core.h"

#include <time.h>
#if defined(__x86_64__)
#include <x86intrin.h>
#endif

/* Process-wide clock parameters.  Written by trace__clock_setup (under a
 * pthread_once, or single-threaded by contract in tests) and by the
 * calibration refinement in the slow path (relaxed atomic stores of one
 * word each: any value written is a valid calibration). */
typedef struct st_trace_clock_t {
    uint64_t mult;     /* ns = ticks * mult >> 32; atomic (refinement) */
    uint64_t reanchor; /* ticks after which a thread re-reads its anchor (~100 ms) */
    uint32_t gen;      /* bumped by each setup: thread anchors of older gens are stale */
    uint8_t tsc;       /* 1: ticks are rdtsc cycles; 0: CLOCK_MONOTONIC ns */
} trace_clock_t;

/* A thread's anchor: wall-clock ns `wall` was read at tick count `ticks`. */
typedef struct st_trace_clock_anchor_t {
    uint64_t ticks;
    uint64_t wall;
    uint32_t gen; /* == trace__clk.gen when valid; 0 = never anchored */
} trace_clock_anchor_t;

typedef enum {
    TRACE_CLOCK_AUTO = 0, /* the TSC when invariant, else the system clock */
    TRACE_CLOCK_TSC,      /* the TSC if invariant (else the system clock) */
    TRACE_CLOCK_SYSTEM,   /* clock_gettime always */
} trace_clock_mode_t;

extern trace_clock_t trace__clk;
extern _Thread_local trace_clock_anchor_t trace__clk_anchor
    __attribute__((tls_model("initial-exec")));

/* Parses SHOP_TRACE_CLOCK ("tsc", "system", "auto"; unset or empty = auto).
 * Returns 0 and *mode, or -EINVAL with err naming the variable and value. */
int trace__clock_mode_from_env(trace_clock_mode_t *mode, char *err, size_t errlen);
/* Sets the clock up once per process (mode from SHOP_TRACE_CLOCK; a bad
 * value means auto here, trace_init refuses it).  Calibrates the TSC against
 * CLOCK_MONOTONIC over ~2 ms.  Idempotent, thread-safe. */
void trace__clock_init(void);
/* Sets the clock up again in `mode` (tests; no thread may be tracing and
 * no span may be open: their ticks would mean the old clock). */
void trace__clock_setup(trace_clock_mode_t mode);
/* Slow path: sets up if needed and re-reads this thread's anchor (one
 * clock_gettime pair), refining the TSC calibration when enough time has
 * passed since the last one. */
void trace__clock_reanchor(void);
/* One line for trace_describe: "tsc 2600.0 MHz" or "system". */
int trace__clock_describe(char *out, size_t cap);

/* ------------------------------------------------------------ inline defs */

static inline uint64_t trace__mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static inline uint64_t trace__ticks(void)
{
#if defined(__x86_64__)
    /* rdtsc, not rdtscp: span times need no ordering against the
     * instructions around them finer than the ~10 ns the read costs. */
    if (__builtin_expect(trace__clk.tsc, 1))
        return __rdtsc();
#endif
    return trace__mono_ns();
}

/* ns in `d` ticks (any d: the 128-bit product cannot overflow). */
static inline uint64_t trace__ticks_ns(uint64_t d)
{
    uint64_t m = __atomic_load_n(&trace__clk.mult, __ATOMIC_RELAXED);
    return (uint64_t)(((unsigned __int128)d * m) >> 32);
}

/* Wall-clock now (unix ns) and the tick count it was derived from. */
static inline uint64_t trace__clock_now(uint64_t *ticks)
{
    trace_clock_anchor_t *a = &trace__clk_anchor;
    uint64_t t = trace__ticks();
    uint64_t d = t - a->ticks; /* huge when the ticks went backwards: re-anchor */
    if (__builtin_expect(a->gen != trace__clk.gen || d > trace__clk.reanchor, 0)) {
        trace__clock_reanchor();
        t = a->ticks;
        d = 0;
    }
    *ticks = t;
    return a->wall + trace__ticks_ns(d);
}

/* ns from tick count t0 to now; 0 if the ticks went backwards (another
 * CPU's TSC a little behind): an end is never before its start. */
static inline uint64_t trace__clock_since(uint64_t t0)
{
    int64_t d = (int64_t)(trace__ticks() - t0);
    return d > 0 ? trace__ticks_ns((uint64_t)d) : 0;
}

#endif
