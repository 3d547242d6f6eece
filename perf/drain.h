/*
 * perf/drain.h - the benchmarks' span ring consumer loop (ring_drain and
 * bench_grpc_server's drain child): peek, full record decode and item walk,
 * release, as the exporter's reader does, sending nothing anywhere.  Polls
 * every 2 ms when the ring is empty, until *stop; then prints what it drained
 * and the ring's counters on stderr (prefixed by who) and closes the ring.
 */
#ifndef SHOP_PERF_DRAIN_H
#define SHOP_PERF_DRAIN_H

#include <signal.h>
#include <stdio.h>
#include <time.h>

#include "core.h"

#define PERF_DRAIN_BATCH 256

__attribute__((unused)) static void perf_drain(ring_t *r, const char *who, volatile sig_atomic_t *stop)
{
    uint64_t ok = 0, bad = 0;
    ring_record_t recs[PERF_DRAIN_BATCH];
    for (;;) {
        int n = ring_consumer_peek(r, recs, PERF_DRAIN_BATCH);
        if (n > 0) {
            uint64_t nbad = 0;
            for (int i = 0; i < n; i++) {
                span_record_t sr;
                span_record_item_t it;
                uint32_t off = 0;
                int irc = span_record_decode(recs[i].data, recs[i].len, &sr);
                if (irc == 0)
                    while ((irc = span_record_next(sr.items, sr.items_len, &off, &it)) == 1) {
                    }
                if (irc != 0)
                    nbad++;
            }
            ring_consumer_release(r, (uint64_t)n, (uint64_t)n - nbad, RING_DROP_CORRUPT);
            ok += (uint64_t)n - nbad;
            bad += nbad;
            continue;
        }
        if (*stop)
            break;
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    ring_stats_t st;
    ring_stats(r, &st);
    fprintf(stderr,
            "%s: %llu spans drained, %llu invalid; ring: written %llu, exported %llu, "
            "dropped full %llu, in ring %llu\n",
            who, (unsigned long long)ok, (unsigned long long)bad, (unsigned long long)st.written,
            (unsigned long long)st.exported, (unsigned long long)st.dropped[RING_DROP_FULL],
            (unsigned long long)st.in_ring);
    ring_close(r);
}

#endif
