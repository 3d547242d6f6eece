/*
 * services/gateway/gw_http.c - the gateway's HTTP/1.1 server side: accepted
 * connections on the core io_uring loop, the per-connection input buffer,
 * request heads parsed with core's http1c_parse_request, the limits and
 * their statuses (400, 408, 411, 413, 417, 431, 501, 503, 505), Expect:
 * 100-continue, keep-alive and pipelining (one request answered at a time,
 * in order), and the response writer.  A complete request goes to
 * gw_route_handle (gw_route.c), which answers through gw_respond_raw.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include "gateway.h"

static const char *gw_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 417: return "Expectation Failed";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

static void gw_on_write(loop_conn_t *lc, int status, void *arg)
{
    (void)status;
    free(arg);
    gw_conn_t *c = loop_conn_data(lc);
    if (c == NULL)
        return;
    c->writes--;
    if (c->writes == 0 && c->close_after && !c->closing)
        gw_conn_close(c);
}

/* Queues raw bytes (copied into one allocation freed by the write callback). */
void gw_write(gw_conn_t *c, const char *a, size_t alen, const char *b, size_t blen)
{
    if (c->closing)
        return;
    char *buf = GW_MALLOC(alen + blen);
    memcpy(buf, a, alen);
    if (blen)
        memcpy(buf + alen, b, blen);
    struct iovec iov = {buf, alen + blen};
    if (loop_conn_write(c->lc, &iov, 1, gw_on_write, buf) < 0) {
        free(buf);
        c->close_after = true;
        if (c->writes == 0)
            gw_conn_close(c);
        return;
    }
    c->writes++;
}

/* Writes a response with a traceparent of ctx (NULL: none known) and
 * records the metrics.  body is JSON (or Prometheus text for /metrics). */
void gw_respond_raw(gw_conn_t *c, gw_route_t route, const trace_context_t *ctx,
                           uint64_t t0, bool close, int status, const char *ctype,
                           const char *body, size_t blen, const char *extra)
{
    gw_t *gw = c->gw;
    char tp[64] = "";
    char tph[96] = "";
    if (ctx != NULL && trace_w3c_traceparent_format(ctx, tp) > 0)
        snprintf(tph, sizeof tph, "traceparent: %s\r\n", tp);
    if (close)
        c->close_after = true;
    char head[512];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s%s%s\r\n",
                     status, gw_reason(status), ctype, blen, tph, extra ? extra : "",
                     c->close_after ? "Connection: close\r\n" : "");
    gw_write(c, head, (size_t)n, body, blen);
    gw_metrics_record(gw, route, status, t0);
}

/* An error for a request that never got a span: a fresh trace id is still
 * returned, so every response carries one. */
void gw_error_nospan(gw_conn_t *c, int status, const char *msg, bool close)
{
    trace_context_t ctx;
    memset(&ctx, 0, sizeof ctx);
    trace_id_new(ctx.trace_id);
    trace_id_new_span(ctx.span_id);
    size_t len;
    char *b = gw_error_json(msg, &len);
    gw_respond_raw(c, GW_R_NONE, &ctx, loop_now_ns(), close, status, "application/json", b, len,
                   NULL);
    free(b);
}

/* ----------------------------------------------------------- connections */

static void gw_on_timer(loop_t *loop, loop_timer_t *t, void *arg);

static void gw_arm(gw_conn_t *c, bool reading)
{
    gw_t *gw = c->gw;
    c->reading_req = reading;
    loop_timer_start(gw->loop, &c->timer, reading ? gw->read_ns : gw->idle_ns, 0, gw_on_timer, c);
}

static void gw_on_close(loop_conn_t *lc, void *data)
{
    (void)lc;
    gw_conn_t *c = data;
    gw_t *gw = c->gw;
    gw->conns--;
    free(c->in);
    free(c);
    if (gw->stopping && gw->conns == 0)
        loop_stop(gw->loop); /* the last client went (see gw_on_signal) */
}

void gw_conn_close(gw_conn_t *c)
{
    if (c->closing)
        return;
    c->closing = true;
    if (c->prev)
        c->prev->next = c->next;
    else
        c->gw->conn_list = c->next;
    if (c->next)
        c->next->prev = c->prev;
    loop_timer_stop(c->gw->loop, &c->timer);
    if (c->req != NULL) { /* an upstream call is out: the request lives on alone */
        c->req->conn = NULL;
        c->req = NULL;
        c->gw->inflight--;
    }
    loop_conn_close(c->lc, gw_on_close); /* pending writes end -ECANCELED first */
}

static void gw_on_timer(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    gw_conn_t *c = arg;
    if (c->closing || c->req != NULL)
        return;
    if (c->reading_req && c->in_len > 0) {
        c->gw->timeouts_408++;
        gw_error_nospan(c, 408, "request not received in time", true);
        c->in_len = 0;
        return;
    }
    gw_conn_close(c); /* idle keep-alive connection */
}

/* Parses and answers requests from the buffer while no upstream call is
 * out.  Each answered request's bytes are dropped from the buffer. */
