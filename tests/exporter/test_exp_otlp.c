/*
 * tests/exporter/test_exp_otlp.c - exporter/otlp.c: span records encoded as
 * an ExportTraceServiceRequest, checked field by field by unpacking the
 * bytes with protobuf-c.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "exporter.h"
#include "otlp_proto.h"
#include "tap.h"

typedef Opentelemetry__Proto__Trace__V1__Span span_t;
typedef Opentelemetry__Proto__Common__V1__KeyValue kv_t;

static uint8_t recbuf[8][4096];
static uint8_t resblob[3][1024];
static int reslen[3];

static int meta(void *arg, uint32_t lane, const void **blob)
{
    (void)arg;
    if (lane >= 3 || reslen[lane] <= 0)
        return -2;
    *blob = resblob[lane];
    return reslen[lane];
}

static const kv_t *find(kv_t **kv, size_t n, const char *key, int *count)
{
    const kv_t *r = NULL;
    *count = 0;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(kv[i]->key, key)) {
            r = kv[i];
            (*count)++;
        }
    return r;
}

static const trace_scope_t scope_a = TRACE_SCOPE("shop.a", "1.0");
static const trace_scope_t scope_b = TRACE_SCOPE("shop.b", "2.0");

int main(void)
{
    char err[256] = "";
    trace_options_t o = {.service_name = "otlp-test", .no_ring = true};
    if (!tap_check(trace_init(&o, err, sizeof err) == 0, "trace_init: %s", err))
        return tap_done();
    /* resources for lanes 0 and 1 */
    trace_attr_t r0[] = {{.key = "service.name", .key_len = 12, .type = TRACE_ATTR_STRING, .v.s = {"svc-zero", 8}},
                         {.key = "process.pid", .key_len = 11, .type = TRACE_ATTR_INT, .v.i = 42}};
    trace_attr_t r1[] = {{.key = "service.name", .key_len = 12, .type = TRACE_ATTR_STRING, .v.s = {"svc-one", 7}}};
    reslen[0] = span_resource_encode(r0, 2, resblob[0], sizeof resblob[0]);
    reslen[1] = span_resource_encode(r1, 1, resblob[1], sizeof resblob[1]);

    /* span 0: everything */
    trace_context_t parent = {.flags = 1, .is_remote = true};
    memset(parent.trace_id, 0xab, 16);
    memset(parent.span_id, 0xcd, 8);
    trace_span_t s;
    trace_span_start(&s, &scope_a, "GET /x", 6, TRACE_KIND_SERVER, &parent);
    trace_span_set_str(&s, "k", "first");
    trace_span_set_int(&s, "i", 7);
    trace_span_set_double(&s, "d", 2.5);
    trace_span_set_bool(&s, "b", true);
    trace_span_set_str(&s, "k", "last"); /* last value wins */
    trace_str_t sa[] = {{"x", 1}, {"yz", 2}};
    int64_t ia[] = {1, -2, 3};
    double da[] = {0.5, 1.5};
    bool ba[] = {true, false};
    trace_attr_t arr[] = {{.key = "sa", .key_len = 2, .type = TRACE_ATTR_STRING_ARRAY, .count = 2, .v.sa = sa},
                          {.key = "ia", .key_len = 2, .type = TRACE_ATTR_INT_ARRAY, .count = 3, .v.ia = ia},
                          {.key = "da", .key_len = 2, .type = TRACE_ATTR_DOUBLE_ARRAY, .count = 2, .v.da = da},
                          {.key = "ba", .key_len = 2, .type = TRACE_ATTR_BOOL_ARRAY, .count = 2, .v.ba = ba}};
    for (int i = 0; i < 4; i++)
        trace_span_set_attr(&s, &arr[i]);
    trace_attr_t ea[] = {{.key = "ek", .key_len = 2, .type = TRACE_ATTR_INT, .v.i = 1},
                         {.key = "ek", .key_len = 2, .type = TRACE_ATTR_INT, .v.i = 2}};
    trace_span_add_event(&s, "ev1", 3, 1000, ea, 2);
    trace_span_add_event(&s, "ev2", 3, 2000, NULL, 0);
    trace_context_t lctx = {.flags = 1};
    memset(lctx.trace_id, 0x11, 16);
    memset(lctx.span_id, 0x22, 8);
    trace_attr_t la[] = {{.key = "lk", .key_len = 2, .type = TRACE_ATTR_STRING, .v.s = {"lv", 2}}};
    trace_span_add_link(&s, &lctx, la, 1);
    trace_span_set_status(&s, TRACE_STATUS_ERROR, "boom", 4);
    int len0 = trace_span_end_into(&s, 0, recbuf[0], sizeof recbuf[0]);
    tap_check(len0 > 0, "span 0 record built (%d bytes)", len0);

    /* span 1: root, OK status (message must not travel), other scope, lane 0 */
    trace_span_start(&s, &scope_b, "root", 4, TRACE_KIND_CLIENT, NULL);
    trace_span_set_status(&s, TRACE_STATUS_OK, NULL, 0);
    int len1 = trace_span_end_into(&s, 0, recbuf[1], sizeof recbuf[1]);
    /* span 2: lane 1, scope a, local parent */
    trace_context_t lp = parent;
    lp.is_remote = false;
    trace_span_start(&s, &scope_a, "child", 5, TRACE_KIND_PRODUCER, &lp);
    int len2 = trace_span_end_into(&s, 0, recbuf[2], sizeof recbuf[2]);
    /* span 3: lane 0, scope a again (must join span 0's ScopeSpans) */
    trace_span_start(&s, &scope_a, "again", 5, TRACE_KIND_CONSUMER, NULL);
    int len3 = trace_span_end_into(&s, 0, recbuf[3], sizeof recbuf[3]);
    /* record 4: garbage */
    memset(recbuf[4], 0x5a, 100);

    ring_record_t recs[] = {{recbuf[0], (uint32_t)len0, 0, 1}, {recbuf[1], (uint32_t)len1, 0, 2},
                            {recbuf[2], (uint32_t)len2, 1, 1}, {recbuf[4], 100, 1, 2},
                            {recbuf[3], (uint32_t)len3, 0, 3}};
    otlp_encoder_t *e = otlp_encoder_new();
    const uint8_t *out;
    uint64_t bad;
    long n = otlp_encode(e, recs, 5, meta, NULL, &out, &bad);
    tap_check(n > 0 && bad == 1, "encode: %ld bytes, %llu bad record(s) left out", n, (unsigned long long)bad);
    Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceRequest *req =
        opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(NULL, (size_t)n, out);
    if (!tap_check(req != NULL, "protobuf-c unpacks the request"))
        return tap_done();
    tap_check(req->n_resource_spans == 2, "one ResourceSpans per lane: %zu", req->n_resource_spans);
    Opentelemetry__Proto__Trace__V1__ResourceSpans *rs0 = req->resource_spans[0], *rs1 = req->resource_spans[1];
    int c;
    const kv_t *kv = find(rs0->resource->attributes, rs0->resource->n_attributes, "service.name", &c);
    tap_check(kv && !strcmp(kv->value->string_value, "svc-zero"), "lane 0 resource service.name");
    kv = find(rs0->resource->attributes, rs0->resource->n_attributes, "process.pid", &c);
    tap_check(kv && kv->value->int_value == 42, "lane 0 resource process.pid");
    kv = find(rs1->resource->attributes, rs1->resource->n_attributes, "service.name", &c);
    tap_check(kv && !strcmp(kv->value->string_value, "svc-one"), "lane 1 resource service.name");
    tap_check(rs0->n_scope_spans == 2 && rs1->n_scope_spans == 1, "scopes: lane0 %zu lane1 %zu",
              rs0->n_scope_spans, rs1->n_scope_spans);
    Opentelemetry__Proto__Trace__V1__ScopeSpans *ssa = rs0->scope_spans[0], *ssb = rs0->scope_spans[1];
    tap_check(!strcmp(ssa->scope->name, "shop.a") && !strcmp(ssa->scope->version, "1.0") && ssa->n_spans == 2,
              "scope shop.a 1.0 holds spans 0 and 3 (%zu)", ssa->n_spans);
    tap_check(!strcmp(ssb->scope->name, "shop.b") && !strcmp(ssb->scope->version, "2.0") && ssb->n_spans == 1,
              "scope shop.b 2.0 holds span 1");
    tap_check(!strcmp(ssa->schema_url, EXP_SCHEMA_URL) && !strcmp(ssb->schema_url, EXP_SCHEMA_URL) &&
                  !strcmp(rs1->scope_spans[0]->schema_url, EXP_SCHEMA_URL),
              "schema_url %s on every ScopeSpans", EXP_SCHEMA_URL);

    span_record_t r0d;
    span_record_decode(recbuf[0], (size_t)len0, &r0d);
    span_t *sp = ssa->spans[0];
    tap_check(sp->trace_id.len == 16 && !memcmp(sp->trace_id.data, parent.trace_id, 16), "trace id raw 16 bytes");
    tap_check(sp->span_id.len == 8 && !memcmp(sp->span_id.data, r0d.span_id, 8), "span id raw 8 bytes");
    tap_check(sp->parent_span_id.len == 8 && !memcmp(sp->parent_span_id.data, parent.span_id, 8), "parent span id");
    tap_check(sp->flags == (0x01u | 0x100u | 0x200u), "flags: sampled + HAS_IS_REMOTE + IS_REMOTE (0x%x)", sp->flags);
    tap_check(sp->kind == OPENTELEMETRY__PROTO__TRACE__V1__SPAN__SPAN_KIND__SPAN_KIND_SERVER, "kind SERVER = 2");
    tap_check(!strcmp(sp->name, "GET /x"), "name");
    tap_check(sp->start_time_unix_nano == r0d.start_ns && sp->end_time_unix_nano == r0d.end_ns &&
                  sp->end_time_unix_nano >= sp->start_time_unix_nano && sp->start_time_unix_nano > 1600000000ull * 1000000000ull,
              "start/end times (unix ns)");
    kv = find(sp->attributes, sp->n_attributes, "k", &c);
    tap_check(kv && c == 1 && !strcmp(kv->value->string_value, "last"), "repeated key: one KeyValue, last value");
    tap_check(sp->n_attributes == 8, "8 distinct attributes (%zu)", sp->n_attributes);
    kv = find(sp->attributes, sp->n_attributes, "i", &c);
    tap_check(kv && kv->value->value_case == OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_INT_VALUE &&
                  kv->value->int_value == 7, "int attribute");
    kv = find(sp->attributes, sp->n_attributes, "d", &c);
    tap_check(kv && kv->value->value_case == OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_DOUBLE_VALUE &&
                  kv->value->double_value == 2.5, "double attribute");
    kv = find(sp->attributes, sp->n_attributes, "b", &c);
    tap_check(kv && kv->value->value_case == OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_BOOL_VALUE &&
                  kv->value->bool_value, "bool attribute");
    kv = find(sp->attributes, sp->n_attributes, "sa", &c);
    tap_check(kv && kv->value->value_case == OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_ARRAY_VALUE &&
                  kv->value->array_value->n_values == 2 &&
                  !strcmp(kv->value->array_value->values[1]->string_value, "yz"),
              "string array as ArrayValue");
    kv = find(sp->attributes, sp->n_attributes, "ia", &c);
    tap_check(kv && kv->value->array_value && kv->value->array_value->n_values == 3 &&
                  kv->value->array_value->values[1]->int_value == -2, "int array");
    kv = find(sp->attributes, sp->n_attributes, "da", &c);
    tap_check(kv && kv->value->array_value && kv->value->array_value->n_values == 2 &&
                  kv->value->array_value->values[1]->double_value == 1.5, "double array");
    kv = find(sp->attributes, sp->n_attributes, "ba", &c);
    tap_check(kv && kv->value->array_value && kv->value->array_value->n_values == 2 &&
                  kv->value->array_value->values[0]->bool_value &&
                  !kv->value->array_value->values[1]->bool_value, "bool array");
    tap_check(sp->n_events == 2 && !strcmp(sp->events[0]->name, "ev1") && sp->events[0]->time_unix_nano == 1000 &&
                  !strcmp(sp->events[1]->name, "ev2") && sp->events[1]->time_unix_nano == 2000,
              "events: names and times");
    tap_check(sp->events[0]->n_attributes == 1 && sp->events[0]->attributes[0]->value->int_value == 2,
              "event attributes, last value wins");
    tap_check(sp->n_links == 1 && !memcmp(sp->links[0]->trace_id.data, lctx.trace_id, 16) &&
                  !memcmp(sp->links[0]->span_id.data, lctx.span_id, 8) && sp->links[0]->flags == 1 &&
                  sp->links[0]->n_attributes == 1 && !strcmp(sp->links[0]->attributes[0]->value->string_value, "lv"),
              "link: ids, flags, attributes");
    tap_check(sp->status && sp->status->code == OPENTELEMETRY__PROTO__TRACE__V1__STATUS__STATUS_CODE__STATUS_CODE_ERROR &&
                  !strcmp(sp->status->message, "boom"), "status ERROR with its message");
    tap_check(sp->dropped_attributes_count == 0 && sp->dropped_events_count == 0 && sp->dropped_links_count == 0,
              "dropped counts zero when nothing dropped");
    span_t *s3 = ssa->spans[1];
    tap_check(!strcmp(s3->name, "again") && s3->kind == 5 && s3->parent_span_id.len == 0 && s3->flags == 0x101,
              "span 3: CONSUMER, root (no parent), flags 0x101");
    span_t *s1 = ssb->spans[0];
    tap_check(s1->kind == 3 && s1->status && s1->status->code == 1 && !strcmp(s1->status->message, ""),
              "span 1: CLIENT, status OK without message");
    span_t *s2 = rs1->scope_spans[0]->spans[0];
    tap_check(s2->kind == 4 && s2->flags == 0x101 && s2->parent_span_id.len == 8 && s2->status == NULL,
              "span 2: PRODUCER, local parent -> flags 0x101, UNSET status omitted");
    opentelemetry__proto__collector__trace__v1__export_trace_service_request__free_unpacked(req, NULL);

    /* dropped counts: a span over the attribute limit */
    trace_span_start(&s, &scope_a, "many", 4, TRACE_KIND_INTERNAL, NULL);
    char key[64];
    for (int i = 0; i < 140; i++) {
        int kl = snprintf(key, sizeof key, "a%d", i);
        trace_span_set_int_n(&s, key, (size_t)kl, i);
    }
    int len5 = trace_span_end_into(&s, 0, recbuf[5], sizeof recbuf[5]);
    ring_record_t r5 = {recbuf[5], (uint32_t)len5, 2, 1};
    n = otlp_encode(e, &r5, 1, meta, NULL, &out, &bad);
    req = opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(NULL, (size_t)n, out);
    tap_check(req && req->n_resource_spans == 1 && req->resource_spans[0]->resource->n_attributes == 0,
              "lane without metadata: empty resource");
    sp = req ? req->resource_spans[0]->scope_spans[0]->spans[0] : NULL;
    tap_check(sp && sp->n_attributes == 128 && sp->dropped_attributes_count == 12,
              "attribute limit: 128 kept, dropped_attributes_count 12 (%zu, %u)", sp ? sp->n_attributes : 0,
              sp ? sp->dropped_attributes_count : 0);
    if (req)
        opentelemetry__proto__collector__trace__v1__export_trace_service_request__free_unpacked(req, NULL);

    /* encoder reuse: the same batch twice gives identical bytes */
    n = otlp_encode(e, recs, 5, meta, NULL, &out, &bad);
    uint8_t *copy = malloc((size_t)n);
    memcpy(copy, out, (size_t)n);
    long n2 = otlp_encode(e, recs, 5, meta, NULL, &out, &bad);
    tap_check(n2 == n && !memcmp(copy, out, (size_t)n), "encoder reuse: identical bytes");
    free(copy);

    /* partial_success parsing */
    Opentelemetry__Proto__Collector__Trace__V1__ExportTracePartialSuccess ps =
        OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_PARTIAL_SUCCESS__INIT;
    ps.rejected_spans = 3;
    ps.error_message = (char *)"too old";
    Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceResponse resp =
        OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_SERVICE_RESPONSE__INIT;
    resp.partial_success = &ps;
    uint8_t rb[64];
    size_t rl = opentelemetry__proto__collector__trace__v1__export_trace_service_response__pack(&resp, rb);
    uint64_t rej;
    char msg[32];
    tap_check(otlp_parse_response(rb, rl, &rej, msg, sizeof msg) == 0 && rej == 3 && !strcmp(msg, "too old"),
              "partial_success: rejected_spans and error_message read");
    tap_check(otlp_parse_response(NULL, 0, &rej, msg, sizeof msg) == 0 && rej == 0, "empty response: nothing rejected");

    /* throughput (informational) */
    ring_record_t big[512];
    for (int i = 0; i < 512; i++)
        big[i] = (ring_record_t){recbuf[i % 4 == 3 ? 3 : i % 3], (uint32_t)(i % 4 == 3 ? len3 : i % 3 == 0 ? len0 : i % 3 == 1 ? len1 : len2),
                                 (uint32_t)(i % 2), (uint64_t)i};
    uint64_t t0 = loop_now_ns();
    int iters = 200;
    for (int k = 0; k < iters; k++)
        otlp_encode(e, big, 512, meta, NULL, &out, &bad);
    double secs = (double)(loop_now_ns() - t0) / 1e9;
    tap_diag("encode: %.0f spans/s (512-span batches, mixed spans)", 512.0 * iters / secs);
    otlp_encoder_free(e);
    trace_shutdown();
    return tap_done();
}
