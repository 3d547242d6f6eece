/*
 * tests/fuzz/fuzz_baggage.c - the W3C baggage parser and formatter.
 * Asserts: format(parse(x)) parses again to the same members.
 */
#include <stdlib.h>
#include <string.h>

#include "core.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static trace_baggage_t a, b;
static char out[TRACE_BAGGAGE_BYTES_MAX + 1];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int n = trace_w3c_baggage_parse((const char *)data, size, &a);
    if (n < 0)
        return 0;
    if (n > (int)TRACE_BAGGAGE_MEMBERS_MAX)
        abort();
    int l = trace_w3c_baggage_format(&a, out, sizeof out);
    if (l < 0 || l > (int)TRACE_BAGGAGE_BYTES_MAX)
        abort();
    int m = trace_w3c_baggage_parse(out, (size_t)l, &b);
    if (m < 0 || m > n)
        abort();
    if (m == n)
        for (int i = 0; i < n; i++)
            if (a.m[i].key_len != b.m[i].key_len || memcmp(a.m[i].key, b.m[i].key, a.m[i].key_len) ||
                a.m[i].value_len != b.m[i].value_len ||
                memcmp(a.m[i].value, b.m[i].value, a.m[i].value_len))
                abort();
    return 0;
}
