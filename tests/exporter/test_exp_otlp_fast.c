/*
 * tests/exporter/test_exp_otlp_fast.c - exporter/otlp.c's direct encoder
 * (otlp_encode, wire bytes written straight from the records) against the
 * protobuf-c reference (otlp_encode_pbc, a message tree packed by
 * protobuf-c), over many generated batches: every attribute type and
 * arrays of each, repeated keys (last value wins), events and links with
 * attributes, statuses, dropped counts (low span limits), tracestate,
 * remote and local parents, several lanes (resources, one without
 * metadata) and scopes, garbage records.  For each batch:
 *   - the two encodings are the same bytes;
 *   - protobuf-c unpacks the direct encoding, and packing that message
 *     again gives the reference bytes (the same message, field by field).
 * Then both encoders' throughput (tap diag, informational).
 */
#include <stdlib.h>
#include <string.h>

#include "exporter.h"
#include "otlp_proto.h"
#include "tap.h"

#define LANES 4
#define BATCH_MAX 600
#define REC_CAP 8192

static uint8_t resblob[LANES][1024];
static int reslen[LANES];
static uint8_t (*recbuf)[REC_CAP];
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    uint64_t x = rng_state; /* xorshift64* */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545f4914f6cdd1dull;
}

static uint32_t rndn(uint32_t n)
{
    return (uint32_t)(rnd() % n);
}

static int meta(void *arg, uint32_t lane, const void **blob)
{
    (void)arg;
    if (lane >= LANES || reslen[lane] <= 0)
        return -2;
    *blob = resblob[lane];
    return reslen[lane];
}

static const trace_scope_t scopes[] = {TRACE_SCOPE("shop.http", "1.0"), TRACE_SCOPE("shop.grpc", "1.0"),
                                       TRACE_SCOPE("shop.grpc", "2.0"), TRACE_SCOPE("shop.db", ""),
                                       TRACE_SCOPE("", "")};
static const char *const keys[] = {"http.request.method", "http.route", "k", "rpc.system", "db.query.text",
                                   "x", "error.type", "n"};
static const char *const words[] = {"", "GET", "POST /api/orders", "a somewhat longer string value here",
                                    "\xc3\xa9t\xc3\xa9", "SELECT * FROM products WHERE id = $1"};

/* One random attribute; arrays point into static storage filled here. */
static void rand_attr(trace_attr_t *a)
{
    static trace_str_t sa[6];
    static int64_t ia[40];
    static double da[6];
    static bool ba[20];
    const char *k = keys[rndn(8)];
    *a = (trace_attr_t){.key = k, .key_len = strlen(k)};
    switch (rndn(8)) {
    case 0:
    case 1: {
        const char *w = words[rndn(6)];
        a->type = TRACE_ATTR_STRING;
        a->v.s = (trace_str_t){w, strlen(w)};
        break;
    }
    case 2:
        a->type = TRACE_ATTR_BOOL;
        a->v.b = rndn(2);
        break;
    case 3: { /* small, large and negative ints */
        static const int64_t iv[] = {0, 1, 127, 128, -1, INT64_MIN, INT64_MAX, 300000};
        a->type = TRACE_ATTR_INT;
        a->v.i = iv[rndn(8)];
        break;
    }
    case 4:
        a->type = TRACE_ATTR_DOUBLE;
        a->v.d = rndn(3) == 0 ? 0.0 : (double)(int64_t)rnd() / 7.0;
        break;
    case 5:
        a->type = TRACE_ATTR_STRING_ARRAY;
        a->count = rndn(6);
        for (size_t i = 0; i < a->count; i++) {
            const char *w = words[rndn(6)];
            sa[i] = (trace_str_t){w, strlen(w)};
        }
        a->v.sa = sa;
        break;
    case 6:
        a->type = rndn(2) ? TRACE_ATTR_INT_ARRAY : TRACE_ATTR_BOOL_ARRAY;
        a->count = rndn(2) ? rndn(4) : rndn(20);
        for (size_t i = 0; i < a->count; i++) {
            ia[i] = (int64_t)rnd() >> rndn(64);
            ba[i] = rndn(2);
        }
        a->v.ia = ia;
        if (a->type == TRACE_ATTR_BOOL_ARRAY)
            a->v.ba = ba;
        break;
    default:
        a->type = TRACE_ATTR_DOUBLE_ARRAY;
        a->count = rndn(6);
        for (size_t i = 0; i < a->count; i++)
            da[i] = (double)rndn(1000) / 8.0;
        a->v.da = da;
        break;
    }
}

