/*
 * tests/exporter/span_writer.c - a producer process for the e2e tests in
 * tests/py: writes a described set of spans through core's tracing API into
 * a named ring and prints, as one JSON object on stdout, everything a
 * receiver should see, so a test can compare what arrived field by field.
 *
 * Usage:
 *   span_writer RING SERVICE [--version V] [--parent TRACEPARENT]
 *               [--tracestate TS] [--bulk N [--interval-us U]]
 *
 * Described set (default): five spans, one of each kind, all in the
 * parent's trace (a new trace without --parent):
 *   "SERVICE handle"   SERVER, child of --parent (a remote parent) or root
 *   "SERVICE call"     CLIENT under handle: every attribute type, arrays
 *                      included; two events (one with attributes of every
 *                      scalar type); status ERROR with a message.  Its
 *                      traceparent is printed as "next_parent": pass it to
 *                      the next process, as a gRPC client would.
 *   "SERVICE publish"  PRODUCER under handle: a link (with tracestate and
 *                      attributes) to a context of another trace; status OK
 *   "SERVICE consume"  CONSUMER under handle: a link to publish
 *   "SERVICE work"     INTERNAL under handle: over every span limit (the
 *                      limits are set low here), so every dropped count is
 *                      non-zero; links to call and consume (a third is
 *                      dropped)
 * Bulk (--bulk N): N INTERNAL root spans "SERVICE-<i>" (attribute
 * test.index = i), one every U microseconds (default 0); prints
 * {"service": ..., "bulk": N}.
 *
 * Output (described set): {"service", "version", "pid", "next_parent",
 * "spans": [{"name", "kind", "trace_id", "span_id", "parent_span_id" ("" for
 * a root), "parent_remote", "flags" (W3C), "trace_state", "start_ns",
 * "end_min", "end_max" (the span's end lies in [end_min, end_max], both read
 * from the span clock around trace_span_end), "status": {"code", "message"},
 * "attrs": [{"key", "type", "value"}], "dropped_attrs", "events": [{"name",
 * "time_ns", "attrs", "dropped"}], "dropped_events", "links": [{"trace_id",
 * "span_id", "trace_state", "flags", "attrs", "dropped"}], "dropped_links"}]}
 * in the order the spans ended.  Types are "string", "bool", "int",
 * "double" and those with "_array".
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core.h"

static const trace_scope_t scope = TRACE_SCOPE("shop.test.span_writer", "1.2.3");

/* The limits this process runs with: low, so span "work" can pass each. */
#define LIM_ATTRS 16u
#define LIM_EVENTS 4u
#define LIM_LINKS 2u
#define LIM_EVENT_ATTRS 4u
#define LIM_LINK_ATTRS 3u

/* --------------------------------------------------------------- JSON out */

static void json_str(const char *p, size_t n)
{
    putchar('"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c); /* UTF-8 passes through */
    }
    putchar('"');
}

static void json_hex(const uint8_t *id, size_t n)
{
    char hx[2 * TRACE_ID_SIZE];
    trace_id_hex(id, n, hx);
    printf("\"%.*s\"", (int)(2 * n), hx);
}

static const char *type_name(trace_attr_type_t t)
{
    static const char *const names[] = {"?", "string", "bool", "int", "double",
                                        "string_array", "bool_array", "int_array", "double_array"};
    return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "?";
}

static void json_attr_value(const trace_attr_t *a)
{
    switch (a->type) {
    case TRACE_ATTR_STRING: json_str(a->v.s.p, a->v.s.len); break;
    case TRACE_ATTR_BOOL: printf(a->v.b ? "true" : "false"); break;
    case TRACE_ATTR_INT: printf("%" PRId64, a->v.i); break;
    case TRACE_ATTR_DOUBLE: printf("%.17g", a->v.d); break;
    default:
        putchar('[');
        for (size_t i = 0; i < a->count; i++) {
            if (i)
                putchar(',');
            if (a->type == TRACE_ATTR_STRING_ARRAY)
                json_str(a->v.sa[i].p, a->v.sa[i].len);
            else if (a->type == TRACE_ATTR_BOOL_ARRAY)
                printf(a->v.ba[i] ? "true" : "false");
            else if (a->type == TRACE_ATTR_INT_ARRAY)
                printf("%" PRId64, a->v.ia[i]);
            else
                printf("%.17g", a->v.da[i]);
        }
        putchar(']');
    }
}

