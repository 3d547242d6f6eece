/*
 * tests/tracecontext/tc-service.c - the test service of the W3C Trace
 * Context test harness (github.com/w3c/trace-context, test/), built on the
 * project's own parts: the io_uring loop (core/loop.h), the HTTP/1.1 request
 * parser and client (core/http1_client.h) and the core tracing (W3C
 * traceparent/tracestate parsing and formatting, spans, the sampler).
 *
 * Usage:
 *   tc-service [--address IP] [--port N]   (port 0 = any; prints
 *                                           "tc-service listening on IP:PORT")
 *   python test.py http://127.0.0.1:PORT/test   (the official harness)
 *
 * The contract: POST /test with a JSON array of {"url": U, "arguments": A};
 * for each element, in order, the service sends POST U with A (JSON, [] when
 * absent) as the body, and answers 200 once every call is done, with
 * {"results":[{"url":U,"status":N} or {"url":U,"error":"..."}]}.
 *
 * Propagation (W3C Trace Context): the request gets a SERVER span whose
 * parent is the incoming traceparent when valid; every outgoing call is a
 * CLIENT span under it (http1_client), whose context goes out as
 * traceparent: the same trace id, a new span id per call, the sampled flag
 * of the parent under the default parentbased_always_on sampler
 * (OTEL_TRACES_SAMPLER applies).  tracestate is passed on when the
 * traceparent is valid: several tracestate header lines are combined in
 * order (RFC 9110 list rules, empty ones skipped), an invalid result (bad
 * key or value, duplicate key, more than 32 members) is dropped wholesale.
 * More than one traceparent line, or an invalid one, restarts the trace
 * (and drops tracestate).  A future version (not 00, not ff) is read as
 * version 00 when the next character after the flags is '-' or the end.
 *
 * Outgoing URLs must be http://IPv4:PORT/path ("localhost" is 127.0.0.1):
 * the client does no DNS.  Spans are not written anywhere (no ring): the
 * service exists for its headers.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core.h"
#include "http1_client.h"
#include "loop.h"

#define TC_MAX_HEAD 16384u
#define TC_MAX_BODY (1u << 20)
#define TC_MAX_HEADERS 128u
#define TC_MAX_TARGETS 32u
#define TC_TS_JOIN_MAX 8192u

static const trace_scope_t tc_scope = TRACE_SCOPE("shop-trace/tc-service", "0.1.0");

typedef struct {
    char ip[INET_ADDRSTRLEN];
    uint16_t port;
    http1c_client_t *client;
} tc_target_t;

typedef struct st_tc_conn_t tc_conn_t;
typedef struct st_tc_req_t tc_req_t;

struct st_tc_conn_t {
    loop_conn_t *lc;
    char *in;
    size_t in_len;
    tc_req_t *req;     /* request whose calls are out, or NULL */
    unsigned writes;   /* writes not yet completed */
    bool close_after;  /* close once the writes are done */
    bool closing;
    bool in_handle;    /* inside tc_handle: an answer given at once must not re-enter parsing */
};

struct st_tc_req_t {
    tc_conn_t *conn;   /* NULL once the client went away */
    bool conn_close;
    json_t *actions;   /* array */
    size_t next;
    json_t *results;
    char ts[TRACE_TRACESTATE_MAX]; /* the parent's tracestate (span contexts point here) */
    trace_span_t span;
};

static loop_t *tc_loop;
static tc_target_t tc_targets[TC_MAX_TARGETS];
static size_t tc_ntargets;

/* ------------------------------------------------------------ responses */

static void tc_conn_close(tc_conn_t *c);

static void tc_on_closed(loop_conn_t *lc, void *data)
{
    (void)lc;
    tc_conn_t *c = data;
    free(c->in);
    free(c);
}

static void tc_conn_close(tc_conn_t *c)
{
    if (c->closing)
        return;
    c->closing = true;
    if (c->req != NULL) {
        c->req->conn = NULL;
        c->req = NULL;
    }
    loop_conn_close(c->lc, tc_on_closed);
}

