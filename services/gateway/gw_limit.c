/*
 * services/gateway/gw_limit.c - token-bucket rate limits per key (user id,
 * client address) in a bounded 4-way set-associative table (gateway.h).
 */
#include <errno.h>
#include <stdlib.h>

#include "gateway.h"

static uint64_t gw_hash(const char *p, size_t n, uint64_t seed)
{
    uint64_t h = 1469598103934665603ull ^ seed; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 1099511628211ull;
    }
    return h ? h : 1;
}

int gw_limiter_init(gw_limiter_t *l, uint64_t entries, int64_t rate, int64_t burst)
{
    l->slots = calloc(entries, sizeof *l->slots);
    if (l->slots == NULL)
        return -ENOMEM;
    l->mask = entries / 4 - 1;
    l->rate = (double)rate;
    l->burst = (double)burst;
    return 0;
}

/* Takes one token for key.  Returns 0, or the seconds to wait (>= 1). */
unsigned gw_limiter_take(gw_limiter_t *l, const char *key, size_t klen, uint64_t now)
{
    if (l->rate <= 0)
        return 0;
    uint64_t h = gw_hash(key, klen, 0);
    gw_bucket_t *set = &l->slots[(h & l->mask) * 4], *b = NULL, *old = &set[0];
    for (int i = 0; i < 4; i++) {
        if (set[i].hash == h) {
            b = &set[i];
            break;
        }
        if (set[i].last_ns < old->last_ns)
            old = &set[i];
    }
    if (b == NULL) {
        b = old; /* an empty slot has last_ns 0, so it is chosen first */
        b->hash = h;
        b->tokens = l->burst;
        b->last_ns = now;
    }
    double t = b->tokens + (double)(now - b->last_ns) / 1e9 * l->rate;
    b->tokens = t > l->burst ? l->burst : t;
    b->last_ns = now;
    if (b->tokens >= 1.0) {
        b->tokens -= 1.0;
        return 0;
    }
    double wait = (1.0 - b->tokens) / l->rate;
    unsigned s = (unsigned)wait;
    return s < (double)wait ? s + 1 : (s ? s : 1);
}

void gw_limiter_free(gw_limiter_t *l)
{
    free(l->slots);
    l->slots = NULL;
}