static void json_attrs(const trace_attr_t *a, size_t n)
{
    putchar('[');
    for (size_t i = 0; i < n; i++) {
        printf("%s{\"key\":", i ? "," : "");
        json_str(a[i].key, a[i].key_len);
        printf(",\"type\":\"%s\",\"value\":", type_name(a[i].type));
        json_attr_value(&a[i]);
        putchar('}');
    }
    putchar(']');
}

/* ------------------------------------------------------- what a span got */

#define MAXA 24
#define MAXE 6
#define MAXL 4

typedef struct {
    const char *name;
    uint64_t time_ns;
    trace_attr_t attrs[MAXA];
    size_t n, dropped;
} ev_log_t;

typedef struct {
    trace_context_t ctx;
    trace_attr_t attrs[MAXA];
    size_t n, dropped;
} ln_log_t;

typedef struct {
    trace_span_t span;
    const char *name;
    trace_kind_t kind;
    const trace_context_t *parent;
    uint64_t end_min, end_max;
    trace_status_t status;
    const char *status_msg;
    trace_attr_t attrs[MAXA];
    size_t n_attrs, dropped_attrs;
    ev_log_t ev[MAXE];
    size_t n_ev, dropped_ev;
    ln_log_t ln[MAXL];
    size_t n_ln, dropped_ln;
} wspan_t;

#define A_STR(k, x) {.key = (k), .key_len = sizeof(k) - 1, .type = TRACE_ATTR_STRING, .v.s = {(x), sizeof(x) - 1}}
#define A_BOOL(k, x) {.key = (k), .key_len = sizeof(k) - 1, .type = TRACE_ATTR_BOOL, .v.b = (x)}
#define A_INT(k, x) {.key = (k), .key_len = sizeof(k) - 1, .type = TRACE_ATTR_INT, .v.i = (x)}
#define A_DBL(k, x) {.key = (k), .key_len = sizeof(k) - 1, .type = TRACE_ATTR_DOUBLE, .v.d = (x)}

static void span_begin(wspan_t *w, const char *svc, const char *what, trace_kind_t kind,
                       const trace_context_t *parent)
{
    static char names[8][160];
    static int nn;
    char *nm = names[nn++ & 7];
    int len = snprintf(nm, sizeof names[0], "%s %s", svc, what);
    w->name = nm;
    w->kind = kind;
    w->parent = parent;
    trace_span_start(&w->span, &scope, nm, (size_t)len, kind, parent);
}

/* Sets one attribute the way services do: the typed inline setters for
 * scalars, the generic setter for arrays. */
static void span_attr(wspan_t *w, const trace_attr_t *a)
{
    trace_span_t *s = &w->span;
    switch (a->type) {
    case TRACE_ATTR_STRING: trace_span_set_str_n(s, a->key, a->key_len, a->v.s.p, a->v.s.len); break;
    case TRACE_ATTR_BOOL: trace_span_set_bool_n(s, a->key, a->key_len, a->v.b); break;
    case TRACE_ATTR_INT: trace_span_set_int_n(s, a->key, a->key_len, a->v.i); break;
    case TRACE_ATTR_DOUBLE: trace_span_set_double_n(s, a->key, a->key_len, a->v.d); break;
    default: trace_span_set_attr(s, a);
    }
    if (w->n_attrs < LIM_ATTRS)
        w->attrs[w->n_attrs++] = *a;
    else
        w->dropped_attrs++;
}

static void span_event(wspan_t *w, const char *name, const trace_attr_t *a, size_t n)
{
    uint64_t t = trace_now_ns();
    trace_span_add_event(&w->span, name, strlen(name), t, a, n);
    if (w->n_ev >= LIM_EVENTS) {
        w->dropped_ev++;
        return;
    }
    ev_log_t *e = &w->ev[w->n_ev++];
    e->name = name;
    e->time_ns = t;
    e->n = n < LIM_EVENT_ATTRS ? n : LIM_EVENT_ATTRS;
    e->dropped = n - e->n;
    if (e->n) /* an event without attributes passes a NULL array */
        memcpy(e->attrs, a, e->n * sizeof *a);
}

static void span_link(wspan_t *w, const trace_context_t *ctx, const trace_attr_t *a, size_t n)
{
    trace_span_add_link(&w->span, ctx, a, n);
    if (w->n_ln >= LIM_LINKS) {
        w->dropped_ln++;
        return;
    }
    ln_log_t *l = &w->ln[w->n_ln++];
    l->ctx = *ctx;
    l->n = n < LIM_LINK_ATTRS ? n : LIM_LINK_ATTRS;
    l->dropped = n - l->n;
    if (l->n)
        memcpy(l->attrs, a, l->n * sizeof *a);
}

