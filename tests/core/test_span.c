/*
 * tests/core/test_span.c - spans and the span record: a span with 20
 * attributes and 2 events round-trips encode->decode exactly, every attribute
 * type incl. arrays, OTel span limits and truncation with dropped counts,
 * status rules, timestamps, decoder robustness on truncated/garbled input,
 * the resource blob, and span end into a real ring (decoded byte for byte).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core.h"
#include "tap.h"

static const trace_scope_t scope = TRACE_SCOPE("shop.test", "1.2.3");

static uint64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static bool str_eq(trace_str_t s, const char *c) { return s.len == strlen(c) && memcmp(s.p, c, s.len) == 0; }

/* Decodes and collects items in order. */
typedef struct {
    span_record_t r;
    span_record_item_t it[512];
    int n;
} decoded_t;

static int decode_all(const void *buf, size_t len, decoded_t *d)
{
    if (span_record_decode(buf, len, &d->r) != 0)
        return -1;
    uint32_t off = 0;
    d->n = 0;
    while (d->n < 512 && span_record_next(d->r.items, d->r.items_len, &off, &d->it[d->n]) == 1)
        d->n++;
    return 0;
}

static const span_record_item_t *find(const decoded_t *d, uint8_t tag, const char *key)
{
    for (int i = 0; i < d->n; i++)
        if (d->it[i].tag == tag && str_eq(d->it[i].key, key))
            return &d->it[i];
    return NULL;
}

