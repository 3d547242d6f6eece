/*
 * tests/grpc/echo_server.c - shop.test.v1.EchoService on core/grpc_server.c,
 * the peer of the server interop tests (grpcurl, Python grpcio, raw
 * sockets, our own client).
 *
 * Usage:
 *   echo_server PORT [SPANS_FILE]
 *   echo_server 0 /tmp/spans.txt      # prints "listening on 40123"
 *   grpcurl -plaintext -import-path proto -proto shop/test/v1/echo.proto \
 *     -d '{"payload":"aGk="}' 127.0.0.1:40123 shop.test.v1.EchoService/Echo
 *
 * Each request field asks for one behaviour (proto/shop/test/v1/echo.proto):
 * status_code/status_message, delay_ms (a loop timer, so calls overlap),
 * response_size, echo_metadata.  Custom metadata whose key starts with
 * "x-echo-" also comes back as trailers.  Spans (SERVER, from the server's
 * automatic tracing) go to a sink that appends one line per span to
 * SPANS_FILE:
 *   name|kind|status|trace_id|span_id|parent_span_id|key=value;key=value;...
 * ECHO_KEEPALIVE_MS in the environment sets the server's keepalive PING
 * interval (off by default).
 * SIGTERM: graceful shutdown (stop accepting, GOAWAY, finish calls in
 * flight within 10 s), counters on stderr, exit 0.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "grpc.h"
#include "shop/test/v1/echo.pb-c.h"

#define MS 1000000ull

static loop_t *g_loop;
static grpc_server_t *g_srv;
static FILE *g_spans;
static int g_pending; /* delayed calls not yet answered */

static void span_sink(void *arg, const void *rec, uint32_t len, bool truncated)
{
    (void)arg;
    (void)truncated;
    span_record_t r;
    if (!g_spans || span_record_decode(rec, len, &r) != 0)
        return;
    char tid[33], sid[17], pid[17];
    trace_id_hex(r.trace_id, 16, tid);
    trace_id_hex(r.span_id, 8, sid);
    trace_id_hex(r.parent_span_id, 8, pid);
    tid[32] = sid[16] = pid[16] = '\0';
    fprintf(g_spans, "%.*s|%d|%d|%s|%s|%s|", (int)r.name.len, r.name.p, r.kind, r.status, tid, sid, pid);
    uint32_t off = 0;
    span_record_item_t it;
    while (span_record_next(r.items, r.items_len, &off, &it) == 1) {
        if (it.tag != SPAN_ITEM_ATTR)
            continue;
        if (it.type == TRACE_ATTR_STRING) {
            fprintf(g_spans, "%.*s=%.*s;", (int)it.key.len, it.key.p, (int)it.value_len, (const char *)it.value);
        } else if (it.type == TRACE_ATTR_INT) {
            int64_t v;
            memcpy(&v, it.value, 8);
            fprintf(g_spans, "%.*s=%lld;", (int)it.key.len, it.key.p, (long long)v);
        }
    }
    fprintf(g_spans, "\n");
    fflush(g_spans);
}

typedef struct {
    grpc_server_call_t *call;
    const Shop__Test__V1__EchoRequest *req;
    loop_timer_t t;
} delayed_t;

static void answer(grpc_server_call_t *call, const Shop__Test__V1__EchoRequest *req)
{
    if (req->status_code != 0) {
        grpc_server_reply(call, (grpc_status_t)req->status_code, req->status_message, NULL);
        return;
    }
    Shop__Test__V1__EchoResponse resp = SHOP__TEST__V1__ECHO_RESPONSE__INIT;
    uint8_t *big = NULL;
    if (req->response_size > 0) {
        big = malloc(req->response_size);
        if (big)
            for (uint32_t i = 0; i < req->response_size; i++)
                big[i] = (uint8_t)('a' + i % 26);
        resp.payload.data = big;
        resp.payload.len = big ? req->response_size : 0;
    } else {
        resp.payload = req->payload;
    }
    size_t n = 0;
    const grpc_md_t *md = grpc_server_call_metadata(call, &n);
    Shop__Test__V1__MetadataEntry ents[64], *ptrs[64];
    if (req->echo_metadata) {
        for (size_t i = 0; i < n && i < 64; i++) {
            shop__test__v1__metadata_entry__init(&ents[i]);
            ents[i].key = (char *)(uintptr_t)md[i].key;
            ents[i].value.data = (uint8_t *)(uintptr_t)md[i].value;
            ents[i].value.len = md[i].value_len;
            ptrs[i] = &ents[i];
        }
        resp.n_metadata = n < 64 ? n : 64;
        resp.metadata = ptrs;
    }
    for (size_t i = 0; i < n; i++)
        if (strncmp(md[i].key, "x-echo-", 7) == 0)
            (void)grpc_server_call_add_trailer(call, md[i].key, md[i].value, md[i].value_len);
    char tid[33] = "", pid[17] = "";
    const trace_context_t *ctx = trace_span_context(grpc_server_call_span(call));
    trace_id_hex(ctx->trace_id, 16, tid);
    tid[32] = '\0';
    const grpc_md_t *tp = grpc_server_call_md_get(call, "traceparent");
    trace_context_t parent;
    if (tp && trace_w3c_traceparent_parse((const char *)tp->value, tp->value_len, &parent) == 0) {
        trace_id_hex(parent.span_id, 8, pid);
        pid[16] = '\0';
    }
    resp.trace_id = tid;
    resp.parent_span_id = pid;
    grpc_server_reply(call, GRPC_STATUS_OK, NULL, &resp.base);
    free(big);
}

