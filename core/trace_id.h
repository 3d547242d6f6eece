/*
 * core/trace_id.h - internals of the id generator (core/trace_id.c).
 * The public id API is in core.h.
 */
#ifndef SHOP_CORE_TRACE_ID_H
#define SHOP_CORE_TRACE_ID_H

#include <stdint.h>

typedef struct st_trace_id_rng_t {
    uint64_t s[4];
    uint32_t gen; /* the fork generation this state was seeded in */
} trace_id_rng_t;

/* initial-exec: core is a static library built -fPIC; the default model
 * would make every access a __tls_get_addr call on the span path. */
extern _Thread_local trace_id_rng_t trace_id__rng __attribute__((tls_model("initial-exec")));
/* Bumped in the atfork child handler: every thread reseeds. */
extern uint32_t trace_id__fork_gen;

/* Next 64 random bits of the calling thread's generator (seeded lazily). */
uint64_t trace_id__next(void);
/* (Re)seeds the calling thread's generator. */
void trace_id__seed(void);

/* trace_id__next inline for the span path: xoshiro256++ (Blackman & Vigna). */
static inline uint64_t trace_id__next_inline(void)
{
    if (__builtin_expect(trace_id__rng.gen != trace_id__fork_gen, 0))
        trace_id__seed();
    uint64_t *s = trace_id__rng.s;
    uint64_t x = s[0] + s[3];
    uint64_t r = ((x << 23) | (x >> 41)) + s[0];
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = (s[3] << 45) | (s[3] >> 19);
    return r;
}

#endif