/* A random span into recbuf[i]; returns the record length. */
static int rand_span(int i)
{
    trace_span_t s;
    trace_context_t parent = {.flags = (uint8_t)rndn(2), .is_remote = rndn(2)};
    for (int k = 0; k < 16; k++)
        parent.trace_id[k] = (uint8_t)rnd();
    for (int k = 0; k < 8; k++)
        parent.span_id[k] = (uint8_t)(rnd() | 1);
    static const char ts[] = "vendor=abc,other=1";
    if (rndn(4) == 0) {
        parent.tracestate = ts;
        parent.tracestate_len = (uint16_t)(sizeof ts - 1);
    }
    char name[64];
    int nl = snprintf(name, sizeof name, "span %u", rndn(1000));
    trace_span_start(&s, &scopes[rndn(5)], name, (size_t)nl, (trace_kind_t)rndn(6),
                     rndn(3) ? &parent : NULL);
    uint32_t na = rndn(4) == 0 ? rndn(40) : rndn(10); /* limit 24: dropped counts */
    trace_attr_t a;
    for (uint32_t k = 0; k < na; k++) {
        rand_attr(&a);
        trace_span_set_attr(&s, &a);
    }
    uint32_t ne = rndn(4) == 0 ? rndn(9) : rndn(2); /* limit 5 */
    for (uint32_t k = 0; k < ne; k++) {
        trace_attr_t ea[8];
        uint32_t nea = rndn(8); /* limit 4 */
        for (uint32_t j = 0; j < nea; j++)
            rand_attr(&ea[j]);
        const char *en = words[rndn(6)];
        trace_span_add_event(&s, en, strlen(en), rndn(2) ? 1700000000000000000ull + rnd() % 1000000 : 0,
                             ea, nea);
        if (rndn(3) == 0) { /* span attributes between events */
            rand_attr(&a);
            trace_span_set_attr(&s, &a);
        }
    }
    uint32_t nln = rndn(3) == 0 ? rndn(6) : 0; /* limit 3 */
    for (uint32_t k = 0; k < nln; k++) {
        trace_context_t l = parent;
        l.flags = (uint8_t)rndn(3);
        l.is_remote = false;
        trace_attr_t la[6];
        uint32_t nla = rndn(6); /* limit 3 */
        for (uint32_t j = 0; j < nla; j++)
            rand_attr(&la[j]);
        trace_span_add_link(&s, &l, la, nla);
    }
    switch (rndn(4)) {
    case 1:
        trace_span_set_status(&s, TRACE_STATUS_OK, NULL, 0);
        break;
    case 2:
        trace_span_set_status(&s, TRACE_STATUS_ERROR, "boom: it broke", 14);
        break;
    case 3:
        trace_span_set_status(&s, TRACE_STATUS_ERROR, NULL, 0);
        break;
    default:
        break;
    }
    return trace_span_end_into(&s, 0, recbuf[i], REC_CAP);
}

typedef Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceRequest req_t;