static void on_delay(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    delayed_t *d = arg;
    answer(d->call, d->req);
    g_pending--;
    free(d);
}

static void echo(grpc_server_call_t *call, const ProtobufCMessage *msg, void *arg)
{
    (void)arg;
    const Shop__Test__V1__EchoRequest *req = (const Shop__Test__V1__EchoRequest *)msg;
    if (req->delay_ms == 0) {
        answer(call, req);
        return;
    }
    delayed_t *d = calloc(1, sizeof *d);
    if (!d) {
        grpc_server_reply(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "echo: out of memory", NULL);
        return;
    }
    d->call = call;
    d->req = req; /* owned by the call until the reply */
    loop_timer_init(&d->t);
    g_pending++;
    loop_timer_start(g_loop, &d->t, req->delay_ms * MS, 0, on_delay, d);
}

static void on_done(grpc_server_t *srv, void *arg)
{
    (void)srv;
    (void)arg;
    loop_stop(g_loop);
}

static void on_term(loop_t *loop, int signo, void *arg)
{
    (void)loop;
    (void)arg;
    fprintf(stderr, "echo_server: signal %d: graceful shutdown (10 s)\n", signo);
    (void)grpc_server_shutdown(g_srv, 10000 * MS, on_done, NULL);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: echo_server PORT [SPANS_FILE]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (argc > 2) {
        g_spans = fopen(argv[2], "a");
        if (!g_spans) {
            perror("fopen(SPANS_FILE)");
            return 1;
        }
    }
    char err[256] = "";
    trace_options_t o = {.service_name = "echo-server", .no_ring = true, .sink = span_sink};
    if (trace_init(&o, err, sizeof err) != 0) {
        fprintf(stderr, "echo_server: trace_init: %s\n", err);
        return 1;
    }
    int rc = loop_create(&g_loop, NULL);
    if (rc < 0) {
        fprintf(stderr, "echo_server: loop_create: %s\n", strerror(-rc));
        return 1;
    }
    static const grpc_server_handler_cb handlers[] = {echo};
    uint16_t port = 0;
    grpc_server_opts_t so = {0};
    const char *ka = getenv("ECHO_KEEPALIVE_MS");
    if (ka)
        so.keepalive_ns = strtoull(ka, NULL, 10) * MS;
    if ((rc = grpc_server_new(g_loop, &so, &g_srv)) < 0 ||
        (rc = grpc_server_add_service(g_srv, &shop__test__v1__echo_service__descriptor, handlers, NULL)) < 0 ||
        (rc = grpc_server_listen(g_srv, "127.0.0.1", (uint16_t)atoi(argv[1]), &port)) < 0 ||
        (rc = loop_signal(g_loop, SIGTERM, on_term, NULL)) < 0) {
        fprintf(stderr, "echo_server: start-up: %s\n", strerror(-rc));
        return 1;
    }
    printf("listening on %u\n", port);
    fflush(stdout);
    rc = loop_run(g_loop);
    grpc_server_stats_t st;
    grpc_server_stats(g_srv, &st);
    fprintf(stderr,
            "echo_server: exit: %llu conns, calls: %llu started, %llu finished, %llu cancelled, %llu bad requests, "
            "%llu protocol errors, %d delayed calls left\n",
            (unsigned long long)st.conns_accepted, (unsigned long long)st.calls_started,
            (unsigned long long)st.calls_finished, (unsigned long long)st.calls_cancelled,
            (unsigned long long)st.bad_requests, (unsigned long long)st.protocol_errors, g_pending);
    grpc_server_free(g_srv);
    loop_destroy(g_loop);
    trace_shutdown();
    if (g_spans)
        fclose(g_spans);
    return rc == 0 && g_pending == 0 ? 0 : 1;
}
