/*
 * services/gateway/gateway.c - the API gateway: HTTP/1.1 JSON API on the
 * core io_uring loop, JWT (HS256) authentication, token-bucket rate limits,
 * a SERVER span per request, gRPC calls to user-svc and order-svc.
 *
 * Usage:
 *   gateway [--config FILE]            serve (prints "gateway listening on ADDR:PORT")
 *   gateway --check-config [--config FILE]
 *   gateway --token USER_ID [--config FILE]   print a bearer token for USER_ID
 *   curl -H "Authorization: Bearer $(gateway --token user123)" \
 *        -d '{"user_id":"user123","product_id":"prod456","quantity":2,"amount":99.99}' \
 *        http://127.0.0.1:8080/api/orders
 *
 * HTTP/1.1 (RFC 9112): keep-alive and pipelining (requests are answered one
 * at a time, in order; bytes of later requests wait in the connection's
 * buffer), Content-Length bodies only (Transfer-Encoding: chunked is 411,
 * any other coding 501), Expect: 100-continue (100 sent once the head is
 * accepted, or the final status at once when it is not).  Limits from
 * [gateway]: head size and header count (431), body (413), read timeout from
 * a request's first byte (408), idle keep-alive timeout, connections (503).
 * Every error is a JSON {"error": "..."} and every response carries a
 * traceparent header.  The request head parser is core/http1_client.h's
 * http1c_parse_request (pure, fuzzed by tests/fuzz/fuzz_http1_request.c).
 *
 * Limits, admitted: one loop thread; the loop has no read pause, so a
 * pipelining client that never reads its answers is cut off when its
 * unanswered bytes pass the buffer (head + body limit + 4 KiB), not slowed.
 *
 * This file is main: options, config, the limiters, tracing, the loop, the
 * listener and graceful shutdown on SIGTERM/SIGINT.  The other modules are
 * listed in gateway.h.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"

bool gw_loop_done;

/* -------------------------------------------------------------- helpers */

void gw_log(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs(GW_NAME ": ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

void *gw_xmalloc(size_t n, const char *file, int line)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL) {
        fprintf(stderr, GW_NAME ": out of memory (%zu bytes) at %s:%d\n", n, file, line);
        abort();
    }
    return p;
}

bool gw_streq_ci(const char *a, size_t alen, const char *b)
{
    size_t bl = strlen(b);
    if (alen != bl)
        return false;
    for (size_t i = 0; i < alen; i++) {
        char x = a[i], y = b[i];
        if (x >= 'A' && x <= 'Z')
            x = (char)(x + 32);
        if (y >= 'A' && y <= 'Z')
            y = (char)(y + 32);
        if (x != y)
            return false;
    }
    return true;
}

/* An id in a path or query: 1..64 bytes of [A-Za-z0-9._-]. */
bool gw_id_ok(const char *s, size_t n)
{
    if (n == 0 || n > GW_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

/* ------------------------------------------------------------------ main */

static int gw_split_addr(const char *s, char *ip, size_t cap, uint16_t *port)
{
    const char *colon = strrchr(s, ':');
    if (colon == NULL || (size_t)(colon - s) >= cap || colon == s)
        return -EINVAL;
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end != '\0' || p < 1 || p > 65535)
        return -EINVAL;
    size_t n = (size_t)(colon - s);
    if (s[0] == '[' && n >= 2 && s[n - 1] == ']') { /* [v6]:port */
        memcpy(ip, s + 1, n - 2);
        ip[n - 2] = '\0';
    } else {
        memcpy(ip, s, n);
        ip[n] = '\0';
    }
    unsigned char bin[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, ip, bin) != 1 && inet_pton(AF_INET6, ip, bin) != 1)
        return -EINVAL; /* numeric only: the gRPC channel does not resolve names */
    *port = (uint16_t)p;
    return 0;
}