static void span_status(wspan_t *w, trace_status_t code, const char *msg)
{
    trace_span_set_status(&w->span, code, msg, msg ? strlen(msg) : 0);
    w->status = code;
    w->status_msg = msg;
}

static void span_finish(wspan_t *w)
{
    w->end_min = trace_now_ns();
    trace_span_end(&w->span);
    w->end_max = trace_now_ns();
}

static void span_print(const wspan_t *w, int first)
{
    const trace_context_t *c = &w->span.ctx;
    printf("%s\n{\"name\":", first ? "" : ",");
    json_str(w->name, strlen(w->name));
    printf(",\"kind\":%d,\"trace_id\":", (int)w->kind);
    json_hex(c->trace_id, TRACE_ID_SIZE);
    printf(",\"span_id\":");
    json_hex(c->span_id, TRACE_SPAN_ID_SIZE);
    printf(",\"parent_span_id\":");
    if (w->parent)
        json_hex(w->parent->span_id, TRACE_SPAN_ID_SIZE);
    else
        printf("\"\"");
    printf(",\"parent_remote\":%s,\"flags\":%u,\"trace_state\":",
           w->parent && w->parent->is_remote ? "true" : "false", c->flags);
    json_str(c->tracestate ? c->tracestate : "", c->tracestate_len);
    /* _wall_start is private to core; read here only to tell the test the
     * start time the record must carry. */
    printf(",\"start_ns\":%" PRIu64 ",\"end_min\":%" PRIu64 ",\"end_max\":%" PRIu64,
           w->span._wall_start, w->end_min, w->end_max);
    printf(",\"status\":{\"code\":%d,\"message\":", (int)w->status);
    json_str(w->status_msg ? w->status_msg : "", w->status_msg ? strlen(w->status_msg) : 0);
    printf("},\"attrs\":");
    json_attrs(w->attrs, w->n_attrs);
    printf(",\"dropped_attrs\":%zu,\"events\":[", w->dropped_attrs);
    for (size_t i = 0; i < w->n_ev; i++) {
        printf("%s{\"name\":", i ? "," : "");
        json_str(w->ev[i].name, strlen(w->ev[i].name));
        printf(",\"time_ns\":%" PRIu64 ",\"attrs\":", w->ev[i].time_ns);
        json_attrs(w->ev[i].attrs, w->ev[i].n);
        printf(",\"dropped\":%zu}", w->ev[i].dropped);
    }
    printf("],\"dropped_events\":%zu,\"links\":[", w->dropped_ev);
    for (size_t i = 0; i < w->n_ln; i++) {
        const trace_context_t *lc = &w->ln[i].ctx;
        printf("%s{\"trace_id\":", i ? "," : "");
        json_hex(lc->trace_id, TRACE_ID_SIZE);
        printf(",\"span_id\":");
        json_hex(lc->span_id, TRACE_SPAN_ID_SIZE);
        printf(",\"trace_state\":");
        json_str(lc->tracestate ? lc->tracestate : "", lc->tracestate_len);
        printf(",\"flags\":%u,\"attrs\":", lc->flags);
        json_attrs(w->ln[i].attrs, w->ln[i].n);
        printf(",\"dropped\":%zu}", w->ln[i].dropped);
    }
    printf("],\"dropped_links\":%zu}", w->dropped_ln);
}

/* ---------------------------------------------------------------- the set */

static wspan_t sp[5]; /* static: a trace_span_t holds a 4 KiB buffer */

