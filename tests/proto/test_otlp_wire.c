/*
 * tests/proto/test_otlp_wire.c - proves our hand-written OTLP .proto files
 * put every field where the OTLP specification says, byte by byte.
 *
 * A wrong field number or type in proto/ still round-trips through
 * protobuf-c, so this test compares packed bytes against encodings written
 * out by hand from the protobuf wire format (tag = field << 3 | wire type;
 * 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32; little-endian fixed
 * widths). It also decodes a hand-made grpc-status-details-bin payload
 * (google.rpc.Status carrying a RetryInfo) the way the exporter will.
 *
 *   meson test -C var/build/main otlp_wire
 */
#include <stdint.h>
#include <string.h>

#include "otlp_proto.h"
#include "tap.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Returns 1 if needle occurs in hay. */
static int contains(const uint8_t *hay, size_t hay_len, const uint8_t *needle, size_t needle_len)
{
    for (size_t i = 0; i + needle_len <= hay_len; i++)
        if (memcmp(hay + i, needle, needle_len) == 0)
            return 1;
    return 0;
}

/* Shows where two encodings part, with the bytes that follow on each side. */
static void show_diff(const uint8_t *got, size_t got_len, const uint8_t *want, size_t want_len)
{
    size_t i = 0;
    while (i < got_len && i < want_len && got[i] == want[i])
        i++;
    char g[3 * 16 + 1] = "", w[3 * 16 + 1] = "";
    for (size_t k = 0; k < 16; k++) {
        if (i + k < got_len)
            snprintf(g + 3 * k, 4, "%02x ", got[i + k]);
        if (i + k < want_len)
            snprintf(w + 3 * k, 4, "%02x ", want[i + k]);
    }
    tap_diag("first difference at byte %zu: got %s| expected %s", i, g, w);
}

static const uint8_t trace_id[16] = {0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6,
                                     0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36};
static const uint8_t span_id[8] = {0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7};
static const uint8_t link_span_id[8] = {1, 2, 3, 4, 5, 6, 7, 8};

/*
 * The span below, encoded by hand. protobuf-c writes fields in field-number
 * order, which is also the canonical order, so the whole message can be
 * compared at once.
 */
static const uint8_t span_expected[] = {
    0x0a, 0x10, /* 1 trace_id, bytes, len 16 */
    0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36,
    0x12, 0x08, /* 2 span_id, bytes, len 8 */
    0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7,
    0x2a, 0x01, 'x',  /* 5 name */
    0x30, 0x02,       /* 6 kind = SPAN_KIND_SERVER */
    0x39,             /* 7 start_time_unix_nano, fixed64 */
    0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,
    0x41,             /* 8 end_time_unix_nano, fixed64 */
    0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11,
    0x4a, 0x08,       /* 9 attributes: KeyValue, len 8 */
    0x0a, 0x01, 'a',  /*   1 key */
    0x12, 0x03,       /*   2 value: AnyValue, len 3 */
    0x0a, 0x01, 'b',  /*     1 string_value */
    0x50, 0x03,       /* 10 dropped_attributes_count = 3 */
    0x5a, 0x0c,       /* 11 events: Event, len 12 */
    0x09,             /*   1 time_unix_nano, fixed64 */
    0x2a, 0, 0, 0, 0, 0, 0, 0,
    0x12, 0x01, 'e',  /*   2 name */
    0x6a, 0x0f,       /* 13 links: Link, len 15 */
    0x12, 0x08,       /*   2 span_id */
    1, 2, 3, 4, 5, 6, 7, 8,
    0x35,             /*   6 flags, fixed32 */
    0x01, 0x03, 0x00, 0x00,
    0x70, 0x01,       /* 14 dropped_links_count = 1 */
    0x7a, 0x08,       /* 15 status: Status, len 8 */
    0x12, 0x04, 'b', 'o', 'o', 'm', /* 2 message */
    0x18, 0x02,       /*   3 code = STATUS_CODE_ERROR */
    0x85, 0x01,       /* 16 flags, fixed32: tag 16<<3|5 = 133, two varint bytes */
    0x01, 0x03, 0x00, 0x00,
};