static void tc_on_write(loop_conn_t *lc, int status, void *arg)
{
    (void)status;
    free(arg);
    tc_conn_t *c = loop_conn_data(lc);
    if (c == NULL)
        return;
    c->writes--;
    if (c->writes == 0 && c->close_after)
        tc_conn_close(c);
}

static void tc_respond(tc_conn_t *c, int status, const char *reason, const char *body, bool close)
{
    if (c->closing)
        return;
    size_t blen = strlen(body);
    char *buf = malloc(256 + blen);
    if (buf == NULL) {
        tc_conn_close(c);
        return;
    }
    int n = snprintf(buf, 256,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n%s\r\n",
                     status, reason, blen, close ? "Connection: close\r\n" : "");
    memcpy(buf + n, body, blen);
    struct iovec iov = {buf, (size_t)n + blen};
    if (close)
        c->close_after = true;
    if (loop_conn_write(c->lc, &iov, 1, tc_on_write, buf) != 0) {
        free(buf);
        tc_conn_close(c);
        return;
    }
    c->writes++;
}

static void tc_error(tc_conn_t *c, int status, const char *reason, const char *msg, bool close)
{
    json_t *o = json_pack("{s:s}", "error", msg);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    tc_respond(c, status, reason, s ? s : "{\"error\":\"out of memory\"}", close);
    free(s);
}

/* -------------------------------------------------------------- calls */

static void tc_conn_process(tc_conn_t *c);
static void tc_next(tc_req_t *r);

static void tc_req_done(tc_req_t *r)
{
    tc_conn_t *c = r->conn;
    trace_span_set_int(&r->span, "http.response.status_code", 200);
    trace_span_end(&r->span);
    if (c != NULL) {
        json_t *o = json_pack("{s:O}", "results", r->results);
        char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        c->req = NULL;
        tc_respond(c, 200, "OK", s ? s : "{}", r->conn_close);
        free(s);
    }
    json_decref(r->actions);
    json_decref(r->results);
    free(r);
    if (c != NULL && !c->closing && !c->close_after && !c->in_handle)
        tc_conn_process(c);
}

static void tc_result(tc_req_t *r, const char *url, int status, const char *err)
{
    json_t *o = err ? json_pack("{s:s,s:s}", "url", url, "error", err)
                    : json_pack("{s:s,s:i}", "url", url, "status", status);
    if (o != NULL)
        json_array_append_new(r->results, o);
}

static void tc_on_response(int err, const http1c_response_t *res, void *arg)
{
    tc_req_t *r = arg;
    json_t *a = json_array_get(r->actions, r->next);
    const char *url = json_string_value(json_object_get(a, "url"));
    tc_result(r, url ? url : "", res ? res->status : 0, err < 0 ? http1c_strerror(err) : NULL);
    r->next++;
    tc_next(r);
}

/* "http://HOST:PORT/path" -> ip, port, path.  HOST: IPv4 or localhost. */
static int tc_split_url(const char *url, char *ip, uint16_t *port, const char **path)
{
    if (strncmp(url, "http://", 7) != 0)
        return -EINVAL;
    const char *h = url + 7, *slash = strchr(h, '/');
    const char *end = slash ? slash : h + strlen(h);
    const char *colon = memchr(h, ':', (size_t)(end - h));
    const char *hend = colon ? colon : end;
    size_t hl = (size_t)(hend - h);
    if (hl == 0 || hl >= INET_ADDRSTRLEN)
        return -EINVAL;
    memcpy(ip, h, hl);
    ip[hl] = '\0';
    if (strcmp(ip, "localhost") == 0)
        strcpy(ip, "127.0.0.1");
    struct in_addr a;
    if (inet_pton(AF_INET, ip, &a) != 1)
        return -EINVAL;
    long p = 80;
    if (colon != NULL) {
        char *pe;
        p = strtol(colon + 1, &pe, 10);
        if (pe != end || p < 1 || p > 65535)
            return -EINVAL;
    }
    *port = (uint16_t)p;
    *path = slash ? slash : "/";
    return 0;
}

