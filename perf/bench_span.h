/*
 * perf/bench_span.h - the one span payload both span-write benchmarks
 * write: an HTTP server span as the gateway ends it for POST /api/orders
 * (semantic conventions v1.37.0), 6 attributes and a status.
 */
#ifndef SHOP_PERF_BENCH_SPAN_H
#define SHOP_PERF_BENCH_SPAN_H

#define BENCH_SPAN_NAME "POST /api/orders"
#define BENCH_SPAN_KIND 2 /* SERVER (OTLP SpanKind numbering) */
#define BENCH_SPAN_STATUS 1 /* OK */

#define BENCH_K_METHOD "http.request.method"
#define BENCH_V_METHOD "POST"
#define BENCH_K_ROUTE "http.route"
#define BENCH_V_ROUTE "/api/orders"
#define BENCH_K_PATH "url.path"
#define BENCH_V_PATH "/api/orders"
#define BENCH_K_SCHEME "url.scheme"
#define BENCH_V_SCHEME "http"
#define BENCH_K_STATUS_CODE "http.response.status_code"
#define BENCH_V_STATUS_CODE 201
#define BENCH_K_CLIENT "client.address"
#define BENCH_V_CLIENT "10.0.3.17"

#endif /* SHOP_PERF_BENCH_SPAN_H */
