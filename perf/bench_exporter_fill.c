/*
 * perf/bench_exporter_fill.c - a producer process for the exporter
 * benchmark (perf/bench-exporter.sh): writes N spans through core's
 * tracing API into the ring, the ring benchmark's POST /api/orders server
 * span (perf/bench_span.h: six attributes, remote parent, status OK), and
 * exits.  Creates the ring with the given geometry when it is absent.
 *
 *   bench_exporter_fill RING_NAME SERVICE N LANES LANE_SIZE
 *   e.g.  bench_exporter_fill /shop-bench-exp gateway 500000 8 268435456
 *
 * Prints "wrote N"; spans a full ring refused show in `shop-ring stat`.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_span.h"
#include "core.h"
#include "ring.h"

#define LIT(s) (s), (sizeof(s) - 1)

static const trace_scope_t scope = TRACE_SCOPE("shop.gateway.http", "0.1.0");

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: bench_exporter_fill RING_NAME SERVICE N LANES LANE_SIZE\n");
        return 2;
    }
    ring_geometry_t g = {.lanes = (uint32_t)atoi(argv[4]), .max_record = 16384,
                         .lane_size = strtoull(argv[5], NULL, 10)};
    char err[256];
    trace_sampler_t on = {.kind = TRACE_SAMPLER_ALWAYS_ON};
    trace_options_t o = {.service_name = argv[2], .service_version = "1.0.0", .deployment_env = "bench",
                         .ring_name = argv[1], .geometry = &g, .create_ring = true, .sampler = &on};
    if (trace_init(&o, err, sizeof err) != 0) {
        fprintf(stderr, "bench_exporter_fill: trace_init(%s): %s\n", argv[1], err);
        return 1;
    }
    long n = atol(argv[3]);
    trace_context_t parent = {.flags = TRACE_FLAG_SAMPLED, .is_remote = true};
    for (long i = 0; i < n; i++) {
        if (i % 16 == 0) { /* a new trace every 16 spans */
            trace_id_new(parent.trace_id);
            trace_id_new_span(parent.span_id);
        }
        trace_span_t s;
        trace_span_start(&s, &scope, LIT(BENCH_SPAN_NAME), TRACE_KIND_SERVER, &parent);
        trace_span_set_str_n(&s, LIT(BENCH_K_METHOD), LIT(BENCH_V_METHOD));
        trace_span_set_str_n(&s, LIT(BENCH_K_ROUTE), LIT(BENCH_V_ROUTE));
        trace_span_set_str_n(&s, LIT(BENCH_K_PATH), LIT(BENCH_V_PATH));
        trace_span_set_str_n(&s, LIT(BENCH_K_SCHEME), LIT(BENCH_V_SCHEME));
        trace_span_set_int_n(&s, LIT(BENCH_K_STATUS_CODE), BENCH_V_STATUS_CODE);
        trace_span_set_str_n(&s, LIT(BENCH_K_CLIENT), LIT(BENCH_V_CLIENT));
        trace_span_set_status(&s, TRACE_STATUS_OK, NULL, 0);
        trace_span_end(&s);
    }
    printf("wrote %ld\n", n);
    trace_shutdown();
    return 0;
}