static void described_set(const char *svc, const char *version, const trace_context_t *parent)
{
    wspan_t *handle = &sp[0], *call = &sp[1], *pub = &sp[2], *cons = &sp[3], *work = &sp[4];

    span_begin(handle, svc, "handle", TRACE_KIND_SERVER, parent);
    const trace_attr_t h_attrs[] = {A_STR("test.role", "entry"), A_INT("test.depth", 0)};
    for (size_t i = 0; i < 2; i++)
        span_attr(handle, &h_attrs[i]);

    /* CLIENT: every attribute type, events, an error. */
    span_begin(call, svc, "call", TRACE_KIND_CLIENT, &handle->span.ctx);
    static const trace_str_t sa[] = {{"alpha", 5}, {"", 0}, {"\xc3\xbc-\"q\"", 6}};
    static const bool ba[] = {true, false, true};
    static const int64_t ia[] = {1, -2, INT64_C(1) << 40, INT64_MIN};
    static const double da[] = {1.5, -2.25, 0.0, 1e-300};
    const trace_attr_t c_attrs[] = {
        A_STR("test.str", "h\xc3\xa9llo \"quoted\" \\ back/slash"),
        A_BOOL("test.bool", true),
        A_BOOL("test.bool_false", false),
        A_INT("test.int", -9007199254740993LL),
        A_INT("test.int_max", INT64_MAX),
        A_DBL("test.double", 3.25),
        A_DBL("test.double_neg", -1234.5e10),
        {.key = "test.str_array", .key_len = 14, .type = TRACE_ATTR_STRING_ARRAY, .count = 3, .v.sa = sa},
        {.key = "test.bool_array", .key_len = 15, .type = TRACE_ATTR_BOOL_ARRAY, .count = 3, .v.ba = ba},
        {.key = "test.int_array", .key_len = 14, .type = TRACE_ATTR_INT_ARRAY, .count = 4, .v.ia = ia},
        {.key = "test.double_array", .key_len = 17, .type = TRACE_ATTR_DOUBLE_ARRAY, .count = 4, .v.da = da},
        A_STR("peer.service", "downstream"),
    };
    for (size_t i = 0; i < sizeof c_attrs / sizeof c_attrs[0]; i++)
        span_attr(call, &c_attrs[i]);
    const trace_attr_t e1[] = {A_INT("attempt", 2), A_STR("reason", "busy"), A_DBL("backoff", 0.5),
                               A_BOOL("final", false)};
    span_event(call, "retry", e1, 4);
    const trace_attr_t e2[] = {{.key = "codes", .key_len = 5, .type = TRACE_ATTR_INT_ARRAY, .count = 2, .v.ia = ia}};
    span_event(call, "sent", e2, 1);
    span_event(call, "no attributes", NULL, 0);
    span_status(call, TRACE_STATUS_ERROR, "upstream said no: \"quota\"");

    /* PRODUCER: a link to another trace, with tracestate and attributes. */
    span_begin(pub, svc, "publish", TRACE_KIND_PRODUCER, &handle->span.ctx);
    const trace_attr_t p_attrs[] = {A_STR("messaging.system", "kafka"), A_STR("messaging.destination.name", "order-events")};
    for (size_t i = 0; i < 2; i++)
        span_attr(pub, &p_attrs[i]);
    trace_context_t other = {.flags = TRACE_FLAG_SAMPLED, .tracestate = "vendor=abc,other=1", .tracestate_len = 18};
    trace_id_new(other.trace_id);
    trace_id_new_span(other.span_id);
    const trace_attr_t l1[] = {A_STR("link.reason", "batch"), A_INT("link.n", 3)};
    span_link(pub, &other, l1, 2);
    span_status(pub, TRACE_STATUS_OK, NULL);

    /* CONSUMER under handle, linked to the producer.  (Not its child too:
     * Jaeger shows a link to a span's own parent as FOLLOWS_FROM only,
     * dropping the CHILD_OF reference.) */
    span_begin(cons, svc, "consume", TRACE_KIND_CONSUMER, &handle->span.ctx);
    span_link(cons, &pub->span.ctx, NULL, 0);
    const trace_attr_t k_attrs[] = {A_BOOL("messaging.consumed", true)};
    span_attr(cons, &k_attrs[0]);
    span_finish(cons);
    span_finish(pub);

    /* INTERNAL: over every limit. */
    span_begin(work, svc, "work", TRACE_KIND_INTERNAL, &handle->span.ctx);
    static const char keys[20][12] = {"test.n0", "test.n1", "test.n2", "test.n3", "test.n4",
                                      "test.n5", "test.n6", "test.n7", "test.n8", "test.n9",
                                      "test.n10", "test.n11", "test.n12", "test.n13", "test.n14",
                                      "test.n15", "test.n16", "test.n17", "test.n18", "test.n19"};
    for (int i = 0; i < 20; i++) {
        trace_attr_t a = {.key = keys[i], .key_len = strlen(keys[i]), .type = TRACE_ATTR_INT, .v.i = i * 11};
        span_attr(work, &a);
    }
    const trace_attr_t big[] = {A_INT("e0", 0), A_INT("e1", 1), A_INT("e2", 2),
                                A_INT("e3", 3), A_INT("e4", 4), A_INT("e5", 5)};
    span_event(work, "big", big, 6);
    for (int i = 1; i < 5; i++)
        span_event(work, "step", big, 1);
    const trace_attr_t lb[] = {A_INT("l0", 0), A_INT("l1", 1), A_INT("l2", 2), A_INT("l3", 3), A_INT("l4", 4)};
    span_link(work, &call->span.ctx, lb, 5);
    span_link(work, &cons->span.ctx, NULL, 0);
    span_link(work, &pub->span.ctx, NULL, 0);
    span_finish(work);

    span_finish(call);
    span_finish(handle);

    char tp[TRACE_TRACEPARENT_LEN + 1];
    trace_w3c_traceparent_format(&call->span.ctx, tp);
    printf("{\"service\":");
    json_str(svc, strlen(svc));
    printf(",\"version\":");
    json_str(version, strlen(version));
    printf(",\"pid\":%ld,\"next_parent\":\"%s\",\"spans\":[", (long)getpid(), tp);
    const wspan_t *order[] = {cons, pub, work, call, handle}; /* as they ended */
    for (int i = 0; i < 5; i++)
        span_print(order[i], i == 0);
    printf("]}\n");
}