static void test_roundtrip_20_2(void)
{
    static uint8_t buf[TRACE_RING_MAX_RECORD_DEFAULT];
    static decoded_t d;
    trace_span_t s;
    trace_context_t parent = {.flags = 1, .is_remote = true};
    trace_id_new(parent.trace_id);
    trace_id_new_span(parent.span_id);
    parent.tracestate = "shop=1";
    parent.tracestate_len = 6;
    uint64_t before = realtime_ns();
    trace_span_start(&s, &scope, "POST /api/orders", 16, TRACE_KIND_SERVER, &parent);
    char key[32], val[64];
    for (int i = 0; i < 20; i++) {
        snprintf(key, sizeof key, "attr.key.%02d", i);
        snprintf(val, sizeof val, "value number %d of twenty, a realistic length", i);
        if (i % 4 == 1)
            trace_span_set_int(&s, key, i * 1000);
        else if (i % 4 == 2)
            trace_span_set_double(&s, key, i + 0.5);
        else if (i % 4 == 3)
            trace_span_set_bool(&s, key, i & 1);
        else
            trace_span_set_str(&s, key, val);
    }
    trace_attr_t ea[2] = {
        {.key = "exception.type", .key_len = 14, .type = TRACE_ATTR_STRING, .v.s = {"Timeout", 7}},
        {.key = "retry", .key_len = 5, .type = TRACE_ATTR_INT, .v.i = 3},
    };
    trace_span_add_event(&s, "exception", 9, 1111, ea, 2);
    trace_span_add_event(&s, "retry", 5, 2222, ea + 1, 1);
    trace_span_set_status(&s, TRACE_STATUS_ERROR, "deadline exceeded", 17);
    int len = trace_span_end_into(&s, 0, buf, TRACE_RING_MAX_RECORD_DEFAULT - TRACE_RING_RECORD_OVERHEAD);
    uint64_t after = realtime_ns();
    tap_check(len > 0 && len < (int)(TRACE_RING_MAX_RECORD_DEFAULT - TRACE_RING_RECORD_OVERHEAD),
              "20 attributes + 2 events fit the default max_record (%d bytes)", len);
    tap_check(decode_all(buf, (size_t)len, &d) == 0, "record decodes");
    const span_record_t *r = &d.r;
    tap_check(memcmp(r->trace_id, parent.trace_id, 16) == 0 && memcmp(r->parent_span_id, parent.span_id, 8) == 0 &&
                  memcmp(r->span_id, s.ctx.span_id, 8) == 0 && r->trace_flags == 1,
              "ids and flags round-trip");
    tap_check(r->kind == TRACE_KIND_SERVER && r->status == TRACE_STATUS_ERROR && str_eq(r->status_msg, "deadline exceeded"),
              "kind and status round-trip");
    tap_check(str_eq(r->name, "POST /api/orders") && str_eq(r->scope_name, "shop.test") &&
                  str_eq(r->scope_version, "1.2.3") && str_eq(r->tracestate, "shop=1"),
              "name, scope and tracestate round-trip");
    tap_check((r->rflags & (SPAN_RFLAG_HAS_PARENT | SPAN_RFLAG_PARENT_REMOTE)) ==
                      (SPAN_RFLAG_HAS_PARENT | SPAN_RFLAG_PARENT_REMOTE) &&
                  !(r->rflags & SPAN_RFLAG_TRUNCATED),
              "remote parent flagged, not truncated");
    tap_check(r->n_attrs == 20 && r->n_events == 2 && r->n_links == 0 && r->dropped_attrs == 0 &&
                  r->dropped_events == 0,
              "counts: 20 attributes, 2 events, nothing dropped");
    int ok = 0;
    for (int i = 0; i < 20; i++) {
        snprintf(key, sizeof key, "attr.key.%02d", i);
        snprintf(val, sizeof val, "value number %d of twenty, a realistic length", i);
        const span_record_item_t *it = find(&d, SPAN_ITEM_ATTR, key);
        if (!it)
            continue;
        int64_t iv;
        double dv;
        if (i % 4 == 1) {
            memcpy(&iv, it->value, 8);
            ok += it->type == TRACE_ATTR_INT && iv == i * 1000;
        } else if (i % 4 == 2) {
            memcpy(&dv, it->value, 8);
            ok += it->type == TRACE_ATTR_DOUBLE && dv == i + 0.5;
        } else if (i % 4 == 3) {
            ok += it->type == TRACE_ATTR_BOOL && it->value[0] == (i & 1);
        } else {
            ok += it->type == TRACE_ATTR_STRING && it->value_len == strlen(val) && memcmp(it->value, val, it->value_len) == 0;
        }
    }
    tap_check(ok == 20, "every attribute value round-trips exactly (%d/20)", ok);
    const span_record_item_t *e1 = find(&d, SPAN_ITEM_EVENT, "exception"), *e2 = find(&d, SPAN_ITEM_EVENT, "retry");
    tap_check(e1 && e2 && e1->time_ns == 1111 && e2->time_ns == 2222 && e1->count == 0 && e1 < e2,
              "events round-trip with times");
    tap_check(e1 && e1[1].tag == SPAN_ITEM_EVENT_ATTR && str_eq(e1[1].key, "exception.type") &&
                  e1[2].tag == SPAN_ITEM_EVENT_ATTR && e2[1].tag == SPAN_ITEM_EVENT_ATTR,
              "event attributes follow their event");
    tap_check(r->start_ns >= before - 1000000000ULL && r->start_ns <= after && r->end_ns >= r->start_ns &&
                  r->end_ns <= after + 1000000000ULL,
              "timestamps: start close to now, end >= start");

    /* decoder robustness on this record: every truncation is -1 */
    span_record_t tmp;
    int bad = 0;
    for (int l = 0; l < len; l++)
        bad += span_record_decode(buf, (size_t)l, &tmp) == -1;
    tap_check(bad == len, "every truncated prefix is refused (%d/%d)", bad, len);
    uint8_t g[8192];
    memcpy(g, buf, (size_t)len);
    g[0] = 2;
    tap_check(span_record_decode(g, (size_t)len, &tmp) == -1, "wrong version refused");
    memcpy(g, buf, (size_t)len);
    g[68]++;
    tap_check(span_record_decode(g, (size_t)len, &tmp) == -1, "attribute count mismatch refused");
    memcpy(g, buf, (size_t)len);
    g[1] = 9;
    tap_check(span_record_decode(g, (size_t)len, &tmp) == -1, "bad kind refused");
    memcpy(g, buf, (size_t)len);
    g[SPAN_RECORD_HEADER_SIZE + 2] = 0xff; /* name length past the end */
    g[SPAN_RECORD_HEADER_SIZE + 3] = 0xff;
    tap_check(span_record_decode(g, (size_t)len, &tmp) == -1, "item length past the end refused");
    srand(7);
    int crashes_avoided = 0;
    for (int k = 0; k < 20000; k++) {
        memcpy(g, buf, (size_t)len);
        for (int f = 0; f < 3; f++)
            g[rand() % len] = (uint8_t)rand();
        int rc = decode_all(g, (size_t)len, &d);
        crashes_avoided += rc == 0 || rc == -1;
    }
    tap_check(crashes_avoided == 20000, "20000 garbled records: decoder returns 0 or -1 (ASan checks bounds)");
}