int main(void)
{
    char err[256] = "";
    trace_limits_t lim = {.attr_count = 24, .attr_value_len = 1000, .event_count = 5, .link_count = 3,
                          .event_attr_count = 4, .link_attr_count = 3};
    trace_sampler_t on = {.kind = TRACE_SAMPLER_ALWAYS_ON};
    trace_options_t o = {.service_name = "otlp-fast-test", .no_ring = true, .limits = &lim, .sampler = &on};
    if (!tap_check(trace_init(&o, err, sizeof err) == 0, "trace_init: %s", err))
        return tap_done();
    recbuf = malloc((size_t)BATCH_MAX * REC_CAP);
    /* lanes 0-2 have resources (lane 1 with a repeated key), lane 3 none */
    trace_attr_t r0[] = {{.key = "service.name", .key_len = 12, .type = TRACE_ATTR_STRING, .v.s = {"svc-zero", 8}},
                         {.key = "process.pid", .key_len = 11, .type = TRACE_ATTR_INT, .v.i = 4242},
                         {.key = "host.name", .key_len = 9, .type = TRACE_ATTR_STRING, .v.s = {"h", 1}}};
    trace_attr_t r1[] = {{.key = "service.name", .key_len = 12, .type = TRACE_ATTR_STRING, .v.s = {"one", 3}},
                         {.key = "deployment.environment.name", .key_len = 27, .type = TRACE_ATTR_STRING, .v.s = {"t", 1}},
                         {.key = "service.name", .key_len = 12, .type = TRACE_ATTR_STRING, .v.s = {"svc-one", 7}}};
    trace_attr_t r2[] = {{.key = "service.name", .key_len = 12, .type = TRACE_ATTR_STRING, .v.s = {"", 0}}};
    reslen[0] = span_resource_encode(r0, 3, resblob[0], sizeof resblob[0]);
    reslen[1] = span_resource_encode(r1, 3, resblob[1], sizeof resblob[1]);
    reslen[2] = span_resource_encode(r2, 1, resblob[2], sizeof resblob[2]);
    tap_check(reslen[0] > 0 && reslen[1] > 0 && reslen[2] > 0, "resources encoded");

    otlp_encoder_t *fast = otlp_encoder_new(), *ref = otlp_encoder_new();
    static ring_record_t recs[BATCH_MAX];
    uint8_t *copy = NULL;
    size_t copy_cap = 0;
    int batches = 300, same = 0, repack = 0, badsame = 0;
    uint64_t spans = 0, attrs = 0, events = 0, links = 0, dropped = 0, errors = 0;
    for (int b = 0; b < batches; b++) {
        uint32_t n = b < 10 ? (uint32_t)b : 1 + rndn(b % 10 == 0 ? BATCH_MAX : 80);
        for (uint32_t i = 0; i < n; i++) {
            int len = rand_span((int)i);
            if (rndn(50) == 0) { /* garbage */
                memset(recbuf[i], 0x5a, 120);
                len = 120;
            }
            recs[i] = (ring_record_t){recbuf[i], (uint32_t)len, rndn(LANES), i};
            span_record_t r;
            if (span_record_decode(recbuf[i], (size_t)len, &r) == 0) {
                spans++;
                attrs += r.n_attrs;
                events += r.n_events;
                links += r.n_links;
                dropped += r.dropped_attrs + r.dropped_events + r.dropped_links;
                errors += r.status == TRACE_STATUS_ERROR;
            }
        }
        const uint8_t *fo, *ro;
        uint64_t fbad, rbad;
        long fl = otlp_encode(fast, recs, n, meta, NULL, &fo, &fbad);
        if (fl > 0 && (size_t)fl > copy_cap) {
            copy_cap = (size_t)fl * 2;
            copy = realloc(copy, copy_cap);
        }
        if (fl > 0)
            memcpy(copy, fo, (size_t)fl);
        long rl = otlp_encode_pbc(ref, recs, n, meta, NULL, &ro, &rbad);
        if (fl == rl && fl >= 0 && (fl == 0 || memcmp(copy, ro, (size_t)fl) == 0))
            same++;
        else
            tap_diag("batch %d (%u records): direct %ld bytes, protobuf-c %ld bytes", b, n, fl, rl);
        badsame += fbad == rbad;
        req_t *req = opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(
            NULL, fl > 0 ? (size_t)fl : 0, copy);
        if (req) {
            size_t sz = opentelemetry__proto__collector__trace__v1__export_trace_service_request__get_packed_size(req);
            uint8_t *rp = malloc(sz + 1);
            size_t w = opentelemetry__proto__collector__trace__v1__export_trace_service_request__pack(req, rp);
            repack += (long)w == rl && (w == 0 || memcmp(rp, ro, w) == 0);
            free(rp);
            opentelemetry__proto__collector__trace__v1__export_trace_service_request__free_unpacked(req, NULL);
        }
    }
    tap_check(same == batches, "direct and protobuf-c encodings are the same bytes: %d of %d batches", same,
              batches);
    tap_check(repack == batches, "protobuf-c unpacks the direct encoding into the reference message: %d of %d",
              repack, batches);
    tap_check(badsame == batches, "same count of bad records left out: %d of %d", badsame, batches);
    tap_check(spans > 10000 && attrs > spans && events > 100 && links > 100 && dropped > 100 && errors > 100,
              "coverage: %llu spans, %llu attributes, %llu events, %llu links, %llu dropped, %llu errors",
              (unsigned long long)spans, (unsigned long long)attrs, (unsigned long long)events,
              (unsigned long long)links, (unsigned long long)dropped, (unsigned long long)errors);

    /* Throughput, informational: 512-span batches of small server spans. */
    for (int i = 0; i < 512; i++) {
        trace_span_t s;
        static const trace_scope_t sc = TRACE_SCOPE("shop.gateway", "0.1.0");
        trace_span_start(&s, &sc, "POST /api/orders", 16, TRACE_KIND_SERVER, NULL);
        trace_span_set_str(&s, "http.request.method", "POST");
        trace_span_set_str(&s, "http.route", "/api/orders");
        trace_span_set_str(&s, "url.path", "/api/orders");
        trace_span_set_str(&s, "url.scheme", "http");
        trace_span_set_int(&s, "http.response.status_code", 201);
        trace_span_set_str(&s, "client.address", "10.0.0.7");
        trace_span_set_str(&s, "user_agent.original", "bench/1.0");
        int len = trace_span_end_into(&s, 0, recbuf[i], REC_CAP);
        recs[i] = (ring_record_t){recbuf[i], (uint32_t)len, (uint32_t)(i % 2), (uint64_t)i};
    }
    const uint8_t *out;
    uint64_t bad;
    int iters = 400;
    uint64_t t0 = loop_now_ns();
    for (int k = 0; k < iters; k++)
        otlp_encode(fast, recs, 512, meta, NULL, &out, &bad);
    double tf = (double)(loop_now_ns() - t0) / 1e9;
    t0 = loop_now_ns();
    for (int k = 0; k < iters / 4; k++)
        otlp_encode_pbc(ref, recs, 512, meta, NULL, &out, &bad);
    double tr = (double)(loop_now_ns() - t0) / 1e9;
    tap_diag("encode, 512-span batches of POST /api/orders spans: direct %.2f M spans/s, protobuf-c %.2f M spans/s",
             512.0 * iters / tf / 1e6, 512.0 * (iters / 4) / tr / 1e6);
    free(copy);
    free(recbuf);
    otlp_encoder_free(fast);
    otlp_encoder_free(ref);
    trace_shutdown();
    return tap_done();
}