static http1c_client_t *tc_client(const char *ip, uint16_t port)
{
    for (size_t i = 0; i < tc_ntargets; i++)
        if (tc_targets[i].port == port && strcmp(tc_targets[i].ip, ip) == 0)
            return tc_targets[i].client;
    if (tc_ntargets == TC_MAX_TARGETS)
        return NULL;
    http1c_opts_t o = {.max_conns = 4, .timeout_ms = 5000, .idle_ms = 5000};
    tc_target_t *t = &tc_targets[tc_ntargets];
    if (http1c_client_new(tc_loop, ip, port, &o, &t->client) != 0)
        return NULL;
    snprintf(t->ip, sizeof t->ip, "%s", ip);
    t->port = port;
    tc_ntargets++;
    return t->client;
}

/* Sends the next call, or answers when none is left. */
static void tc_next(tc_req_t *r)
{
    while (r->next < json_array_size(r->actions)) {
        json_t *a = json_array_get(r->actions, r->next);
        const char *url = json_string_value(json_object_get(a, "url"));
        char ip[INET_ADDRSTRLEN];
        uint16_t port;
        const char *path;
        http1c_client_t *cl;
        if (url == NULL || tc_split_url(url, ip, &port, &path) != 0) {
            tc_result(r, url ? url : "", 0, "url must be http://IPv4:PORT/path");
        } else if ((cl = tc_client(ip, port)) == NULL) {
            tc_result(r, url, 0, "no client for this target");
        } else {
            json_t *args = json_object_get(a, "arguments");
            char *body = args && !json_is_null(args) ? json_dumps(args, JSON_COMPACT | JSON_ENCODE_ANY)
                                                     : strdup("[]");
            http1c_request_t rq = {.method = "POST", .path = path,
                                   .content_type = "application/json",
                                   .body = body, .body_len = body ? strlen(body) : 0,
                                   .parent = &r->span.ctx};
            int rc = http1c_request(cl, &rq, tc_on_response, r);
            free(body);
            if (rc == 0)
                return; /* tc_on_response goes on */
            tc_result(r, url, 0, http1c_strerror(rc));
        }
        r->next++;
    }
    tc_req_done(r);
}

/* ------------------------------------------------------------ requests */

/* The header carrier: one traceparent line or none (two are invalid), the
 * tracestate lines joined in order. */
typedef struct {
    const http1c_header_t *h;
    size_t n;
    char joined[TC_TS_JOIN_MAX];
} tc_carrier_t;

static bool tc_name_is(const http1c_header_t *h, const char *name)
{
    size_t n = strlen(name);
    if (h->name_len != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        char x = h->name[i];
        if (x >= 'A' && x <= 'Z')
            x = (char)(x + 32);
        if (x != name[i])
            return false;
    }
    return true;
}

static const char *tc_carrier_get(void *carrier, const char *name, size_t *vlen)
{
    tc_carrier_t *c = carrier;
    const http1c_header_t *first = NULL;
    size_t count = 0;
    for (size_t i = 0; i < c->n; i++)
        if (tc_name_is(&c->h[i], name)) {
            if (first == NULL)
                first = &c->h[i];
            count++;
        }
    if (first == NULL)
        return NULL;
    if (count == 1) {
        *vlen = first->value_len;
        return first->value;
    }
    if (strcmp(name, "tracestate") != 0) {
        *vlen = 7;
        return "invalid"; /* two traceparent (or baggage) lines: invalid */
    }
    size_t len = 0;
    for (size_t i = 0; i < c->n; i++) {
        if (!tc_name_is(&c->h[i], name) || c->h[i].value_len == 0)
            continue;
        size_t add = c->h[i].value_len + (len ? 1 : 0);
        if (len + add > sizeof c->joined) {
            *vlen = 1;
            return "="; /* too long to pass on whole: invalid, dropped */
        }
        if (len)
            c->joined[len++] = ',';
        memcpy(c->joined + len, c->h[i].value, c->h[i].value_len);
        len += c->h[i].value_len;
    }
    *vlen = len;
    return c->joined;
}

