/*
 * tests/grpc/test_grpc_server.c - the gRPC server (core/grpc_server.c) and
 * call tracing against real gRPC implementations:
 *   - grpcurl (var/tools/bin/grpcurl, tools/go/build.sh) and Python grpcio
 *     (tests/grpc/echo_client.py) calling tests/grpc/echo_server.c;
 *   - a raw HTTP/2 client (nghttp2, blocking socket) for what real clients
 *     never send: a bad preface, garbage frames, a wrong content-type, a
 *     truncated length prefix or body, a garbage message, and a deadline
 *     only the server enforces;
 *   - our client (grpc_call_unary_traced) calling our server (trace
 *     propagation end to end) and calling tests/py/echo_server.py;
 *   - spans: the echo server writes each span to a file, this process
 *     keeps its CLIENT spans through a trace sink;
 *   - SIGTERM with a slow call in flight: the call completes, exit 0.
 *
 * Usage: test_grpc_server REPO_ROOT ECHO_SERVER ECHO_PB  (meson passes them)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>

#include "core.h"
#include "grpc.h"
#include "shop/test/v1/echo.pb-c.h"
#include "tap.h"
#include "grpc_test.h"

#define MS 1000000ull
#define MIB (1u << 20)
#define ECHO "/shop.test.v1.EchoService/Echo"

static const char *g_root, *g_echo_bin, *g_echo_pb;
static char g_dir[64], g_spans[128], g_log[128];
static loop_t *g_loop;

/* ------------------------------------------------------------- processes */

/* Runs argv until it prints "listening on PORT" (tests/grpc/grpc_test.h). */
static int spawn_listener(char *const argv[], pid_t *pid_out)
{
    return spawn_listener_log(argv, g_log, pid_out);
}

/* Runs a shell command; returns its exit status and its stdout (malloc'd). */
static int run(const char *cmd, char **out)
{
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (cap - len < 4096) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
    }
    buf[len] = '\0';
    int st = pclose(p);
    *out = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ---------------------------------------------------------------- spans */

/* Finds a line of the echo server's spans file containing every needle
 * (NULL-terminated list); copies it into out. */
static bool span_find(char *out, size_t cap, const char *const *needles)
{
    for (int tries = 0; tries < 40; tries++) { /* the span ends as the answer goes out */
        FILE *f = fopen(g_spans, "r");
        char line[4096];
        while (f && fgets(line, sizeof line, f)) {
            bool all = true;
            for (const char *const *n = needles; *n && all; n++)
                all = strstr(line, *n) != NULL;
            if (all) {
                snprintf(out, cap, "%s", line);
                fclose(f);
                return true;
            }
        }
        if (f)
            fclose(f);
        usleep(50000);
    }
    return false;
}

/* Client spans of this process. */
typedef struct {
    char name[96], tid[33], sid[17], attrs[1024];
    int kind, status;
} cspan_t;
static cspan_t g_cspans[512];
static int g_ncspans;

static void sink(void *arg, const void *rec, uint32_t len, bool truncated)
{
    (void)arg;
    (void)truncated;
    span_record_t r;
    if (g_ncspans >= 512 || span_record_decode(rec, len, &r) != 0)
        return;
    cspan_t *s = &g_cspans[g_ncspans++];
    snprintf(s->name, sizeof s->name, "%.*s", (int)r.name.len, r.name.p);
    trace_id_hex(r.trace_id, 16, s->tid);
    trace_id_hex(r.span_id, 8, s->sid);
    s->kind = r.kind;
    s->status = r.status;
    size_t o = 0;
    uint32_t off = 0;
    span_record_item_t it;
    while (span_record_next(r.items, r.items_len, &off, &it) == 1 && o < sizeof s->attrs - 200) {
        if (it.tag != SPAN_ITEM_ATTR)
            continue;
        if (it.type == TRACE_ATTR_STRING)
            o += (size_t)snprintf(s->attrs + o, sizeof s->attrs - o, "%.*s=%.*s;", (int)it.key.len, it.key.p,
                                  (int)(it.value_len > 100 ? 100 : it.value_len), (const char *)it.value);
        else if (it.type == TRACE_ATTR_INT) {
            int64_t v;
            memcpy(&v, it.value, 8);
            o += (size_t)snprintf(s->attrs + o, sizeof s->attrs - o, "%.*s=%lld;", (int)it.key.len, it.key.p,
                                  (long long)v);
        }
    }
}

/* ----------------------------------------------------- raw HTTP/2 client */

typedef struct {
    int http, gst;
    char gmsg[256];
    uint32_t rst;
    bool done;
    const uint8_t *body;
    size_t blen, off;
} raw_t;

static int raw_on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                         const uint8_t *value, size_t vl, uint8_t flags, void *ud)
{
    (void)s;
    (void)f;
    (void)flags;
    raw_t *r = ud;
    if (nl == 7 && memcmp(name, ":status", 7) == 0)
        r->http = atoi((const char *)value);
    else if (nl == 11 && memcmp(name, "grpc-status", 11) == 0)
        r->gst = atoi((const char *)value);
    else if (nl == 12 && memcmp(name, "grpc-message", 12) == 0)
        snprintf(r->gmsg, sizeof r->gmsg, "%.*s", (int)vl, (const char *)value);
    return 0;
}

static int raw_on_close(nghttp2_session *s, int32_t sid, uint32_t err, void *ud)
{
    (void)s;
    (void)sid;
    raw_t *r = ud;
    r->rst = err;
    r->done = true;
    return 0;
}