static void test_types(void)
{
    static uint8_t buf[8192];
    static decoded_t d;
    trace_span_t s;
    trace_span_start(&s, &scope, "types", 5, TRACE_KIND_CLIENT, NULL);
    trace_str_t sa[3] = {{"a", 1}, {"", 0}, {"ccc", 3}};
    bool ba[2] = {true, false};
    int64_t ia[3] = {-1, 0, INT64_MAX};
    double da[2] = {1.5, -2.25};
    trace_attr_t a[4] = {
        {.key = "sa", .key_len = 2, .type = TRACE_ATTR_STRING_ARRAY, .count = 3, .v.sa = sa},
        {.key = "ba", .key_len = 2, .type = TRACE_ATTR_BOOL_ARRAY, .count = 2, .v.ba = ba},
        {.key = "ia", .key_len = 2, .type = TRACE_ATTR_INT_ARRAY, .count = 3, .v.ia = ia},
        {.key = "da", .key_len = 2, .type = TRACE_ATTR_DOUBLE_ARRAY, .count = 2, .v.da = da},
    };
    for (int i = 0; i < 4; i++)
        trace_span_set_attr(&s, &a[i]);
    trace_context_t lc = {.flags = 1};
    trace_id_new(lc.trace_id);
    trace_id_new_span(lc.span_id);
    lc.tracestate = "x=1";
    lc.tracestate_len = 3;
    trace_span_add_link(&s, &lc, a + 2, 1);
    trace_span_set_status(&s, TRACE_STATUS_OK, NULL, 0);
    trace_span_set_status(&s, TRACE_STATUS_ERROR, "late", 4);
    int len = trace_span_end_into(&s, 0, buf, sizeof buf);
    tap_check(len > 0 && decode_all(buf, (size_t)len, &d) == 0, "arrays record decodes");
    const span_record_item_t *it = find(&d, SPAN_ITEM_ATTR, "sa");
    trace_str_t e;
    uint32_t off = 0;
    int n = 0, good = 0;
    while (it && span_record_array_str(it, &off, &e) == 1) {
        good += e.len == sa[n].len && memcmp(e.p, sa[n].p, e.len) == 0;
        n++;
    }
    tap_check(it && it->count == 3 && n == 3 && good == 3, "string array round-trips");
    it = find(&d, SPAN_ITEM_ATTR, "ba");
    tap_check(it && it->count == 2 && span_record_array_bool(it, 0) && !span_record_array_bool(it, 1), "bool array round-trips");
    it = find(&d, SPAN_ITEM_ATTR, "ia");
    tap_check(it && it->count == 3 && span_record_array_int(it, 0) == -1 && span_record_array_int(it, 2) == INT64_MAX,
              "int array round-trips");
    it = find(&d, SPAN_ITEM_ATTR, "da");
    tap_check(it && it->count == 2 && span_record_array_double(it, 1) == -2.25, "double array round-trips");
    it = find(&d, SPAN_ITEM_LINK, "x=1");
    tap_check(it && memcmp(it->trace_id, lc.trace_id, 16) == 0 && memcmp(it->span_id, lc.span_id, 8) == 0 &&
                  it->type == 1 && it[1].tag == SPAN_ITEM_LINK_ATTR && d.r.n_links == 1,
              "link round-trips with tracestate and attribute");
    tap_check(d.r.status == TRACE_STATUS_OK && d.r.status_msg.len == 0, "status OK is final");
    tap_check(!(d.r.rflags & SPAN_RFLAG_HAS_PARENT) && trace_id_is_valid(d.r.trace_id, 16), "root span: new trace, no parent");
}