static void tc_handle(tc_conn_t *c, const http1c_head_t *h, const http1c_header_t *hd,
                      const char *body, size_t blen)
{
    bool is_test = h->target_len == 5 && memcmp(h->target, "/test", 5) == 0;
    if (!is_test) {
        tc_error(c, 404, "Not Found", "only POST /test is served", h->conn_close);
        return;
    }
    if (h->method_len != 4 || memcmp(h->method, "POST", 4) != 0) {
        tc_error(c, 405, "Method Not Allowed", "only POST /test is served", h->conn_close);
        return;
    }
    json_error_t je;
    json_t *actions = json_loadb(body, blen, JSON_DECODE_ANY, &je);
    if (actions == NULL) {
        tc_error(c, 400, "Bad Request", "body must be a JSON array of {\"url\", \"arguments\"}",
                 h->conn_close);
        return;
    }
    if (json_is_null(actions)) { /* the harness's own "null" */
        json_decref(actions);
        actions = json_array();
    } else if (json_is_object(actions)) {
        json_t *arr = json_array();
        json_array_append_new(arr, actions);
        actions = arr;
    } else if (!json_is_array(actions)) {
        json_decref(actions);
        tc_error(c, 400, "Bad Request", "body must be a JSON array of {\"url\", \"arguments\"}",
                 h->conn_close);
        return;
    }
    tc_req_t *r = malloc(sizeof *r);
    json_t *results = json_array();
    if (r == NULL || results == NULL) {
        free(r);
        json_decref(results);
        json_decref(actions);
        tc_error(c, 500, "Internal Server Error", "out of memory", true);
        return;
    }
    memset(r, 0, offsetof(tc_req_t, span));
    r->conn = c;
    r->conn_close = h->conn_close;
    r->actions = actions;
    r->results = results;
    tc_carrier_t *car = malloc(sizeof *car);
    trace_context_t parent;
    int prc = -ENOENT;
    if (car != NULL) {
        car->h = hd;
        car->n = h->num_headers;
        prc = trace_extract(tc_carrier_get, car, &parent, r->ts, sizeof r->ts, NULL);
        free(car);
    }
    trace_span_start(&r->span, &tc_scope, "POST /test", 10, TRACE_KIND_SERVER,
                     prc == 0 ? &parent : NULL);
    trace_span_set_str(&r->span, "http.request.method", "POST");
    trace_span_set_str(&r->span, "http.route", "/test");
    c->req = r;
    tc_next(r);
}

static void tc_conn_process(tc_conn_t *c)
{
    while (!c->closing && !c->close_after && c->req == NULL && c->in_len > 0) {
        http1c_head_t h;
        http1c_header_t hd[TC_MAX_HEADERS];
        size_t lim = c->in_len < TC_MAX_HEAD ? c->in_len : TC_MAX_HEAD;
        int n = http1c_parse_request(c->in, lim, &h, hd, TC_MAX_HEADERS);
        if (n == -2) {
            if (c->in_len >= TC_MAX_HEAD)
                tc_error(c, 431, "Request Header Fields Too Large", "head too large", true);
            return;
        }
        if (n < 0) {
            tc_error(c, 400, "Bad Request", "malformed request", true);
            return;
        }
        if (h.chunked) {
            tc_error(c, 411, "Length Required", "send Content-Length", true);
            return;
        }
        size_t body = h.content_length > 0 ? (size_t)h.content_length : 0;
        if (body > TC_MAX_BODY) {
            tc_error(c, 413, "Content Too Large", "body too large", true);
            return;
        }
        if (c->in_len < (size_t)n + body)
            return;
        size_t total = (size_t)n + body;
        c->in_handle = true;
        tc_handle(c, &h, hd, c->in + n, body);
        c->in_handle = false;
        if (c->closing)
            return;
        /* the request copied what it keeps (json, tracestate) */
        memmove(c->in, c->in + total, c->in_len - total);
        c->in_len -= total;
    }
}