static ssize_t raw_read(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t len, uint32_t *flags,
                        nghttp2_data_source *src, void *ud)
{
    (void)s;
    (void)sid;
    (void)ud;
    raw_t *r = src->ptr;
    size_t n = r->blen - r->off < len ? r->blen - r->off : len;
    if (n) /* an empty body has no pointer: memcpy(.., NULL, 0) is undefined */
        memcpy(buf, r->body + r->off, n);
    r->off += n;
    if (r->off == r->blen)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static int raw_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* One request with headers hdrs ("name", "value" pairs, NULL-ended) and a
 * body; returns the elapsed ms, fills r. */
static long raw_call(int port, const char *const *hdrs, const uint8_t *body, size_t blen, raw_t *r)
{
    memset(r, 0, sizeof *r);
    r->gst = -1;
    r->body = body;
    r->blen = blen;
    int fd = raw_connect(port);
    if (fd < 0)
        return -1;
    nghttp2_session_callbacks *cbs;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_on_header_callback(cbs, raw_on_header);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, raw_on_close);
    nghttp2_session *s;
    nghttp2_session_client_new(&s, cbs, r);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_submit_settings(s, NGHTTP2_FLAG_NONE, NULL, 0);
    nghttp2_nv nv[32];
    size_t n = 0;
    for (size_t i = 0; hdrs[i] && n < 32; i += 2)
        nv[n++] = (nghttp2_nv){(uint8_t *)(uintptr_t)hdrs[i], (uint8_t *)(uintptr_t)hdrs[i + 1], strlen(hdrs[i]),
                               strlen(hdrs[i + 1]), NGHTTP2_NV_FLAG_NONE};
    nghttp2_data_provider prd = {.source = {.ptr = r}, .read_callback = raw_read};
    nghttp2_submit_request(s, NULL, nv, n, &prd, NULL);
    uint64_t t0 = loop_now_ns();
    while (!r->done && loop_now_ns() - t0 < 10000 * MS) {
        const uint8_t *data;
        ssize_t k;
        while ((k = nghttp2_session_mem_send(s, &data)) > 0)
            if (send(fd, data, (size_t)k, MSG_NOSIGNAL) != k)
                goto out;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 50) > 0) {
            uint8_t buf[65536];
            ssize_t got = recv(fd, buf, sizeof buf, 0);
            if (got <= 0 || nghttp2_session_mem_recv(s, buf, (size_t)got) < 0)
                break;
        }
    }
out:
    nghttp2_session_del(s);
    close(fd);
    return (long)((loop_now_ns() - t0) / MS);
}

/* Sends bytes; true when the server then closes the connection. */
static bool raw_bytes_closed(int port, const void *bytes, size_t len)
{
    int fd = raw_connect(port);
    if (fd < 0)
        return false;
    (void)send(fd, bytes, len, MSG_NOSIGNAL);
    bool closed = false;
    uint64_t t0 = loop_now_ns();
    while (loop_now_ns() - t0 < 3000 * MS) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) > 0) {
            uint8_t buf[4096];
            ssize_t got = recv(fd, buf, sizeof buf, 0);
            if (got <= 0) {
                closed = true;
                break;
            }
        }
    }
    close(fd);
    return closed;
}

static uint8_t *echo_req(const Shop__Test__V1__EchoRequest *req, size_t *len, bool framed)
{
    size_t n = protobuf_c_message_get_packed_size(&req->base);
    uint8_t *b = malloc(n + 5);
    b[0] = 0;
    b[1] = (uint8_t)(n >> 24);
    b[2] = (uint8_t)(n >> 16);
    b[3] = (uint8_t)(n >> 8);
    b[4] = (uint8_t)n;
    protobuf_c_message_pack(&req->base, b + 5);
    if (!framed) {
        memmove(b, b + 5, n);
        *len = n;
    } else {
        *len = n + 5;
    }
    return b;
}

/* ------------------------------------------------------- our own client */

typedef struct {
    bool done;
    grpc_status_t status;
    char message[256];
    Shop__Test__V1__EchoResponse *resp;
    char trailers[512];
} res_t;

static void on_result(const grpc_result_t *r, void *arg)
{
    res_t *x = arg;
    x->done = true;
    x->status = r->status;
    snprintf(x->message, sizeof x->message, "%s", r->message);
    if (r->status == GRPC_STATUS_OK)
        x->resp = shop__test__v1__echo_response__unpack(NULL, r->response_len, r->response);
    size_t o = 0;
    for (size_t i = 0; i < r->n_trailers && o < sizeof x->trailers - 100; i++) {
        if (strncmp(r->trailers[i].key, "x-echo-", 7) != 0)
            continue;
        o += (size_t)snprintf(x->trailers + o, sizeof x->trailers - o, "%s=", r->trailers[i].key);
        for (size_t j = 0; j < r->trailers[i].value_len && o < sizeof x->trailers - 4; j++)
            o += (size_t)snprintf(x->trailers + o, sizeof x->trailers - o, "%02x", r->trailers[i].value[j]);
        x->trailers[o++] = ';';
        x->trailers[o] = '\0';
    }
}

typedef struct {
    res_t *r;
    int n;
} waitset_t;

static void tick(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)t;
    waitset_t *w = arg;
    for (int i = 0; i < w->n; i++)
        if (!w->r[i].done)
            return;
    loop_stop(loop);
}

