/*
 * tests/fuzz/fuzz_grpc_server.c - the gRPC server's request handling
 * (core/grpc_server.c) through its memory-only connection
 * (grpc_server_mem_*): the real nghttp2 server session, header checks,
 * routing, deadlines, framing, gunzip and protobuf-c decoding of
 * shop.test.v1.EchoRequest, and the answers, with no socket.
 *
 * Input, by the low bit of the first byte:
 *   1: raw HTTP/2 bytes after the client preface, fed in chunks of
 *      (data[0] >> 1) + 1 bytes (nghttp2's frame parser, resumable input);
 *   0: one well-formed request built with an nghttp2 client session:
 *      data[1] picks the path (Echo, unknown, malformed), the content-type,
 *      grpc-encoding gzip and a grpc-timeout; the rest is the DATA body
 *      (a Length-Prefixed-Message, or not).
 * The handler replies at once, echoing the payload, so the response path
 * runs too.  Leaks and memory errors are what the sanitizers catch.
 */
#include <stdlib.h>
#include <string.h>

#include <nghttp2/nghttp2.h>

#include "core.h"
#include "grpc.h"
#include "shop/test/v1/echo.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static loop_t *g_loop;
static grpc_server_t *g_srv;

static void echo(grpc_server_call_t *call, const ProtobufCMessage *msg, void *arg)
{
    (void)arg;
    const Shop__Test__V1__EchoRequest *req = (const Shop__Test__V1__EchoRequest *)msg;
    Shop__Test__V1__EchoResponse resp = SHOP__TEST__V1__ECHO_RESPONSE__INIT;
    resp.payload = req->payload;
    size_t n;
    (void)grpc_server_call_metadata(call, &n);
    if (req->status_code)
        grpc_server_reply(call, (grpc_status_t)(req->status_code & 0xff), req->status_message, NULL);
    else
        grpc_server_reply(call, GRPC_STATUS_OK, NULL, &resp.base);
}

static void init(void)
{
    static const grpc_server_handler_cb handlers[] = {echo};
    char err[256] = "";
    trace_options_t o = {.service_name = "fuzz", .no_ring = true};
    if (trace_init(&o, err, sizeof err) != 0 || loop_create(&g_loop, NULL) != 0 ||
        grpc_server_new(g_loop, NULL, &g_srv) != 0 ||
        grpc_server_add_service(g_srv, &shop__test__v1__echo_service__descriptor, handlers, NULL) != 0)
        abort();
}

typedef struct {
    const uint8_t *p;
    size_t len;
} body_t;

static ssize_t body_read(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *ud)
{
    (void)s;
    (void)sid;
    (void)ud;
    body_t *b = src->ptr;
    size_t n = b->len < len ? b->len : len;
    memcpy(buf, b->p, n);
    b->p += n;
    b->len -= n;
    if (b->len == 0)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static void request(grpc_server_mem_t *m, const uint8_t *data, size_t size)
{
    uint8_t sel = size ? data[0] : 0;
    body_t body = {size ? data + 1 : data, size ? size - 1 : 0};
    static const char *const paths[] = {"/shop.test.v1.EchoService/Echo", "/shop.test.v1.EchoService/Nope", "/x",
                                        "noslash"};
    nghttp2_nv nv[8];
    size_t n = 0;
#define NV(k, v) nv[n++] = (nghttp2_nv){(uint8_t *)(k), (uint8_t *)(v), strlen(k), strlen(v), NGHTTP2_NV_FLAG_NONE}
    NV(":method", (sel & 0x40) ? "GET" : "POST");
    NV(":scheme", "http");
    NV(":path", paths[sel & 3]);
    NV(":authority", "fuzz");
    NV("content-type", (sel & 4) ? "text/plain" : "application/grpc");
    if (sel & 8)
        NV("grpc-encoding", "gzip");
    if (sel & 16)
        NV("grpc-timeout", "1S");
    if (sel & 32)
        NV("x-md-bin", "AAEC");
#undef NV
    nghttp2_session_callbacks *cbs;
    nghttp2_session *cl;
    if (nghttp2_session_callbacks_new(&cbs) != 0)
        abort();
    if (nghttp2_session_client_new(&cl, cbs, NULL) != 0)
        abort();
    nghttp2_session_callbacks_del(cbs);
    nghttp2_submit_settings(cl, NGHTTP2_FLAG_NONE, NULL, 0);
    nghttp2_data_provider prd = {.source = {.ptr = &body}, .read_callback = body_read};
    nghttp2_submit_request(cl, NULL, nv, n, &prd, NULL);
    const uint8_t *out;
    ssize_t k;
    while ((k = nghttp2_session_mem_send(cl, &out)) > 0)
        if (grpc_server_mem_feed(m, out, (size_t)k) != 0)
            break;
    nghttp2_session_del(cl);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_srv)
        init();
    grpc_server_mem_t *m;
    if (grpc_server_mem_new(g_srv, &m) != 0)
        abort();
    if (size && (data[0] & 1)) {
        static const char preface[] = NGHTTP2_CLIENT_MAGIC;
        size_t chunk = (size_t)(data[0] >> 1) + 1;
        if (grpc_server_mem_feed(m, (const uint8_t *)preface, sizeof preface - 1) == 0)
            for (size_t off = 1; off < size; off += chunk)
                if (grpc_server_mem_feed(m, data + off, size - off < chunk ? size - off : chunk) != 0)
                    break;
    } else {
        request(m, size ? data + 1 : data, size ? size - 1 : 0);
    }
    grpc_server_mem_free(m);
    return 0;
}