static void tc_on_read(loop_conn_t *lc, ssize_t n, const void *buf, void *data)
{
    (void)lc;
    tc_conn_t *c = data;
    if (c == NULL || c->closing)
        return;
    if (n <= 0) {
        if (c->writes == 0)
            tc_conn_close(c);
        else
            c->close_after = true;
        return;
    }
    if (c->in_len + (size_t)n > TC_MAX_HEAD + TC_MAX_BODY) {
        tc_conn_close(c);
        return;
    }
    memcpy(c->in + c->in_len, buf, (size_t)n);
    c->in_len += (size_t)n;
    if (c->req == NULL)
        tc_conn_process(c);
}

static void tc_on_accept(loop_listener_t *l, loop_conn_t *lc, void *arg)
{
    (void)l;
    (void)arg;
    tc_conn_t *c = calloc(1, sizeof *c);
    if (c != NULL && (c->in = malloc(TC_MAX_HEAD + TC_MAX_BODY)) == NULL) {
        free(c);
        c = NULL;
    }
    if (c == NULL) {
        loop_conn_close(lc, NULL);
        return;
    }
    c->lc = lc;
    loop_conn_set_data(lc, c);
    if (loop_conn_read_start(lc, tc_on_read) != 0)
        tc_conn_close(c);
}

static void tc_on_signal(loop_t *loop, int signo, void *arg)
{
    (void)signo;
    (void)arg;
    loop_stop(loop);
}

int main(int argc, char **argv)
{
    const char *addr = "127.0.0.1";
    long port = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--address") == 0 && i + 1 < argc) {
            addr = argv[++i];
        } else if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            char *e;
            port = strtol(argv[++i], &e, 10);
            if (*e != '\0' || port < 0 || port > 65535) {
                fprintf(stderr, "tc-service: --port must be 0..65535\n");
                return 2;
            }
        } else {
            fprintf(stderr, "usage: tc-service [--address IP] [--port N]\n");
            return strcmp(argv[i], "--help") == 0 ? 0 : 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    trace_options_t to;
    memset(&to, 0, sizeof to);
    to.service_name = "tc-service";
    to.service_version = "0.1.0";
    to.no_ring = true;
    char err[256] = "";
    if (trace_init(&to, err, sizeof err) < 0) {
        fprintf(stderr, "tc-service: trace_init: %s\n", err);
        return 1;
    }
    int rc = 1;
    loop_listener_t *lis = NULL;
    if (loop_create(&tc_loop, NULL) < 0) {
        fprintf(stderr, "tc-service: loop_create failed\n");
        goto out;
    }
    loop_signal(tc_loop, SIGTERM, tc_on_signal, NULL);
    loop_signal(tc_loop, SIGINT, tc_on_signal, NULL);
    int lrc = loop_listen(tc_loop, addr, (uint16_t)port, 128, tc_on_accept, NULL, &lis);
    if (lrc < 0) {
        fprintf(stderr, "tc-service: listen %s:%ld: %s\n", addr, port, strerror(-lrc));
        goto out_loop;
    }
    printf("tc-service listening on %s:%u\n", addr, (unsigned)loop_listener_port(lis));
    fflush(stdout);
    loop_run(tc_loop);
    rc = 0;
    for (size_t i = 0; i < tc_ntargets; i++)
        http1c_client_free(tc_targets[i].client);
out_loop:
    loop_destroy(tc_loop);
out:
    trace_shutdown();
    return rc;
}