static void wait_all(res_t *r, int n, uint64_t timeout_ms)
{
    waitset_t w = {r, n};
    loop_timer_t t, guard;
    loop_timer_init(&t);
    loop_timer_init(&guard);
    loop_timer_start(g_loop, &t, MS, MS, tick, &w);
    uint64_t end = loop_now_ns() + timeout_ms * MS;
    while (loop_now_ns() < end) {
        loop_run(g_loop);
        bool all = true;
        for (int i = 0; i < n; i++)
            all = all && r[i].done;
        if (all)
            break;
    }
    loop_timer_stop(g_loop, &t);
}

static void res_free(res_t *r, int n)
{
    for (int i = 0; i < n; i++)
        if (r[i].resp)
            shop__test__v1__echo_response__free_unpacked(r[i].resp, NULL);
}

/* One traced Echo call from our client; waits for it. */
static void our_call(grpc_channel_t *ch, const char *path, const Shop__Test__V1__EchoRequest *req,
                     uint64_t timeout_ms, const grpc_md_t *md, size_t n_md, res_t *r)
{
    memset(r, 0, sizeof *r);
    size_t len;
    uint8_t *b = echo_req(req, &len, false);
    int rc = grpc_call_unary_traced(ch, path, b, len, false, timeout_ms * MS, md, n_md, NULL, on_result, r);
    free(b);
    if (rc < 0) {
        r->done = true;
        r->status = GRPC_STATUS_INTERNAL;
        snprintf(r->message, sizeof r->message, "call start: %s", strerror(-rc));
        return;
    }
    wait_all(r, 1, 60000);
}

static const cspan_t *cspan_last(void)
{
    return g_ncspans ? &g_cspans[g_ncspans - 1] : NULL;
}

/* Our client against a server at port: the interop matrix.  `who` names
 * the server in the test lines. */
