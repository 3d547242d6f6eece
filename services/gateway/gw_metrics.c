/*
 * services/gateway/gw_metrics.c - the gateway's counters and the /metrics
 * route (Prometheus text format 0.0.4): requests by route and status, a
 * latency histogram per route, in-flight requests, rate-limited requests,
 * connections.  One loop thread owns every counter: plain increments.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

/* Status codes counted in /metrics; others fall into "other". */
static const int gw_codes[] = {100, 200, 201, 400, 401, 403, 404, 405, 408, 409, 411, 413, 417,
                               429, 431, 500, 501, 503, 504, 505, 0};
_Static_assert(sizeof gw_codes / sizeof gw_codes[0] == GW_NCODES, "GW_NCODES in gateway.h");
static const double gw_buckets_ms[] = {1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000};
_Static_assert(sizeof gw_buckets_ms / sizeof gw_buckets_ms[0] == GW_NBUCKETS,
               "GW_NBUCKETS in gateway.h");

static int gw_code_idx(int status)
{
    for (size_t i = 0; i + 1 < GW_NCODES; i++)
        if (gw_codes[i] == status)
            return (int)i;
    return (int)GW_NCODES - 1;
}

void gw_metrics_record(gw_t *gw, gw_route_t route, int status, uint64_t t0)
{
    gw->req_count[route][gw_code_idx(status)]++;
    double ms = (double)(loop_now_ns() - t0) / 1e6;
    size_t b = 0;
    while (b < GW_NBUCKETS && ms > gw_buckets_ms[b])
        b++;
    gw->lat[route][b]++;
    gw->lat_sum[route] += ms;
}

void gw_metrics_serve(gw_req_t *r)
{
    gw_t *gw = r->conn->gw;
    size_t cap = 65536, n = 0;
    char *b = GW_MALLOC(cap);
#define GW_P(...)                                                                                  \
    do {                                                                                           \
        int k_ = snprintf(b + n, cap - n, __VA_ARGS__);                                            \
        if (k_ > 0 && (size_t)k_ < cap - n)                                                        \
            n += (size_t)k_;                                                                       \
    } while (0)
    GW_P("# HELP gateway_requests_total HTTP requests answered, by route and status.\n"
         "# TYPE gateway_requests_total counter\n");
    for (int rt = 0; rt < GW_R__COUNT; rt++)
        for (size_t i = 0; i < GW_NCODES; i++) {
            if (gw->req_count[rt][i] == 0)
                continue;
            char code[8];
            if (gw_codes[i])
                snprintf(code, sizeof code, "%d", gw_codes[i]);
            else
                strcpy(code, "other");
            GW_P("gateway_requests_total{route=\"%s\",code=\"%s\"} %" PRIu64 "\n",
                 rt == GW_R_NONE ? "unmatched" : gw_route_tmpl[rt], code, gw->req_count[rt][i]);
        }
    GW_P("# HELP gateway_request_duration_ms Time from a request's head to its response.\n"
         "# TYPE gateway_request_duration_ms histogram\n");
    for (int rt = 0; rt < GW_R__COUNT; rt++) {
        uint64_t cum = 0;
        const char *name = rt == GW_R_NONE ? "unmatched" : gw_route_tmpl[rt];
        for (size_t i = 0; i <= GW_NBUCKETS; i++) {
            cum += gw->lat[rt][i];
            if (i < GW_NBUCKETS)
                GW_P("gateway_request_duration_ms_bucket{route=\"%s\",le=\"%g\"} %" PRIu64 "\n",
                     name, gw_buckets_ms[i], cum);
            else
                GW_P("gateway_request_duration_ms_bucket{route=\"%s\",le=\"+Inf\"} %" PRIu64 "\n",
                     name, cum);
        }
        GW_P("gateway_request_duration_ms_sum{route=\"%s\"} %.3f\n", name, gw->lat_sum[rt]);
        GW_P("gateway_request_duration_ms_count{route=\"%s\"} %" PRIu64 "\n", name, cum);
    }
    GW_P("# TYPE gateway_requests_in_flight gauge\ngateway_requests_in_flight %" PRIu64 "\n",
         gw->inflight);
    GW_P("# TYPE gateway_rate_limited_total counter\ngateway_rate_limited_total %" PRIu64 "\n",
         gw->rate_limited);
    GW_P("# TYPE gateway_connections_open gauge\ngateway_connections_open %" PRIu64 "\n",
         gw->conns);
    GW_P("# TYPE gateway_connections_total counter\ngateway_connections_total %" PRIu64 "\n",
         gw->conns_total);
    GW_P("# TYPE gateway_connections_refused_total counter\n"
         "gateway_connections_refused_total %" PRIu64 "\n", gw->conns_refused);
#undef GW_P
    gw_req_finish(r, 200, "text/plain; version=0.0.4", b, n, NULL);
    free(b);
}