static void test_limits(void)
{
    static uint8_t buf[8192];
    static decoded_t d;
    char err[256] = "";
    trace_limits_t l;
    trace_limits_default(&l);
    l.attr_count = 5;
    l.event_count = 1;
    l.link_count = 1;
    l.event_attr_count = 1;
    l.attr_value_len = 4;
    trace_options_t o = {.no_ring = true, .limits = &l};
    tap_check(trace_init(&o, err, sizeof err) == 0, "init without a ring: %s", err);
    trace_span_t s;
    trace_span_start(&s, &scope, "limits", 6, TRACE_KIND_INTERNAL, NULL);
    for (int i = 0; i < 8; i++)
        trace_span_set_int(&s, "k", i);
    trace_span_set_str(&s, "long", "h\xc3\xa9llo world"); /* 4 chars: "h", "é", "l", "l" */
    trace_attr_t ea[2] = {{.key = "a", .key_len = 1, .type = TRACE_ATTR_INT, .v.i = 1},
                          {.key = "b", .key_len = 1, .type = TRACE_ATTR_INT, .v.i = 2}};
    trace_span_add_event(&s, "e1", 2, 0, ea, 2);
    trace_span_add_event(&s, "e2", 2, 0, NULL, 0);
    trace_context_t lc = {.flags = 1};
    trace_id_new(lc.trace_id);
    trace_id_new_span(lc.span_id);
    trace_span_add_link(&s, &lc, NULL, 0);
    trace_span_add_link(&s, &lc, NULL, 0);
    int len = trace_span_end_into(&s, 0, buf, sizeof buf);
    tap_check(len > 0 && decode_all(buf, (size_t)len, &d) == 0, "limited span decodes");
    tap_check(d.r.n_attrs == 5 && d.r.dropped_attrs == 4, "attribute count limit 5: kept 5, dropped 4 (%u)", d.r.dropped_attrs);
    tap_check(d.r.n_events == 1 && d.r.dropped_events == 1, "event count limit 1: dropped 1");
    tap_check(d.r.n_links == 1 && d.r.dropped_links == 1, "link count limit 1: dropped 1");
    const span_record_item_t *e = find(&d, SPAN_ITEM_EVENT, "e1");
    tap_check(e && e->count == 1, "event attribute limit 1: event's dropped count 1");
    trace_shutdown();

    /* value length limit: separate span (attr limit 5 consumed above) */
    trace_init(&o, err, sizeof err);
    trace_span_start(&s, &scope, "vl", 2, TRACE_KIND_INTERNAL, NULL);
    trace_span_set_str(&s, "long", "h\xc3\xa9llo world");
    len = trace_span_end_into(&s, 0, buf, sizeof buf);
    decode_all(buf, (size_t)len, &d);
    const span_record_item_t *it = find(&d, SPAN_ITEM_ATTR, "long");
    tap_check(it && it->value_len == 5 && memcmp(it->value, "h\xc3\xa9ll", 5) == 0,
              "value length limit 4 counts UTF-8 characters");
    trace_shutdown();

    /* the span buffer fills: later attributes dropped and counted, truncated */
    o.limits = NULL;
    trace_init(&o, err, sizeof err);
    trace_span_start(&s, &scope, "full", 4, TRACE_KIND_INTERNAL, NULL);
    char big[600];
    memset(big, 'v', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    for (int i = 0; i < 10; i++)
        trace_span_set_str(&s, "big", big);
    len = trace_span_end_into(&s, 0, buf, sizeof buf);
    tap_check(len > 0 && decode_all(buf, (size_t)len, &d) == 0 && d.r.n_attrs + d.r.dropped_attrs == 10 &&
                  d.r.dropped_attrs > 0 && (d.r.rflags & SPAN_RFLAG_TRUNCATED),
              "buffer overflow: %u kept, %u dropped, marked truncated", d.r.n_attrs, d.r.dropped_attrs);

    /* cut at end to a small record size: items dropped from the end */
    trace_span_start(&s, &scope, "cut", 3, TRACE_KIND_INTERNAL, NULL);
    for (int i = 0; i < 10; i++)
        trace_span_set_int(&s, "n", i);
    trace_span_add_event(&s, "ev", 2, 0, ea, 2);
    len = trace_span_end_into(&s, 0, buf, 200);
    tap_check(len > 0 && len <= 200 && decode_all(buf, (size_t)len, &d) == 0 && (d.r.rflags & SPAN_RFLAG_TRUNCATED) &&
                  d.r.n_attrs + d.r.dropped_attrs == 10 && d.r.n_events + d.r.dropped_events == 1,
              "cut to 200 bytes: %d bytes, %u attrs kept, %u dropped, %u events dropped", len, d.r.n_attrs,
              d.r.dropped_attrs, d.r.dropped_events);
    trace_span_start(&s, &scope, "tiny", 4, TRACE_KIND_INTERNAL, NULL);
    tap_check(trace_span_end_into(&s, 0, buf, 90) == -ENOSPC, "a record that cannot hold its name is refused");
    trace_shutdown();
}

static void test_resource(void)
{
    char err[256] = "";
    setenv("OTEL_SERVICE_NAME", "env-svc", 1);
    setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=staging,team=shop%20core", 1);
    trace_options_t o = {.no_ring = true, .service_name = "opt-svc", .service_version = "9.9"};
    tap_check(trace_init(&o, err, sizeof err) == 0, "init with resource variables");
    uint32_t len;
    const uint8_t *res = trace_resource(&len);
    span_resource_t r;
    tap_check(span_resource_decode(res, len, &r) == 0 && r.n_attrs >= 10, "resource blob decodes (%u attrs)", r.n_attrs);
    static decoded_t d;
    d.n = 0;
    uint32_t off = 0;
    while (span_record_next(r.items, r.items_len, &off, &d.it[d.n]) == 1)
        d.n++;
    const span_record_item_t *it = find(&d, SPAN_ITEM_ATTR, "service.name");
    tap_check(it && it->value_len == 7 && memcmp(it->value, "env-svc", 7) == 0, "OTEL_SERVICE_NAME wins");
    it = find(&d, SPAN_ITEM_ATTR, "team");
    tap_check(it && it->value_len == 9 && memcmp(it->value, "shop core", 9) == 0, "OTEL_RESOURCE_ATTRIBUTES decoded");
    it = find(&d, SPAN_ITEM_ATTR, "process.pid");
    int64_t pid = 0;
    if (it)
        memcpy(&pid, it->value, 8);
    tap_check(it && it->type == TRACE_ATTR_INT && pid == getpid(), "process.pid is an int");
    tap_check(find(&d, SPAN_ITEM_ATTR, "service.version") && find(&d, SPAN_ITEM_ATTR, "host.name") &&
                  find(&d, SPAN_ITEM_ATTR, "service.instance.id") && find(&d, SPAN_ITEM_ATTR, "telemetry.sdk.name") &&
                  find(&d, SPAN_ITEM_ATTR, "telemetry.sdk.language") && find(&d, SPAN_ITEM_ATTR, "telemetry.sdk.version") &&
                  find(&d, SPAN_ITEM_ATTR, "deployment.environment.name"),
              "resource has the required attributes");
    trace_shutdown();
    setenv("OTEL_RESOURCE_ATTRIBUTES", "bad key=1", 1);
    tap_check(trace_init(&o, err, sizeof err) == -EINVAL && strstr(err, "OTEL_RESOURCE_ATTRIBUTES"),
              "bad OTEL_RESOURCE_ATTRIBUTES refused: %s", err);
    unsetenv("OTEL_RESOURCE_ATTRIBUTES");
    unsetenv("OTEL_SERVICE_NAME");
    uint8_t garbage[8] = {1, 0, 5, 0, 5, 1, 0, 0};
    tap_check(span_resource_decode(garbage, sizeof garbage, &r) == -1, "garbled resource refused");
}

static void test_ring(void)
{
    char err[256], name[64];
    static uint8_t expect[TRACE_SPAN_BUF_SIZE];
    snprintf(name, sizeof name, "/shop-trace-test-core-%d", (int)getpid());
    ring_geometry_t geo = {.lanes = 4, .max_record = 16384, .lane_size = 256 * 1024};
    trace_options_t o = {.ring_name = name, .create_ring = true, .geometry = &geo, .service_name = "ringtest"};
    int rc = trace_init(&o, err, sizeof err);
    tap_check(rc == 0, "init creates a ring: %s", rc ? err : "ok");
    if (rc != 0)
        return;
    ring_t *cons;
    rc = ring_open(name, NULL, false, &cons, err, sizeof err);
    tap_check(rc == 0 && ring_consumer_open(cons, err, sizeof err) == 0, "a consumer attaches");
    trace_span_t s, copy;
    trace_span_start(&s, &scope, "GET /api/health", 15, TRACE_KIND_SERVER, NULL);
    trace_span_set_str(&s, "http.request.method", "GET");
    trace_span_set_int(&s, "http.response.status_code", 200);
    trace_attr_t ea = {.key = "k", .key_len = 1, .type = TRACE_ATTR_BOOL, .v.b = true};
    trace_span_add_event(&s, "ev", 2, 0, &ea, 1);
    copy = s;
    trace_span_end(&s);
    ring_record_t rec[4];
    int n = ring_consumer_peek(cons, rec, 4);
    tap_check(n == 1, "span end wrote one record into the ring (%d)", n);
    if (n == 1) {
        span_record_t r;
        tap_check(span_record_decode(rec[0].data, rec[0].len, &r) == 0 && str_eq(r.name, "GET /api/health") &&
                      r.n_attrs == 2 && r.n_events == 1,
                  "ring record decodes");
        int len = trace_span_end_into(&copy, r.end_ns, expect, sizeof expect);
        tap_check(len == (int)rec[0].len && memcmp(expect, rec[0].data, (size_t)len) == 0,
                  "ring record is byte for byte the encoded span");
        const void *meta;
        int ml = ring_lane_meta(cons, rec[0].lane, &meta, NULL);
        span_resource_t res;
        tap_check(ml > 0 && span_resource_decode(meta, (size_t)ml, &res) == 0, "lane meta holds the decodable resource");
        ring_consumer_release(cons, 1, 1, RING_DROP_SHUTDOWN);
    }
    trace_span_start(&s, &scope, "unsampled?", 10, TRACE_KIND_INTERNAL, NULL);
    trace_span_end(&s);
    trace_span_end(&s); /* second end ignored */
    n = ring_consumer_peek(cons, rec, 4);
    tap_check(n == 1, "a second end writes nothing more");
    if (n > 0)
        ring_consumer_release(cons, (uint64_t)n, (uint64_t)n, RING_DROP_SHUTDOWN);
    trace_shutdown();
    ring_close(cons);
    ring_unlink(name);

    /* a ring with a small max_record: the span is cut, committed, counted truncated */
    snprintf(name, sizeof name, "/shop-trace-test-core-small-%d", (int)getpid());
    ring_geometry_t small = {.lanes = 2, .max_record = RING_RECORD_MIN, .lane_size = RING_LANE_SIZE_MIN};
    o.ring_name = name;
    o.geometry = &small;
    rc = trace_init(&o, err, sizeof err);
    tap_check(rc == 0, "init with max_record %u: %s", RING_RECORD_MIN, rc ? err : "ok");
    if (rc != 0)
        return;
    ring_open(name, NULL, false, &cons, err, sizeof err);
    ring_consumer_open(cons, err, sizeof err);
    trace_span_start(&s, &scope, "big", 3, TRACE_KIND_INTERNAL, NULL);
    for (int i = 0; i < 30; i++)
        trace_span_set_int(&s, "attribute.number", i);
    trace_span_end(&s);
    n = ring_consumer_peek(cons, rec, 4);
    span_record_t r;
    ring_stats_t st;
    ring_stats(cons, &st);
    tap_check(n == 1 && span_record_decode(rec[0].data, rec[0].len, &r) == 0 && (r.rflags & SPAN_RFLAG_TRUNCATED) &&
                  r.n_attrs + r.dropped_attrs == 30 && st.truncated == 1,
              "oversized span: truncated, written, dropped counts set (%u kept)", n == 1 ? r.n_attrs : 0);
    if (n > 0)
        ring_consumer_release(cons, (uint64_t)n, (uint64_t)n, RING_DROP_SHUTDOWN);
    trace_shutdown();
    ring_close(cons);
    ring_unlink(name);
}

int main(void)
{
    test_roundtrip_20_2();
    test_types();
    test_limits();
    test_resource();
    test_ring();
    return tap_done();
}