static void client_matrix(int port, const char *who)
{
    grpc_channel_t *ch;
    char err[256] = "";
    if (!tap_check(grpc_channel_new(g_loop, "127.0.0.1", (uint16_t)port, NULL, &ch, err, sizeof err) == 0,
                   "%s: channel: %s", who, err))
        return;
    res_t r;
    Shop__Test__V1__EchoRequest req = SHOP__TEST__V1__ECHO_REQUEST__INIT;
    req.payload.data = (uint8_t *)"hello";
    req.payload.len = 5;
    int before = g_ncspans;
    our_call(ch, ECHO, &req, 10000, NULL, 0, &r);
    tap_check(r.status == GRPC_STATUS_OK && r.resp && r.resp->payload.len == 5 &&
                  memcmp(r.resp->payload.data, "hello", 5) == 0,
              "%s: Echo OK echoes the payload (%s %s)", who, grpc_status_name(r.status), r.message);
    const cspan_t *cs = cspan_last();
    tap_check(g_ncspans == before + 1 && cs && cs->kind == TRACE_KIND_CLIENT &&
                  strcmp(cs->name, "shop.test.v1.EchoService/Echo") == 0 && cs->status == TRACE_STATUS_UNSET &&
                  strstr(cs->attrs, "rpc.system=grpc;") && strstr(cs->attrs, "rpc.service=shop.test.v1.EchoService;") &&
                  strstr(cs->attrs, "rpc.method=Echo;") && strstr(cs->attrs, "server.address=127.0.0.1;") &&
                  strstr(cs->attrs, "rpc.grpc.status_code=0;"),
              "%s: CLIENT span name, kind and attributes (%s)", who, cs ? cs->attrs : "none");
    tap_check(cs && r.resp && strcmp(r.resp->trace_id, cs->tid) == 0 && strcmp(r.resp->parent_span_id, cs->sid) == 0,
              "%s: traceparent injected: the server sees our trace id and span id as parent", who);
    res_free(&r, 1);

    static const char msg[] = "caf\xc3\xa9 100% \xe2\x9c\x93 %41 end";
    int good = 0;
    for (int code = 1; code <= 16; code++) {
        Shop__Test__V1__EchoRequest e = SHOP__TEST__V1__ECHO_REQUEST__INIT;
        e.status_code = code;
        e.status_message = (char *)msg;
        our_call(ch, ECHO, &e, 10000, NULL, 0, &r);
        if ((int)r.status == code && strcmp(r.message, msg) == 0)
            good++;
        else
            tap_diag("%s: status %d came back as %s '%s'", who, code, grpc_status_name(r.status), r.message);
        res_free(&r, 1);
    }
    tap_check(good == 16, "%s: all 16 non-OK codes round-trip with a non-ASCII/%% message (%d/16)", who, good);
    cs = cspan_last();
    tap_check(cs && cs->status == TRACE_STATUS_ERROR && strstr(cs->attrs, "error.type=UNAUTHENTICATED;") &&
                  strstr(cs->attrs, "rpc.grpc.status_code=16;"),
              "%s: CLIENT span of a non-OK call is Error with error.type", who);

    Shop__Test__V1__EchoRequest slow = SHOP__TEST__V1__ECHO_REQUEST__INIT;
    slow.delay_ms = 3000;
    uint64_t t0 = loop_now_ns();
    our_call(ch, ECHO, &slow, 300, NULL, 0, &r);
    uint64_t dt = (loop_now_ns() - t0) / MS;
    tap_check(r.status == GRPC_STATUS_DEADLINE_EXCEEDED && dt < 2000,
              "%s: 300 ms deadline on a 3 s call: DEADLINE_EXCEEDED after %llu ms", who, (unsigned long long)dt);
    res_free(&r, 1);

    Shop__Test__V1__EchoRequest big = SHOP__TEST__V1__ECHO_REQUEST__INIT;
    big.payload.len = 3 * MIB;
    big.payload.data = malloc(big.payload.len);
    for (size_t i = 0; i < big.payload.len; i++)
        big.payload.data[i] = (uint8_t)(i % 251);
    our_call(ch, ECHO, &big, 30000, NULL, 0, &r);
    tap_check(r.status == GRPC_STATUS_OK && r.resp && r.resp->payload.len == 3 * MIB &&
                  memcmp(r.resp->payload.data, big.payload.data, 3 * MIB) == 0,
              "%s: 3 MiB request echoed back (%s)", who, grpc_status_name(r.status));
    res_free(&r, 1);
    free(big.payload.data);
    Shop__Test__V1__EchoRequest bigresp = SHOP__TEST__V1__ECHO_REQUEST__INIT;
    bigresp.response_size = 3 * MIB;
    our_call(ch, ECHO, &bigresp, 30000, NULL, 0, &r);
    tap_check(r.status == GRPC_STATUS_OK && r.resp && r.resp->payload.len == 3 * MIB, "%s: 3 MiB response (%s)",
              who, grpc_status_name(r.status));
    res_free(&r, 1);
    bigresp.response_size = 4 * MIB + 16;
    our_call(ch, ECHO, &bigresp, 30000, NULL, 0, &r);
    tap_check(r.status == GRPC_STATUS_RESOURCE_EXHAUSTED, "%s: response over 4 MiB: RESOURCE_EXHAUSTED (%s %s)",
              who, grpc_status_name(r.status), r.message);
    res_free(&r, 1);

    our_call(ch, "/shop.test.v1.EchoService/Nope", &req, 10000, NULL, 0, &r);
    tap_check(r.status == GRPC_STATUS_UNIMPLEMENTED, "%s: unknown method: UNIMPLEMENTED (%s)", who,
              grpc_status_name(r.status));
    res_free(&r, 1);

    static const uint8_t blob[] = {0x00, 0xff, 0x01, 'b', 0x80};
    grpc_md_t md[] = {{"x-echo-text", (const uint8_t *)"plain", 5}, {"x-echo-blob-bin", blob, sizeof blob}};
    Shop__Test__V1__EchoRequest mreq = SHOP__TEST__V1__ECHO_REQUEST__INIT;
    mreq.echo_metadata = true;
    our_call(ch, ECHO, &mreq, 10000, md, 2, &r);
    bool seen_text = false, seen_blob = false;
    for (size_t i = 0; r.resp && i < r.resp->n_metadata; i++) {
        const Shop__Test__V1__MetadataEntry *e = r.resp->metadata[i];
        seen_text |= strcmp(e->key, "x-echo-text") == 0 && e->value.len == 5 && memcmp(e->value.data, "plain", 5) == 0;
        seen_blob |= strcmp(e->key, "x-echo-blob-bin") == 0 && e->value.len == sizeof blob &&
                     memcmp(e->value.data, blob, sizeof blob) == 0;
    }
    tap_check(seen_text && seen_blob, "%s: metadata reaches the server, -bin decoded", who);
    tap_check(strstr(r.trailers, "x-echo-text=706c61696e;") && strstr(r.trailers, "x-echo-blob-bin=00ff016280;"),
              "%s: metadata comes back as trailers, -bin round trip (%s)", who, r.trailers);
    res_free(&r, 1);

    static res_t many[100];
    static Shop__Test__V1__EchoRequest mr[100];
    static char pay[100][8];
    memset(many, 0, sizeof many);
    t0 = loop_now_ns();
    int started = 0;
    for (int i = 0; i < 100; i++) {
        shop__test__v1__echo_request__init(&mr[i]);
        snprintf(pay[i], sizeof pay[i], "c%d", i);
        mr[i].payload.data = (uint8_t *)pay[i];
        mr[i].payload.len = strlen(pay[i]);
        mr[i].delay_ms = 200;
        size_t len;
        uint8_t *b = echo_req(&mr[i], &len, false);
        if (grpc_call_unary(ch, ECHO, b, len, false, 30000 * MS, NULL, 0, on_result, &many[i]) == 0)
            started++;
        else
            many[i].done = true;
        free(b);
    }
    wait_all(many, 100, 60000);
    dt = (loop_now_ns() - t0) / MS;
    int ok = 0;
    for (int i = 0; i < 100; i++)
        ok += many[i].status == GRPC_STATUS_OK && many[i].resp && many[i].resp->payload.len == strlen(pay[i]) &&
              memcmp(many[i].resp->payload.data, pay[i], strlen(pay[i])) == 0;
    tap_check(started == 100 && ok == 100, "%s: 100 concurrent calls on one connection all OK (%d/100)", who, ok);
    tap_check(dt < 5000, "%s: the 100 calls overlapped (%llu ms, 200 ms each)", who, (unsigned long long)dt);
    res_free(many, 100);
    grpc_channel_stats_t st;
    grpc_channel_stats(ch, &st);
    tap_check(st.connects == 1, "%s: one multiplexed connection for every call (%llu connects)", who,
              (unsigned long long)st.connects);
    grpc_channel_free(ch);
}

/* ------------------------------------------------------------ the tests */

