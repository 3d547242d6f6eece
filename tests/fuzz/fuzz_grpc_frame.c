/*
 * tests/fuzz/fuzz_grpc_frame.c - the gRPC client's memory-only parsers
 * (core/grpc.h): Length-Prefixed-Message framing of a response body,
 * grpc-timeout, percent-decoding (and the server's percent-encoding) of
 * grpc-message, base64 of -bin metadata.
 * Input: the whole buffer is parsed as a response body (frames walked until
 * the end), and as each header value.  Asserts bounds and round trips:
 * frames stay inside the buffer, format(parse(t)) parses to a value >= t,
 * decode(encode(decode(x))) == decode(x).
 */
#include <stdlib.h>
#include <string.h>

#include "grpc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Framing: walk every message like a streaming reader would. */
    size_t off = 0;
    while (off < size) {
        grpc_frame_t f;
        long n = grpc_frame_parse(data + off, size - off, 1u << 20, &f);
        if (n == -1 || n == -2 || n == -3)
            break;
        if (n < (long)GRPC_FRAME_HDR || (size_t)n > size - off || f.msg != data + off + GRPC_FRAME_HDR ||
            f.len != (size_t)n - GRPC_FRAME_HDR)
            abort();
        off += (size_t)n;
    }

    /* grpc-timeout */
    uint64_t ns, ns2;
    if (grpc_timeout_parse((const char *)data, size, &ns) == 0) {
        char buf[16];
        int n = grpc_timeout_format(ns, buf, sizeof buf);
        if (n < 2 || n > 9 || grpc_timeout_parse(buf, (size_t)n, &ns2) != 0 || ns2 < ns)
            abort();
    }

    /* grpc-message percent-decoding never grows the text */
    char *txt = malloc(size + 1);
    long m = grpc_percent_decode((const char *)data, size, txt, size);
    if (m < 0 || (size_t)m > size)
        abort();

    /* base64 */
    uint8_t *raw = malloc(size + 1), *raw2 = malloc(size + 1);
    long r = grpc_base64_decode((const char *)data, size, raw, size + 1);
    if (r >= 0) {
        size_t elen = grpc_base64_encoded_len((size_t)r);
        char *enc = malloc(elen + 1);
        if (grpc_base64_encode(raw, (size_t)r, enc, elen + 1) != (long)elen)
            abort();
        long r2 = grpc_base64_decode(enc, elen, raw2, size + 1);
        if (r2 != r || memcmp(raw, raw2, (size_t)r) != 0)
            abort();
        free(enc);
    }
    /* grpc-message percent-encoding (server side): decode(encode(x)) == x,
     * and the encoded text is printable ASCII without a bare '%' escape. */
    char *penc = malloc(size * 3 + 1), *pdec = malloc(size + 1);
    long pe = grpc_percent_encode((const char *)data, size, penc, size * 3 + 1);
    if (pe < 0 || (size_t)pe > size * 3 || penc[pe] != '\0')
        abort();
    for (long i = 0; i < pe; i++)
        if ((unsigned char)penc[i] < 0x20 || (unsigned char)penc[i] > 0x7e)
            abort();
    long pd = grpc_percent_decode(penc, (size_t)pe, pdec, size + 1);
    if (pd != (long)size || (size && memcmp(pdec, data, size) != 0))
        abort();
    free(penc);
    free(pdec);
    (void)grpc_status_from_http(size >= 2 ? data[0] * 256 + data[1] : 0);
    free(txt);
    free(raw);
    free(raw2);
    return 0;
}