void gw_conn_process(gw_conn_t *c)
{
    gw_t *gw = c->gw;
    while (!c->closing && !c->close_after && c->req == NULL) {
        if (c->in_len == 0) {
            if (c->peer_eof) {
                gw_conn_close(c);
                return;
            }
            gw_arm(c, false);
            return;
        }
        if (!c->reading_req)
            gw_arm(c, true);
        http1c_head_t h;
        http1c_header_t hd[257];
        size_t lim = c->in_len < gw->max_head ? c->in_len : gw->max_head;
        int n = http1c_parse_request(c->in, lim, &h, hd, gw->max_headers);
        if (n == -2) {
            if (c->in_len >= gw->max_head) {
                gw_error_nospan(c, 431, "request line and headers too large", true);
                return;
            }
            if (c->peer_eof) {
                gw_conn_close(c);
                return;
            }
            return; /* wait for more */
        }
        if (n == -1) {
            /* too many headers, or a bad message? */
            http1c_head_t h2;
            if (gw->max_headers < 256 && http1c_parse_request(c->in, lim, &h2, hd, 256) > 0)
                gw_error_nospan(c, 431, "too many header fields", true);
            else
                gw_error_nospan(c, 400, "malformed request", true);
            return;
        }
        if (h.minor_version != 0 && h.minor_version != 1) {
            gw_error_nospan(c, 505, "only HTTP/1.0 and HTTP/1.1 are served", true);
            return;
        }
        if (h.minor_version == 1 && http1c_find_header(hd, h.num_headers, "host") == NULL) {
            gw_error_nospan(c, 400, "Host header is required in HTTP/1.1", true);
            return;
        }
        if (h.chunked) {
            gw_error_nospan(c, 411, "chunked request bodies are not accepted: send Content-Length",
                            true);
            return;
        }
        if (http1c_find_header(hd, h.num_headers, "transfer-encoding") != NULL) {
            gw_error_nospan(c, 501, "transfer codings are not supported", true);
            return;
        }
        size_t body = h.content_length > 0 ? (size_t)h.content_length : 0;
        if (h.content_length > (int64_t)gw->max_body) {
            gw_error_nospan(c, 413, "request body too large", true);
            return;
        }
        if (c->in_len < (size_t)n + body) {
            const http1c_header_t *ex = http1c_find_header(hd, h.num_headers, "expect");
            if (ex != NULL && !c->sent_continue) {
                if (!gw_streq_ci(ex->value, ex->value_len, "100-continue")) {
                    gw_error_nospan(c, 417, "unsupported Expect", true);
                    return;
                }
                static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                gw_write(c, cont, sizeof cont - 1, NULL, 0);
                c->sent_continue = true;
            }
            if (c->peer_eof) {
                gw_conn_close(c);
                return;
            }
            return; /* the body is still coming */
        }
        loop_timer_stop(gw->loop, &c->timer);
        c->reading_req = false;
        c->sent_continue = false;
        size_t total = (size_t)n + body;
        /* handle with views into c->in; the request's bytes are dropped
         * after it (gw_route_handle copies what outlives it) */
        c->in_handle = true;
        gw_route_handle(c, &h, hd, c->in + n, body);
        c->in_handle = false;
        if (c->closing)
            return;
        memmove(c->in, c->in + total, c->in_len - total);
        c->in_len -= total;
    }
}

static void gw_on_read(loop_conn_t *lc, ssize_t n, const void *buf, void *data)
{
    gw_conn_t *c = data;
    if (c == NULL || c->closing)
        return;
    if (n <= 0) {
        c->peer_eof = true;
        if (c->req == NULL && c->writes == 0)
            gw_conn_close(c);
        else if (c->req == NULL)
            c->close_after = true;
        return;
    }
    (void)lc;
    if (c->close_after)
        return; /* answering with close: further bytes are ignored */
    if (c->in_len + (size_t)n > c->in_cap) {
        if (c->req != NULL || c->in_len >= c->gw->max_head + c->gw->max_body) {
            /* pipelined bytes past the buffer while an answer is pending */
            gw_conn_close(c);
            return;
        }
        /* keep what fits: the parser answers 431/413 from it */
        n = (ssize_t)(c->in_cap - c->in_len);
    }
    memcpy(c->in + c->in_len, buf, (size_t)n);
    c->in_len += (size_t)n;
    if (c->req == NULL)
        gw_conn_process(c);
}

void gw_on_accept(loop_listener_t *l, loop_conn_t *lc, void *arg)
{
    (void)l;
    gw_t *gw = arg;
    gw_conn_t *c = GW_MALLOC(sizeof *c);
    memset(c, 0, sizeof *c);
    c->gw = gw;
    c->lc = lc;
    c->in_cap = gw->max_head + gw->max_body + GW_INBUF_SLACK;
    c->in = GW_MALLOC(c->in_cap);
    loop_timer_init(&c->timer);
    loop_conn_set_data(lc, c);
    c->next = gw->conn_list;
    if (c->next)
        c->next->prev = c;
    gw->conn_list = c;
    gw->conns++;
    gw->conns_total++;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    strcpy(c->addr, "unknown");
    if (getpeername(loop_conn_fd(lc), (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, c->addr, sizeof c->addr);
        else if (ss.ss_family == AF_INET6)
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, c->addr, sizeof c->addr);
    }
    int one = 1;
    setsockopt(loop_conn_fd(lc), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (gw->conns > gw->max_conns || gw->stopping) {
        gw->conns_refused++;
        gw_error_nospan(c, 503, gw->stopping ? "shutting down" : "too many connections", true);
        return;
    }
    if (loop_conn_read_start(lc, gw_on_read) < 0) {
        gw_conn_close(c);
        return;
    }
    gw_arm(c, false);
}