static void test_grpcurl(int port)
{
    char grpcurl[1024];
    snprintf(grpcurl, sizeof grpcurl, "%s/var/tools/bin/grpcurl", g_root);
    if (access(grpcurl, X_OK) != 0) {
        tap_check(1, "# SKIP grpcurl not built (tools/go/build.sh)");
        return;
    }
    char base[2048], cmd[4096];
    snprintf(base, sizeof base, "cd '%s' && '%s' -plaintext -import-path proto -proto shop/test/v1/echo.proto", g_root,
             grpcurl);
    char *out;
    int st;
    snprintf(cmd, sizeof cmd, "%s -d '{\"payload\":\"aGVsbG8=\"}' 127.0.0.1:%d shop.test.v1.EchoService/Echo 2>&1",
             base, port);
    st = run(cmd, &out);
    tap_check(st == 0 && strstr(out, "\"payload\": \"aGVsbG8=\""), "grpcurl: Echo OK (%d: %.200s)", st, out);
    free(out);
    snprintf(cmd, sizeof cmd,
             "%s -d '{\"statusCode\":5,\"statusMessage\":\"caf\xc3\xa9 100%% %%41\"}' 127.0.0.1:%d "
             "shop.test.v1.EchoService/Echo 2>&1",
             base, port);
    st = run(cmd, &out);
    tap_check(st != 0 && strstr(out, "Code: NotFound") && strstr(out, "Message: caf\xc3\xa9 100% %41"),
              "grpcurl: NOT_FOUND with a non-ASCII/%% message (%.200s)", out);
    free(out);
    snprintf(cmd, sizeof cmd,
             "%s -d '{\"statusCode\":13,\"statusMessage\":\"boom\"}' 127.0.0.1:%d shop.test.v1.EchoService/Echo 2>&1",
             base, port);
    st = run(cmd, &out);
    tap_check(st != 0 && strstr(out, "Code: Internal") && strstr(out, "Message: boom"), "grpcurl: INTERNAL (%.200s)",
              out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s -max-time 0.3 -d '{\"delayMs\":3000}' 127.0.0.1:%d shop.test.v1.EchoService/Echo 2>&1",
             base, port);
    st = run(cmd, &out);
    tap_check(st != 0 && strstr(out, "DeadlineExceeded"), "grpcurl: deadline 300 ms on a 3 s call (%.200s)", out);
    free(out);
    snprintf(cmd, sizeof cmd,
             "%s -v -H 'x-echo-k: v1' -H 'x-echo-b-bin: AAEC' -d '{\"echoMetadata\":true}' 127.0.0.1:%d "
             "shop.test.v1.EchoService/Echo 2>&1",
             base, port);
    st = run(cmd, &out);
    tap_check(st == 0 && strstr(out, "\"key\": \"x-echo-k\"") && strstr(out, "\"value\": \"djE=\"") &&
                  strstr(out, "\"key\": \"x-echo-b-bin\"") && strstr(out, "\"value\": \"AAEC\""),
              "grpcurl: metadata (incl. -bin) reaches the handler (%.300s)", out);
    tap_check(strstr(out, "Response trailers received:") && strstr(out, "x-echo-k: v1"),
              "grpcurl: metadata comes back as trailers");
    free(out);
    snprintf(cmd, sizeof cmd, "%s -d '{\"responseSize\":3145728}' 127.0.0.1:%d shop.test.v1.EchoService/Echo 2>&1",
             base, port);
    st = run(cmd, &out);
    tap_check(st == 0 && strlen(out) > 4 * MIB, "grpcurl: 3 MiB response (%zu bytes of JSON)", strlen(out));
    free(out);
    /* 3 MiB and 5 MiB requests: JSON with a base64 payload on stdin. */
    for (int k = 0; k < 2; k++) {
        size_t raw = k == 0 ? 3 * MIB : 5 * MIB, b64 = (raw + 2) / 3 * 4;
        char path[160];
        snprintf(path, sizeof path, "%s/big%d.json", g_dir, k);
        FILE *f = fopen(path, "w");
        fprintf(f, "{\"payload\":\"");
        for (size_t i = 0; i < b64; i += 4)
            fputs("QUJD", f); /* "ABC" */
        fprintf(f, "\"}");
        fclose(f);
        snprintf(cmd, sizeof cmd, "%s -max-msg-sz 16777216 -d @ 127.0.0.1:%d shop.test.v1.EchoService/Echo < '%s' 2>&1",
                 base, port, path);
        st = run(cmd, &out);
        if (k == 0)
            tap_check(st == 0 && strlen(out) > b64, "grpcurl: 3 MiB request echoed (%d, %zu bytes)", st, strlen(out));
        else
            tap_check(st != 0 && strstr(out, "ResourceExhausted"), "grpcurl: 5 MiB request: RESOURCE_EXHAUSTED (%.200s)",
                      out);
        free(out);
    }
}

static void test_python_client(int port)
{
    char cmd[4096], *out;
    snprintf(cmd, sizeof cmd, "'%s/var/venv/bin/python' '%s/tests/grpc/echo_client.py' '%s' '%s' 127.0.0.1:%d 2>&1",
             g_root, g_root, g_root, g_echo_pb, port);
    int st = run(cmd, &out);
    int n = 0;
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, "PASS ", 5) == 0) {
            tap_check(1, "%s", line + 5);
            n++;
        } else if (strncmp(line, "FAIL ", 5) == 0) {
            tap_check(0, "%s", line + 5);
            n++;
        } else {
            tap_diag("python: %s", line);
        }
    }
    tap_check(st == 0 && n >= 25, "python grpcio client ran every case (%d, exit %d)", n, st);
    free(out);
}

