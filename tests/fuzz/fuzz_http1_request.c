/*
 * tests/fuzz/fuzz_http1_request.c - the HTTP/1.1 request parser that
 * shop-payment-sim uses (core/http1_client.h, pure).  Asserts views inside
 * the input, a head length within it, and -2 for every cut of a complete
 * head that is not already bad; and what the gateway (services/gateway,
 * whose request heads this parser reads) relies on: never chunked and
 * Content-Length at once, Content-Length equal to the header, the same head
 * with its 256 header slots.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http1_client.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size ? size : 1);
    if (buf == NULL)
        return 0;
    memcpy(buf, data, size);
    http1c_head_t h;
    http1c_header_t hd[32];
    int n = http1c_parse_request(buf, size, &h, hd, 32);
    if (n > 0) {
        if ((size_t)n > size || h.method_len == 0 || h.target_len == 0 || h.target[0] != '/' ||
            h.method < buf || h.target + h.target_len > buf + n || h.num_headers > 32)
            abort();
        for (size_t i = 0; i < h.num_headers; i++)
            if (hd[i].name < buf || hd[i].value + hd[i].value_len > buf + n)
                abort();
        /* what the gateway's limits rely on: no request both chunked and
         * Content-Length (smuggling), a Content-Length equal to every such
         * header's value, and the same head with the gateway's 256 slots */
        if (h.content_length < -1 || (h.chunked && h.content_length != -1))
            abort();
        for (size_t i = 0; i < h.num_headers; i++) {
            if (hd[i].name_len != 14 || strncasecmp(hd[i].name, "content-length", 14) != 0)
                continue;
            int64_t v = 0;
            for (size_t k = 0; k < hd[i].value_len; k++)
                v = v * 10 + (hd[i].value[k] - '0');
            if (v != h.content_length)
                abort();
        }
        http1c_head_t h256;
        http1c_header_t hd256[256];
        if (http1c_parse_request(buf, size, &h256, hd256, 256) != n ||
            h256.content_length != h.content_length || h256.chunked != h.chunked ||
            h256.num_headers != h.num_headers)
            abort();
        int m = http1c_parse_request(buf, (size_t)n - 1, &h, hd, 32);
        if (m != -2 && m != -1)
            abort();
    } else if (n != -1 && n != -2) {
        abort();
    }
    free(buf);
    return 0;
}