static void gw_on_signal(loop_t *loop, int signo, void *arg)
{
    gw_t *gw = arg;
    if (gw->stopping) {
        gw_log("second signal %d: stopping now", signo);
        loop_stop(loop);
        return;
    }
    gw_log("signal %d: graceful shutdown", signo);
    gw->stopping = true;
    gw->listener = NULL;
    /* loop_shutdown takes the grace period from now (it was given now + 10 s,
     * so the deadline lay days ahead and the gateway never stopped while the
     * upstream channels kept their connections open) */
    loop_shutdown(loop, (uint64_t)config_int(gw->cfg, CONFIG_SERVICE_SHUTDOWN_GRACE) * 1000000ull,
                  NULL);
    /* idle keep-alive connections go now; busy ones answer with
     * Connection: close and go after their answer */
    for (gw_conn_t *c = gw->conn_list, *next; c != NULL; c = next) {
        next = c->next;
        if (c->req == NULL && c->in_len == 0 && c->writes == 0)
            gw_conn_close(c);
        else if (c->req != NULL)
            c->req->conn_close = true;
    }
    /* the upstream channels' idle connections would hold the loop until the
     * grace period ends: stop once the last client connection is gone */
    if (gw->conns == 0)
        loop_stop(loop);
}

static void gw_log_line(void *u, const char *s)
{
    (void)u;
    gw_log("config: %s", s);
}

static void gw_usage(void)
{
    fprintf(stderr, "usage: gateway [--config FILE] [--check-config] [--token USER_ID]\n");
}