static void test_raw(int port)
{
    char portbuf[16];
    snprintf(portbuf, sizeof portbuf, "127.0.0.1:%d", port);
    Shop__Test__V1__EchoRequest req = SHOP__TEST__V1__ECHO_REQUEST__INIT;
    req.payload.data = (uint8_t *)"raw";
    req.payload.len = 3;
    size_t len;
    uint8_t *good = echo_req(&req, &len, true);
    const char *grpc_hdrs[] = {":method", "POST", ":scheme", "http", ":path", ECHO, ":authority", portbuf,
                               "content-type", "application/grpc", "te", "trailers", NULL};
    raw_t r;
    raw_call(port, grpc_hdrs, good, len, &r);
    tap_check(r.http == 200 && r.gst == 0, "raw: a well-formed call is OK (http %d, grpc-status %d)", r.http, r.gst);

    const char *bad_ct[] = {":method", "POST", ":scheme", "http", ":path", ECHO, ":authority", portbuf,
                            "content-type", "application/json", NULL};
    raw_call(port, bad_ct, good, len, &r);
    tap_check(r.http == 415, "raw: content-type application/json: HTTP 415 (got %d)", r.http);

    static const uint8_t trunc_prefix[] = {0, 0, 0};
    raw_call(port, grpc_hdrs, trunc_prefix, sizeof trunc_prefix, &r);
    tap_check(r.http == 200 && r.gst == GRPC_STATUS_INTERNAL, "raw: truncated length prefix: INTERNAL (%d '%s')",
              r.gst, r.gmsg);
    static const uint8_t trunc_body[] = {0, 0, 0, 0, 100, 1, 2, 3};
    raw_call(port, grpc_hdrs, trunc_body, sizeof trunc_body, &r);
    tap_check(r.gst == GRPC_STATUS_INTERNAL, "raw: truncated message body: INTERNAL (%d '%s')", r.gst, r.gmsg);
    static const uint8_t garbage[] = {0, 0, 0, 0, 6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    raw_call(port, grpc_hdrs, garbage, sizeof garbage, &r);
    tap_check(r.gst == GRPC_STATUS_INTERNAL, "raw: garbage message body: INTERNAL (%d '%s')", r.gst, r.gmsg);
    uint8_t *comp = malloc(len);
    memcpy(comp, good, len);
    comp[0] = 1;
    raw_call(port, grpc_hdrs, comp, len, &r);
    tap_check(r.gst == GRPC_STATUS_INTERNAL, "raw: compressed flag without grpc-encoding: INTERNAL (%d)", r.gst);
    comp[0] = 7;
    raw_call(port, grpc_hdrs, comp, len, &r);
    tap_check(r.gst == GRPC_STATUS_INTERNAL, "raw: flag byte 7: INTERNAL (%d)", r.gst);
    free(comp);
    raw_call(port, grpc_hdrs, NULL, 0, &r);
    tap_check(r.gst == GRPC_STATUS_INTERNAL, "raw: no request message: INTERNAL (%d)", r.gst);
    uint8_t two[64];
    memcpy(two, good, len);
    memcpy(two + len, good, len);
    raw_call(port, grpc_hdrs, two, 2 * len, &r);
    tap_check(r.gst == GRPC_STATUS_INTERNAL, "raw: two messages in a unary call: INTERNAL (%d)", r.gst);
    const char *enc[] = {":method", "POST", ":scheme", "http", ":path", ECHO, ":authority", portbuf,
                         "content-type", "application/grpc", "grpc-encoding", "snappy", NULL};
    raw_call(port, enc, good, len, &r);
    tap_check(r.gst == GRPC_STATUS_UNIMPLEMENTED, "raw: unknown grpc-encoding: UNIMPLEMENTED (%d)", r.gst);

    /* The deadline only the server enforces (this client has none). */
    Shop__Test__V1__EchoRequest slow = SHOP__TEST__V1__ECHO_REQUEST__INIT;
    slow.delay_ms = 3000;
    size_t slen;
    uint8_t *sb = echo_req(&slow, &slen, true);
    const char *dl[] = {":method", "POST", ":scheme", "http", ":path", ECHO, ":authority", portbuf,
                        "content-type", "application/grpc+proto", "grpc-timeout", "200m", NULL};
    long ms = raw_call(port, dl, sb, slen, &r);
    tap_check(r.gst == GRPC_STATUS_DEADLINE_EXCEEDED && ms >= 150 && ms < 2000,
              "raw: grpc-timeout 200m on a 3 s call: the server answers DEADLINE_EXCEEDED after %ld ms", ms);
    free(sb);
    char line[4096];
    const char *need[] = {"|2|2|", "rpc.grpc.status_code=4;", "error.type=DEADLINE_EXCEEDED;", NULL};
    tap_check(span_find(line, sizeof line, need), "raw: its SERVER span is Error with DEADLINE_EXCEEDED");

    static const char http1[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    tap_check(raw_bytes_closed(port, http1, sizeof http1 - 1), "raw: bad preface (HTTP/1.1): connection closed");
    uint8_t junk[200];
    memcpy(junk, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24);
    for (size_t i = 24; i < sizeof junk; i++)
        junk[i] = (uint8_t)(i * 37 + 11);
    tap_check(raw_bytes_closed(port, junk, sizeof junk), "raw: garbage frames after the preface: connection closed");
    raw_call(port, grpc_hdrs, good, len, &r);
    tap_check(r.http == 200 && r.gst == 0, "raw: the server still serves after all that (grpc-status %d)", r.gst);
    free(good);
}

static void test_spans(int port)
{
    /* Our client -> our server: the SERVER span's parent is our CLIENT span. */
    grpc_channel_t *ch;
    char err[256], line[4096], want[128];
    grpc_channel_new(g_loop, "127.0.0.1", (uint16_t)port, NULL, &ch, err, sizeof err);
    Shop__Test__V1__EchoRequest req = SHOP__TEST__V1__ECHO_REQUEST__INIT;
    res_t r;
    our_call(ch, ECHO, &req, 10000, NULL, 0, &r);
    const cspan_t *cs = cspan_last();
    snprintf(want, sizeof want, "|%s|", cs ? cs->tid : "none");
    char parent[32];
    snprintf(parent, sizeof parent, "|%s|", cs ? cs->sid : "none");
    char portattr[64];
    snprintf(portattr, sizeof portattr, "server.port=%d;", port);
    const char *need[] = {"shop.test.v1.EchoService/Echo|2|0|", want, parent, "rpc.system=grpc;",
                          "rpc.service=shop.test.v1.EchoService;", "rpc.method=Echo;", "server.address=127.0.0.1;",
                          portattr, "rpc.grpc.status_code=0;", NULL};
    tap_check(r.status == GRPC_STATUS_OK && span_find(line, sizeof line, need),
              "spans: SERVER span in our client's trace, parent = our CLIENT span, semconv attributes");
    res_free(&r, 1);
    req.status_code = GRPC_STATUS_NOT_FOUND;
    req.status_message = (char *)"no such thing";
    our_call(ch, ECHO, &req, 10000, NULL, 0, &r);
    cs = cspan_last();
    snprintf(want, sizeof want, "|%s|", cs ? cs->tid : "none");
    const char *nf[] = {"|2|0|", want, "rpc.grpc.status_code=5;", NULL};
    tap_check(span_find(line, sizeof line, nf) && !strstr(line, "error.type"),
              "spans: NOT_FOUND leaves the SERVER span unset (a client fault)");
    tap_check(cs && cs->status == TRACE_STATUS_ERROR, "spans: ... while the CLIENT span is Error");
    req.status_code = GRPC_STATUS_UNAVAILABLE;
    our_call(ch, ECHO, &req, 10000, NULL, 0, &r);
    cs = cspan_last();
    snprintf(want, sizeof want, "|%s|", cs ? cs->tid : "none");
    const char *un[] = {"|2|2|", want, "rpc.grpc.status_code=14;", "error.type=UNAVAILABLE;", NULL};
    tap_check(span_find(line, sizeof line, un), "spans: UNAVAILABLE makes the SERVER span Error with error.type");
    our_call(ch, "/shop.test.v1.EchoService/Nope", &req, 10000, NULL, 0, &r);
    const char *ni[] = {"shop.test.v1.EchoService/Nope|2|2|", "rpc.grpc.status_code=12;", "rpc.method=Nope;", NULL};
    tap_check(r.status == GRPC_STATUS_UNIMPLEMENTED && span_find(line, sizeof line, ni),
              "spans: an unknown method gets an Error SERVER span (UNIMPLEMENTED)");
    grpc_channel_free(ch);
    /* The Python client's traceparent (echo_client.py's traced case). */
    const char *py[] = {"|2|0|4bf92f3577b34da6a3ce929d0e0e4736|", "|00f067aa0ba902b7|", NULL};
    tap_check(span_find(line, sizeof line, py), "spans: incoming traceparent -> SERVER span with that trace and parent");
}

static void idle_done(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)t;
    *(bool *)arg = true;
    loop_stop(loop);
}

/* Keepalive: our client PINGs our server while idle (answered, the
 * connection stays); the server PINGs a peer that never answers and drops
 * it. */
static void test_keepalive(void)
{
    setenv("ECHO_KEEPALIVE_MS", "300", 1);
    char *argv[] = {(char *)g_echo_bin, (char *)"0", NULL};
    pid_t pid;
    int port = spawn_listener(argv, &pid);
    unsetenv("ECHO_KEEPALIVE_MS");
    if (!tap_check(port > 0, "keepalive: echo server with a 300 ms keepalive up"))
        return;
    grpc_channel_t *ch;
    char err[256] = "";
    grpc_channel_opts_t o = {.keepalive_ns = 200 * MS};
    grpc_channel_new(g_loop, "127.0.0.1", (uint16_t)port, &o, &ch, err, sizeof err);
    Shop__Test__V1__EchoRequest req = SHOP__TEST__V1__ECHO_REQUEST__INIT;
    res_t r;
    our_call(ch, ECHO, &req, 5000, NULL, 0, &r);
    res_free(&r, 1);
    bool idle = false;
    loop_timer_t t;
    loop_timer_init(&t);
    loop_timer_start(g_loop, &t, 1500 * MS, 0, idle_done, &idle);
    while (!idle)
        loop_run(g_loop);
    our_call(ch, ECHO, &req, 5000, NULL, 0, &r);
    res_free(&r, 1);
    grpc_channel_stats_t st;
    grpc_channel_stats(ch, &st);
    tap_check(r.status == GRPC_STATUS_OK && st.connects == 1,
              "keepalive: 1.5 s idle with PINGs both ways, then a call on the same connection (%s, %llu connects)",
              grpc_status_name(r.status), (unsigned long long)st.connects);
    grpc_channel_free(ch);
    /* A peer that sends the preface and SETTINGS, then never
     * answers a PING: the server closes it after at most two intervals. */
    static const uint8_t hello[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\4\0\0\0\0\0";
    uint64_t t0 = loop_now_ns();
    bool closed = raw_bytes_closed(port, hello, sizeof hello - 1);
    uint64_t dt = (loop_now_ns() - t0) / MS;
    tap_check(closed && dt < 2000, "keepalive: the server drops a peer that never answers its PING (%llu ms)",
              (unsigned long long)dt);
    kill(pid, SIGTERM);
    int wst = 0;
    waitpid(pid, &wst, 0);
    tap_check(WIFEXITED(wst) && WEXITSTATUS(wst) == 0, "keepalive: server exits 0 (0x%x)", wst);
}

static void on_slow(const grpc_result_t *res, void *arg)
{
    on_result(res, arg);
}

static void term_timer(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    kill(*(pid_t *)arg, SIGTERM);
}

static void test_sigterm(void)
{
    char *argv[] = {(char *)g_echo_bin, (char *)"0", NULL};
    pid_t pid;
    int port = spawn_listener(argv, &pid);
    if (!tap_check(port > 0, "sigterm: second echo server up"))
        return;
    grpc_channel_t *ch;
    char err[256] = "";
    grpc_channel_new(g_loop, "127.0.0.1", (uint16_t)port, NULL, &ch, err, sizeof err);
    Shop__Test__V1__EchoRequest req = SHOP__TEST__V1__ECHO_REQUEST__INIT;
    req.delay_ms = 1500;
    size_t len;
    uint8_t *b = echo_req(&req, &len, false);
    res_t r[1];
    memset(r, 0, sizeof r);
    grpc_call_unary(ch, ECHO, b, len, false, 10000 * MS, NULL, 0, on_slow, &r[0]);
    free(b);
    loop_timer_t t;
    loop_timer_init(&t);
    loop_timer_start(g_loop, &t, 400 * MS, 0, term_timer, &pid);
    uint64_t t0 = loop_now_ns();
    wait_all(r, 1, 20000);
    uint64_t dt = (loop_now_ns() - t0) / MS;
    tap_check(r[0].status == GRPC_STATUS_OK && dt >= 1400,
              "sigterm: the call in flight completes OK after SIGTERM (%s, %llu ms)", grpc_status_name(r[0].status),
              (unsigned long long)dt);
    res_free(r, 1);
    int st = 0;
    pid_t w = 0;
    for (int i = 0; i < 100 && w == 0; i++) {
        w = waitpid(pid, &st, WNOHANG);
        if (w == 0)
            usleep(50000);
    }
    if (w == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
    }
    tap_check(w == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "sigterm: the server then exits 0 by itself (no leak under ASan) (status 0x%x)", st);
    grpc_channel_free(ch);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: test_grpc_server REPO_ROOT ECHO_SERVER ECHO_PB\n");
        return 2;
    }
    g_root = argv[1];
    g_echo_bin = argv[2];
    g_echo_pb = argv[3];
    signal(SIGPIPE, SIG_IGN);
    snprintf(g_dir, sizeof g_dir, "/tmp/grpc-server-XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(g_spans, sizeof g_spans, "%s/spans.txt", g_dir);
    snprintf(g_log, sizeof g_log, "%s/server.log", g_dir);
    char err[256] = "";
    trace_options_t o = {.service_name = "test-grpc-server", .no_ring = true, .sink = sink};
    if (!tap_check(trace_init(&o, err, sizeof err) == 0, "trace_init with a span sink (%s)", err))
        return tap_done();
    loop_create(&g_loop, NULL);

    char *eargv[] = {(char *)g_echo_bin, (char *)"0", g_spans, NULL};
    pid_t echo_pid;
    int port = spawn_listener(eargv, &echo_pid);
    if (!tap_check(port > 0, "echo_server prints its port (%d)", port))
        return tap_done();
    test_grpcurl(port);
    test_python_client(port);
    test_raw(port);
    client_matrix(port, "our client -> our server");
    test_spans(port);
    kill(echo_pid, SIGTERM);
    int st = 0;
    waitpid(echo_pid, &st, 0);
    tap_check(WIFEXITED(st) && WEXITSTATUS(st) == 0, "echo_server exits 0 on SIGTERM after every case (0x%x)", st);

    char py[1024], script[1024], pbarg[1100];
    snprintf(py, sizeof py, "%s/var/venv/bin/python", g_root);
    snprintf(script, sizeof script, "%s/tests/py/echo_server.py", g_root);
    snprintf(pbarg, sizeof pbarg, "%s", g_echo_pb);
    char *pargv[] = {py, script, (char *)"--descriptor", pbarg, NULL};
    pid_t py_pid;
    int pyport = spawn_listener(pargv, &py_pid);
    if (tap_check(pyport > 0, "python echo server up (%d)", pyport))
        client_matrix(pyport, "our client -> grpcio");
    if (py_pid > 0) {
        kill(py_pid, SIGKILL);
        waitpid(py_pid, NULL, 0);
    }

    test_keepalive();
    test_sigterm();

    loop_destroy(g_loop);
    trace_shutdown();
    if (tap__failed) {
        tap_diag("logs kept in %s", g_dir);
    } else {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
        (void)system(cmd);
    }
    return tap_done();
}
