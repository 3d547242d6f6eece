/*
 * tests/exporter/exp_producer.c - a producer process for the exporter's
 * integration test: writes N spans through core's trace API into the ring.
 *
 * Usage: exp_producer RING_NAME SERVICE_NAME N
 * Span names are "SERVICE_NAME-<i>", i = 0..N-1; each has two attributes
 * and every tenth an event.  N should fit one lane (default 1 MiB holds
 * ~5000 of them): the test expects no FULL drops.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core.h"
#include "ring.h"

static const trace_scope_t scope = TRACE_SCOPE("shop.test.producer", "0.1.0");

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s RING_NAME SERVICE_NAME N\n", argv[0]);
        return 2;
    }
    char err[256] = "";
    trace_options_t o = {.service_name = argv[2], .ring_name = argv[1], .create_ring = true};
    if (trace_init(&o, err, sizeof err) != 0) {
        fprintf(stderr, "exp_producer: trace_init: %s\n", err);
        return 1;
    }
    long n = atol(argv[3]);
    char name[128];
    for (long i = 0; i < n; i++) {
        int nl = snprintf(name, sizeof name, "%s-%ld", argv[2], i);
        trace_span_t s;
        trace_span_start(&s, &scope, name, (size_t)nl, TRACE_KIND_INTERNAL, NULL);
        trace_span_set_int(&s, "test.index", i);
        trace_span_set_str(&s, "test.producer", argv[2]);
        if (i % 10 == 0)
            trace_span_add_event(&s, "tick", 4, 0, NULL, 0);
        trace_span_end(&s);
    }
    trace_shutdown();
    return 0;
}
