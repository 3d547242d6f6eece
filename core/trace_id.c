/*
 * core/trace_id.c - trace and span ids.
 *
 * A per-thread xoshiro256++ generator (Blackman & Vigna): 4 words of state,
 * a few ALU operations per 64 bits, no lock.  Each thread seeds lazily from
 * getrandom() (mixed with the thread's address and the clock should
 * getrandom be unavailable).  fork() copies the state into the child, which
 * would then repeat the parent's ids: a pthread_atfork child handler bumps a
 * process-wide generation so every thread of the child reseeds before its
 * next id.  An all-zero id is invalid in W3C and OTLP, so we draw again.
 */
#include "core.h"
#include "trace_id.h"

#include <pthread.h>
#include <unistd.h>
#include <time.h>
#if __has_include(<sys/random.h>)
#include <sys/random.h>
#endif

/* initial-exec (trace_id.h); the span path inlines trace_id__next. */
_Thread_local trace_id_rng_t trace_id__rng __attribute__((tls_model("initial-exec")));
#define rng trace_id__rng
/* Starts at 1 so a zeroed thread-local state (gen 0) seeds on first use.
 * Written only in the atfork child handler (one thread exists then). */
uint32_t trace_id__fork_gen = 1;
#define fork_gen trace_id__fork_gen
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void trace_id__atfork_child(void) { fork_gen++; }

static void trace_id__register_atfork(void)
{
    pthread_atfork(NULL, NULL, trace_id__atfork_child);
}

/* splitmix64: spreads a weak seed over the state words. */
static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

__attribute__((noinline)) void trace_id__seed(void)
{
    pthread_once(&atfork_once, trace_id__register_atfork);
    uint64_t seed[4] = {0, 0, 0, 0};
    size_t got = 0;
#if __has_include(<sys/random.h>)
    while (got < sizeof seed) {
        ssize_t n = getrandom((uint8_t *)seed + got, sizeof seed - got, GRND_NONBLOCK);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
#endif
    /* Always mix in clock, address and the old state: distinct even if
     * getrandom failed (early boot) and distinct from the parent after fork. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t x = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
    x ^= (uint64_t)(uintptr_t)&rng ^ ((uint64_t)getpid() << 32);
    for (int i = 0; i < 4; i++)
        rng.s[i] = seed[i] ^ rng.s[i] ^ splitmix64(&x);
    if ((rng.s[0] | rng.s[1] | rng.s[2] | rng.s[3]) == 0)
        rng.s[0] = 1; /* xoshiro's one forbidden state */
    rng.gen = fork_gen;
}

uint64_t trace_id__next(void) { return trace_id__next_inline(); }

void trace_id_new(uint8_t out[TRACE_ID_SIZE])
{
    uint64_t a, b;
    do {
        a = trace_id__next();
        b = trace_id__next();
    } while ((a | b) == 0);
    memcpy(out, &a, 8);
    memcpy(out + 8, &b, 8);
}

void trace_id_new_span(uint8_t out[TRACE_SPAN_ID_SIZE])
{
    uint64_t a;
    do
        a = trace_id__next();
    while (a == 0);
    memcpy(out, &a, 8);
}

void trace_id_hex(const uint8_t *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
}

static inline int unhex1(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1; /* upper case is invalid in W3C headers */
}

int trace_id_unhex(const char *in, size_t n, uint8_t *out)
{
    for (size_t i = 0; i < n; i++) {
        int hi = unhex1(in[2 * i]), lo = unhex1(in[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

bool trace_id_is_valid(const uint8_t *id, size_t n)
{
    /* the two sizes ids have, a word at a time: the exporter checks three
     * ids per span (the byte loop was ~4 % of its instructions) */
    if (n == TRACE_SPAN_ID_SIZE || n == TRACE_ID_SIZE) {
        uint64_t a, b = 0;
        memcpy(&a, id, 8);
        if (n == TRACE_ID_SIZE)
            memcpy(&b, id + 8, 8);
        return (a | b) != 0;
    }
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++)
        acc |= id[i];
    return acc != 0;
}