static void bulk(const char *svc, long n, long interval_us)
{
    char name[160];
    for (long i = 0; i < n; i++) {
        int nl = snprintf(name, sizeof name, "%s-%ld", svc, i);
        trace_span_t s;
        trace_span_start(&s, &scope, name, (size_t)nl, TRACE_KIND_INTERNAL, NULL);
        trace_span_set_int(&s, "test.index", i);
        trace_span_end(&s);
        if (interval_us > 0) {
            struct timespec ts = {interval_us / 1000000, (interval_us % 1000000) * 1000};
            nanosleep(&ts, NULL);
        }
    }
    printf("{\"service\":");
    json_str(svc, strlen(svc));
    printf(",\"bulk\":%ld}\n", n);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s RING SERVICE [--version V] [--parent TRACEPARENT] "
                        "[--tracestate TS] [--bulk N [--interval-us U]]\n", argv[0]);
        return 2;
    }
    const char *version = "0.0.0", *parent_s = NULL, *ts = NULL;
    long nbulk = -1, interval = 0;
    for (int i = 3; i < argc; i++) {
        if (i + 1 >= argc) {
            fprintf(stderr, "span_writer: %s needs a value\n", argv[i]);
            return 2;
        }
        if (strcmp(argv[i], "--version") == 0)
            version = argv[++i];
        else if (strcmp(argv[i], "--parent") == 0)
            parent_s = argv[++i];
        else if (strcmp(argv[i], "--tracestate") == 0)
            ts = argv[++i];
        else if (strcmp(argv[i], "--bulk") == 0)
            nbulk = atol(argv[++i]);
        else if (strcmp(argv[i], "--interval-us") == 0)
            interval = atol(argv[++i]);
        else {
            fprintf(stderr, "span_writer: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    trace_context_t parent;
    char tsbuf[TRACE_TRACESTATE_MAX];
    if (parent_s) {
        if (trace_w3c_traceparent_parse(parent_s, strlen(parent_s), &parent) != 0) {
            fprintf(stderr, "span_writer: bad traceparent %s\n", parent_s);
            return 2;
        }
        if (ts) {
            int n = trace_w3c_tracestate_parse(ts, strlen(ts), tsbuf, sizeof tsbuf);
            if (n < 0) {
                fprintf(stderr, "span_writer: bad tracestate %s\n", ts);
                return 2;
            }
            parent.tracestate = tsbuf;
            parent.tracestate_len = (uint16_t)n;
        }
    }
    trace_limits_t lim = {.attr_count = LIM_ATTRS, .attr_value_len = TRACE_LIMIT_UNLIMITED,
                          .event_count = LIM_EVENTS, .link_count = LIM_LINKS,
                          .event_attr_count = LIM_EVENT_ATTRS, .link_attr_count = LIM_LINK_ATTRS};
    trace_sampler_t always;
    char err[256] = "";
    if (trace_sampler_parse("always_on", NULL, &always, err, sizeof err) != 0) {
        fprintf(stderr, "span_writer: %s\n", err);
        return 1;
    }
    trace_options_t o = {.service_name = argv[2], .service_version = version, .ring_name = argv[1],
                         .create_ring = true, .limits = &lim, .sampler = &always};
    if (trace_init(&o, err, sizeof err) != 0) {
        fprintf(stderr, "span_writer: trace_init: %s\n", err);
        return 1;
    }
    if (nbulk >= 0)
        bulk(argv[2], nbulk, interval);
    else
        described_set(argv[2], version, parent_s ? &parent : NULL);
    fflush(stdout);
    trace_shutdown();
    return 0;
}
