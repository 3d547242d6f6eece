/*
 * tests/fuzz/fuzz_traceparent.c - traceparent + tracestate parsers.
 * Input: "<traceparent>\n<tracestate>".  Asserts the round trip:
 * format(parse(x)) parses again to the same context, and a normalised
 * tracestate parses to itself.
 */
#include <stdlib.h>
#include <string.h>

#include "core.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    const char *nl = memchr(s, '\n', size);
    size_t tplen = nl ? (size_t)(nl - s) : size;
    trace_context_t c, d;
    if (trace_w3c_traceparent_parse(s, tplen, &c) == 0) {
        char out[TRACE_TRACEPARENT_LEN + 1];
        if (trace_w3c_traceparent_format(&c, out) != (int)TRACE_TRACEPARENT_LEN)
            abort();
        if (trace_w3c_traceparent_parse(out, TRACE_TRACEPARENT_LEN, &d) != 0 ||
            memcmp(c.trace_id, d.trace_id, 16) != 0 || memcmp(c.span_id, d.span_id, 8) != 0 ||
            c.flags != d.flags)
            abort();
    }
    if (nl) {
        const char *ts = nl + 1;
        size_t tslen = size - tplen - 1;
        char a[TRACE_TRACESTATE_MAX], b[TRACE_TRACESTATE_MAX];
        int n = trace_w3c_tracestate_parse(ts, tslen, a, sizeof a);
        if (n > (int)sizeof a)
            abort();
        if (n >= 0) {
            int m = trace_w3c_tracestate_parse(a, (size_t)n, b, sizeof b);
            if (m != n || memcmp(a, b, (size_t)n) != 0)
                abort();
            char c2[TRACE_TRACESTATE_MAX];
            int k = trace_w3c_tracestate_set(a, (size_t)n, "shop", 4, "f1", 2, c2, sizeof c2);
            if (k < 0 || k > (int)sizeof c2 || trace_w3c_tracestate_parse(c2, (size_t)k, b, sizeof b) != k)
                abort();
        }
    }
    return 0;
}