static void test_export_request(void)
{
    Opentelemetry__Proto__Common__V1__AnyValue val = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__INIT;
    val.value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_STRING_VALUE;
    val.string_value = (char *)"b";
    Opentelemetry__Proto__Common__V1__KeyValue kv = OPENTELEMETRY__PROTO__COMMON__V1__KEY_VALUE__INIT;
    kv.key = (char *)"a";
    kv.value = &val;
    Opentelemetry__Proto__Common__V1__KeyValue *attrs[] = {&kv};

    Opentelemetry__Proto__Trace__V1__Span__Event ev = OPENTELEMETRY__PROTO__TRACE__V1__SPAN__EVENT__INIT;
    ev.time_unix_nano = 42;
    ev.name = (char *)"e";
    Opentelemetry__Proto__Trace__V1__Span__Event *events[] = {&ev};

    Opentelemetry__Proto__Trace__V1__Span__Link link = OPENTELEMETRY__PROTO__TRACE__V1__SPAN__LINK__INIT;
    link.span_id.data = (uint8_t *)link_span_id;
    link.span_id.len = sizeof(link_span_id);
    link.flags = 0x301;
    Opentelemetry__Proto__Trace__V1__Span__Link *links[] = {&link};

    Opentelemetry__Proto__Trace__V1__Status st = OPENTELEMETRY__PROTO__TRACE__V1__STATUS__INIT;
    st.message = (char *)"boom";
    st.code = OPENTELEMETRY__PROTO__TRACE__V1__STATUS__STATUS_CODE__STATUS_CODE_ERROR;

    Opentelemetry__Proto__Trace__V1__Span span = OPENTELEMETRY__PROTO__TRACE__V1__SPAN__INIT;
    span.trace_id.data = (uint8_t *)trace_id;
    span.trace_id.len = sizeof(trace_id);
    span.span_id.data = (uint8_t *)span_id;
    span.span_id.len = sizeof(span_id);
    /* sampled + parent-is-remote known + remote: bits 0, 8, 9 */
    span.flags = 0x301;
    span.name = (char *)"x";
    span.kind = OPENTELEMETRY__PROTO__TRACE__V1__SPAN__SPAN_KIND__SPAN_KIND_SERVER;
    span.start_time_unix_nano = 0x0102030405060708ull;
    span.end_time_unix_nano = 0x1112131415161718ull;
    span.n_attributes = ARRAY_LEN(attrs);
    span.attributes = attrs;
    span.dropped_attributes_count = 3;
    span.n_events = ARRAY_LEN(events);
    span.events = events;
    span.n_links = ARRAY_LEN(links);
    span.links = links;
    span.dropped_links_count = 1;
    span.status = &st;
    Opentelemetry__Proto__Trace__V1__Span *spans[] = {&span};

    Opentelemetry__Proto__Common__V1__InstrumentationScope scope =
        OPENTELEMETRY__PROTO__COMMON__V1__INSTRUMENTATION_SCOPE__INIT;
    scope.name = (char *)"s";
    Opentelemetry__Proto__Trace__V1__ScopeSpans ss = OPENTELEMETRY__PROTO__TRACE__V1__SCOPE_SPANS__INIT;
    ss.scope = &scope;
    ss.n_spans = 1;
    ss.spans = spans;
    ss.schema_url = (char *)"u";
    Opentelemetry__Proto__Trace__V1__ScopeSpans *sss[] = {&ss};

    Opentelemetry__Proto__Resource__V1__Resource res = OPENTELEMETRY__PROTO__RESOURCE__V1__RESOURCE__INIT;
    res.dropped_attributes_count = 5;
    Opentelemetry__Proto__Trace__V1__ResourceSpans rs = OPENTELEMETRY__PROTO__TRACE__V1__RESOURCE_SPANS__INIT;
    rs.resource = &res;
    rs.n_scope_spans = 1;
    rs.scope_spans = sss;
    Opentelemetry__Proto__Trace__V1__ResourceSpans *rss[] = {&rs};

    Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceRequest req =
        OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_SERVICE_REQUEST__INIT;
    req.n_resource_spans = 1;
    req.resource_spans = rss;

    /* The span alone, against the hand encoding. */
    uint8_t sbuf[256];
    size_t slen = opentelemetry__proto__trace__v1__span__get_packed_size(&span);
    tap_check(slen == sizeof(span_expected), "span packs to %zu bytes (got %zu)", sizeof(span_expected), slen);
    if (slen <= sizeof(sbuf)) {
        opentelemetry__proto__trace__v1__span__pack(&span, sbuf);
        int same = slen == sizeof(span_expected) && memcmp(sbuf, span_expected, slen) == 0;
        tap_check(same, "span bytes equal the hand-written wire encoding");
        if (!same) {
            show_diff(sbuf, slen, span_expected, sizeof(span_expected));
        }
    }

    /* The whole request: nesting tags and a few fields spotted inside. */
    uint8_t buf[512];
    size_t len = opentelemetry__proto__collector__trace__v1__export_trace_service_request__get_packed_size(&req);
    if (!tap_check(len <= sizeof(buf), "request fits the test buffer (%zu bytes)", len))
        return;
    opentelemetry__proto__collector__trace__v1__export_trace_service_request__pack(&req, buf);
    tap_check(buf[0] == 0x0a, "request starts with resource_spans (field 1, LEN): 0x%02x", buf[0]);
    /* ResourceSpans: 1 resource {2 dropped_attributes_count = 5}, then 2 scope_spans. */
    static const uint8_t res_enc[] = {0x0a, 0x02, 0x10, 0x05, 0x12};
    tap_check(contains(buf, len, res_enc, sizeof(res_enc)),
              "resource (ResourceSpans.1) then scope_spans (ResourceSpans.2) in place");
    /* ScopeSpans: 1 scope {1 name "s"}, 2 spans {...}. */
    static const uint8_t scope_enc[] = {0x0a, 0x03, 0x0a, 0x01, 's', 0x12, (uint8_t)sizeof(span_expected)};
    tap_check(contains(buf, len, scope_enc, sizeof(scope_enc)), "scope (ScopeSpans.1) name and spans (ScopeSpans.2) tag");
    static const uint8_t schema_enc[] = {0x1a, 0x01, 'u'};
    tap_check(len >= 3 && memcmp(buf + len - 3, schema_enc, 3) == 0, "ScopeSpans.schema_url is field 3, written last");
    static const uint8_t start_enc[] = {0x39, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01};
    tap_check(contains(buf, len, start_enc, sizeof(start_enc)), "start_time_unix_nano: tag 0x39 (field 7, fixed64) + 8 LE bytes");
    static const uint8_t flags_enc[] = {0x85, 0x01, 0x01, 0x03, 0x00, 0x00};
    tap_check(contains(buf, len, flags_enc, sizeof(flags_enc)), "flags: tag 0x85 0x01 (field 16, fixed32) + 4 LE bytes");
    static const uint8_t status_enc[] = {0x7a, 0x08, 0x12, 0x04, 'b', 'o', 'o', 'm', 0x18, 0x02};
    tap_check(contains(buf, len, status_enc, sizeof(status_enc)), "status: message is field 2, code is field 3");

    /* Round trip: what we wrote reads back unchanged. */
    Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceRequest *back =
        opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(NULL, len, buf);
    if (!tap_check(back != NULL, "request unpacks"))
        return;
    const Opentelemetry__Proto__Trace__V1__Span *s = back->resource_spans[0]->scope_spans[0]->spans[0];
    tap_check(s->start_time_unix_nano == span.start_time_unix_nano && s->end_time_unix_nano == span.end_time_unix_nano &&
                  s->flags == 0x301 && s->trace_id.len == 16 && memcmp(s->trace_id.data, trace_id, 16) == 0 &&
                  s->status && s->status->code == OPENTELEMETRY__PROTO__TRACE__V1__STATUS__STATUS_CODE__STATUS_CODE_ERROR &&
                  strcmp(s->status->message, "boom") == 0,
              "span fields survive pack/unpack");
    opentelemetry__proto__collector__trace__v1__export_trace_service_request__free_unpacked(back, NULL);
}