int main(int argc, char **argv)
{
    const char *cfg_path = NULL, *token_user = NULL;
    bool check = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            cfg_path = argv[++i];
        else if (strcmp(argv[i], "--check-config") == 0)
            check = true;
        else if (strcmp(argv[i], "--token") == 0 && i + 1 < argc)
            token_user = argv[++i];
        else if (strcmp(argv[i], "--help") == 0) {
            gw_usage();
            return 0;
        } else {
            gw_usage();
            return 2;
        }
    }
    gw_t *gw = calloc(1, sizeof *gw);
    if (gw == NULL)
        return 1;
    char err[512];
    int rc = config_load(cfg_path, &gw->cfg, err, sizeof err);
    if (rc < 0) {
        gw_log("%s", err);
        free(gw);
        return 2;
    }
    const config_t *cfg = gw->cfg;
    char uip[64], oip[64];
    uint16_t uport, oport;
    static const config_id_t addrs[] = {CONFIG_GATEWAY_USER_SVC, CONFIG_GATEWAY_ORDER_SVC};
    char *ips[] = {uip, oip};
    uint16_t *ports[] = {&uport, &oport};
    for (size_t i = 0; i < 2; i++) {
        if (gw_split_addr(config_str(cfg, addrs[i]), ips[i], sizeof uip, ports[i]) < 0) {
            gw_log("%s: [gateway] %s = %s: want numeric-host:port, e.g. 127.0.0.1:50051 or [::1]:50051",
                   config_origin(cfg, addrs[i]), config_key(addrs[i]), config_str(cfg, addrs[i]));
            config_free(gw->cfg);
            free(gw);
            return 2;
        }
    }
    if (check) {
        printf("ok\n");
        config_free(gw->cfg);
        free(gw);
        return 0;
    }
    if (token_user != NULL) {
        rc = gw_auth_print_token(cfg, token_user);
        config_free(gw->cfg);
        free(gw);
        return rc;
    }
    signal(SIGPIPE, SIG_IGN);
    config_dump(cfg, gw_log_line, NULL);
    gw->secret = config_str(cfg, CONFIG_GATEWAY_JWT_SECRET);
    gw->upstream_ns = (uint64_t)config_int(cfg, CONFIG_GATEWAY_UPSTREAM_TIMEOUT) * 1000000ull;
    gw->max_head = (size_t)config_int(cfg, CONFIG_GATEWAY_MAX_HEADER_BYTES);
    gw->max_body = (size_t)config_int(cfg, CONFIG_GATEWAY_MAX_BODY);
    gw->max_headers = (unsigned)config_int(cfg, CONFIG_GATEWAY_MAX_HEADERS);
    gw->read_ns = (uint64_t)config_int(cfg, CONFIG_GATEWAY_READ_TIMEOUT) * 1000000ull;
    gw->idle_ns = (uint64_t)config_int(cfg, CONFIG_GATEWAY_IDLE_TIMEOUT) * 1000000ull;
    gw->max_conns = (uint64_t)config_int(cfg, CONFIG_GATEWAY_MAX_CONNS);
    gw->health_upstreams = config_bool(cfg, CONFIG_GATEWAY_HEALTH_UPSTREAMS);
    uint64_t entries = (uint64_t)config_int(cfg, CONFIG_GATEWAY_RATE_ENTRIES);
    if (gw_limiter_init(&gw->rl_user, entries, config_int(cfg, CONFIG_GATEWAY_RATE_USER),
                        config_int(cfg, CONFIG_GATEWAY_BURST_USER)) < 0 ||
        gw_limiter_init(&gw->rl_addr, entries, config_int(cfg, CONFIG_GATEWAY_RATE_ADDR),
                        config_int(cfg, CONFIG_GATEWAY_BURST_ADDR)) < 0) {
        gw_log("rate limiter tables: out of memory");
        return 1;
    }

    config_trace_t store;
    trace_options_t to;
    memset(&to, 0, sizeof to); /* config_trace_options sets only its own fields */
    if (config_trace_options(cfg, &store, &to, err, sizeof err) < 0) {
        gw_log("tracing: %s", err);
        return 2;
    }
    to.service_name = GW_NAME;
    to.service_version = "0.1.0";
    to.create_ring = true;
    if ((rc = trace_init(&to, err, sizeof err)) < 0) {
        gw_log("trace_init: %s", err);
        return 1;
    }
    rc = 1;
    if (loop_create(&gw->loop, NULL) < 0) {
        gw_log("loop_create failed");
        goto out_trace;
    }
    if (grpc_channel_new(gw->loop, uip, uport, NULL, &gw->user_ch, err, sizeof err) < 0 ||
        grpc_channel_new(gw->loop, oip, oport, NULL, &gw->order_ch, err, sizeof err) < 0) {
        gw_log("grpc_channel_new: %s", err);
        goto out_loop;
    }
    loop_signal(gw->loop, SIGTERM, gw_on_signal, gw);
    loop_signal(gw->loop, SIGINT, gw_on_signal, gw);
    const char *addr = config_str(cfg, CONFIG_GATEWAY_ADDRESS);
    int lrc = loop_listen(gw->loop, addr, (uint16_t)config_int(cfg, CONFIG_GATEWAY_PORT), 4096,
                          gw_on_accept, gw, &gw->listener);
    if (lrc < 0) {
        gw_log("listen %s:%" PRId64 ": %s", addr, config_int(cfg, CONFIG_GATEWAY_PORT),
               strerror(-lrc));
        goto out_ch;
    }
    printf(GW_NAME " listening on %s:%u\n", addr, (unsigned)loop_listener_port(gw->listener));
    fflush(stdout);
    int lr = loop_run(gw->loop);
    gw_loop_done = true;
    gw_log("stopped (loop_run %d): %" PRIu64 " connections, %" PRIu64 " refused, %" PRIu64
           " rate-limited, %" PRIu64 " read timeouts",
           lr, gw->conns_total, gw->conns_refused, gw->rate_limited, gw->timeouts_408);
    rc = 0;
out_ch:
    if (gw->user_ch)
        grpc_channel_free(gw->user_ch);
    if (gw->order_ch)
        grpc_channel_free(gw->order_ch);
out_loop:
    loop_destroy(gw->loop);
out_trace:
    trace_shutdown();
    gw_req_free_all(gw);
    gw_limiter_free(&gw->rl_user);
    gw_limiter_free(&gw->rl_addr);
    config_free(gw->cfg);
    free(gw);
    return rc;
}
