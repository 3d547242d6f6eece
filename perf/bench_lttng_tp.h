/*
 * perf/bench_lttng_tp.h - the LTTng-UST tracepoint provider `shop_bench`,
 * the baseline of `./shop bench ring`.
 *
 * One event, shop_bench:span, with the same payload the ring benchmark
 * writes through core's tracing API: 13 fields.  The six attribute KEYS are
 * part of the event definition (they are the field names, written once in
 * the trace's metadata, never per event); the six VALUES are per-event
 * fields (five strings and one integer), exactly the values our span carries.
 *
 *   trace_id (16 bytes), span_id, parent_id, name, kind, start_ns, end_ns,
 *   http_request_method, http_route, url_path, url_scheme,
 *   http_response_status_code, client_address, status
 *
 * Standard LTTng-UST provider shape: this header is included twice by
 * bench_lttng_tp.c (once with LTTNG_UST_TRACEPOINT_CREATE_PROBES) and once
 * by the bench program (LTTNG_UST_TRACEPOINT_DEFINE there).
 */
#undef LTTNG_UST_TRACEPOINT_PROVIDER
#define LTTNG_UST_TRACEPOINT_PROVIDER shop_bench

#undef LTTNG_UST_TRACEPOINT_INCLUDE
#define LTTNG_UST_TRACEPOINT_INCLUDE "./bench_lttng_tp.h"

#if !defined(SHOP_PERF_BENCH_LTTNG_TP_H) || defined(LTTNG_UST_TRACEPOINT_HEADER_MULTI_READ)
#define SHOP_PERF_BENCH_LTTNG_TP_H

#include <stdint.h>
#include <lttng/tracepoint.h>

#ifndef SHOP_PERF_BENCH_LTTNG_EV_DEFINED
#define SHOP_PERF_BENCH_LTTNG_EV_DEFINED
/* The event's arguments.  LTTng-UST takes at most 10 tracepoint arguments,
 * so the 14 values travel in one struct; the fields below read them. */
typedef struct st_bench_lttng_ev_t {
    const uint8_t *trace_id; /* 16 bytes */
    uint64_t span_id, parent_id;
    const char *name;
    int kind;
    uint64_t start_ns, end_ns; /* unix ns */
    const char *method, *route, *path, *scheme;
    int64_t status_code;
    const char *client;
    int status;
} bench_lttng_ev_t;
#endif

LTTNG_UST_TRACEPOINT_EVENT(
    shop_bench, span,
    LTTNG_UST_TP_ARGS(const bench_lttng_ev_t *, ev),
    LTTNG_UST_TP_FIELDS(
        lttng_ust_field_array(uint8_t, trace_id, ev->trace_id, 16)
        lttng_ust_field_integer_hex(uint64_t, span_id, ev->span_id)
        lttng_ust_field_integer_hex(uint64_t, parent_id, ev->parent_id)
        lttng_ust_field_string(name, ev->name)
        lttng_ust_field_integer(uint8_t, kind, ev->kind)
        lttng_ust_field_integer(uint64_t, start_ns, ev->start_ns)
        lttng_ust_field_integer(uint64_t, end_ns, ev->end_ns)
        lttng_ust_field_string(http_request_method, ev->method)
        lttng_ust_field_string(http_route, ev->route)
        lttng_ust_field_string(url_path, ev->path)
        lttng_ust_field_string(url_scheme, ev->scheme)
        lttng_ust_field_integer(int64_t, http_response_status_code, ev->status_code)
        lttng_ust_field_string(client_address, ev->client)
        lttng_ust_field_integer(uint8_t, status, ev->status)
    )
)

#endif /* SHOP_PERF_BENCH_LTTNG_TP_H */

#include <lttng/tracepoint-event.h>