static void test_partial_success(void)
{
    /* ExportTraceServiceResponse{partial_success{rejected_spans=3, error_message="no"}} */
    static const uint8_t wire[] = {0x0a, 0x06, 0x08, 0x03, 0x12, 0x02, 'n', 'o'};
    Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceResponse *r =
        opentelemetry__proto__collector__trace__v1__export_trace_service_response__unpack(NULL, sizeof(wire), wire);
    tap_check(r && r->partial_success && r->partial_success->rejected_spans == 3 &&
                  strcmp(r->partial_success->error_message, "no") == 0,
              "ExportTraceServiceResponse.partial_success decodes rejected_spans=1, error_message=2");
    if (r)
        opentelemetry__proto__collector__trace__v1__export_trace_service_response__free_unpacked(r, NULL);
}

static void test_retry_info(void)
{
    /* What a server puts (before base64) in grpc-status-details-bin:
     * google.rpc.Status{code=8 RESOURCE_EXHAUSTED, message="slow down",
     *   details=[Any{type_url=".../google.rpc.RetryInfo",
     *                value=RetryInfo{retry_delay=Duration{2s, 500000000ns}}}]} */
    static const char type_url[] = "type.googleapis.com/google.rpc.RetryInfo";
    uint8_t wire[128];
    size_t n = 0;
    const uint8_t head[] = {0x08, 0x08, 0x12, 0x09, 's', 'l', 'o', 'w', ' ', 'd', 'o', 'w', 'n',
                            0x1a, 54, /* 3 details: Any, len 54 */
                            0x0a, 40 /* 1 type_url, len 40 */};
    memcpy(wire + n, head, sizeof(head));
    n += sizeof(head);
    memcpy(wire + n, type_url, 40);
    n += 40;
    const uint8_t tail[] = {0x12, 10,         /* 2 value, len 10 */
                            0x0a, 8,          /* RetryInfo.1 retry_delay, len 8 */
                            0x08, 0x02,       /* Duration.1 seconds = 2 */
                            0x10, 0x80, 0xca, 0xb5, 0xee, 0x01 /* Duration.2 nanos = 500000000 */};
    memcpy(wire + n, tail, sizeof(tail));
    n += sizeof(tail);

    Google__Rpc__Status *st = google__rpc__status__unpack(NULL, n, wire);
    if (!tap_check(st != NULL, "google.rpc.Status unpacks"))
        return;
    tap_check(st->code == 8 && strcmp(st->message, "slow down") == 0 && st->n_details == 1,
              "Status code=1 message=2 details=3 (code %d, %zu details)", st->code, st->n_details);
    if (st->n_details == 1) {
        const Google__Protobuf__Any *any = st->details[0];
        tap_check(strcmp(any->type_url, type_url) == 0, "Any.type_url is field 1");
        Google__Rpc__RetryInfo *ri = google__rpc__retry_info__unpack(NULL, any->value.len, any->value.data);
        tap_check(ri && ri->retry_delay && ri->retry_delay->seconds == 2 && ri->retry_delay->nanos == 500000000,
                  "RetryInfo.retry_delay = 2.5 s via Any.value (field 2)");
        if (ri)
            google__rpc__retry_info__free_unpacked(ri, NULL);
    }
    google__rpc__status__free_unpacked(st, NULL);
}

int main(void)
{
    test_export_request();
    test_partial_success();
    test_retry_info();
    return tap_done();
}
