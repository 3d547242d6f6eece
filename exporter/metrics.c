/*
 * exporter/metrics.c - /metrics: the ring's and the exporter's counters as
 * Prometheus text (exposition format 0.0.4), served by a tiny HTTP/1.1
 * responder on the exporter's loop.
 *
 * The responder answers one request per connection (Connection: close):
 * scrapers open a connection per scrape anyway, and it keeps the state
 * machine to READING -> WRITING -> closed.  It buffers partial reads up to
 * METRICS__REQ_MAX bytes until the blank line ending the headers, answers
 * GET /metrics with 200, other paths 404, other methods 405, junk 400, and
 * closes a connection that has not sent a whole request within
 * METRICS__IDLE_NS.  The request body (none for GET) is ignored.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exporter.h"

#define METRICS__REQ_MAX 8192u
#define METRICS__IDLE_NS (10ull * 1000000000ull)

const uint32_t exp_batch_bounds[EXP_BATCH_BUCKETS] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
const double exp_latency_bounds[EXP_LATENCY_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                        0.1,   0.25,   0.5,   1,    5,     30};

typedef struct {
    char *p;
    size_t len, cap;
    bool overflow;
} metrics__buf_t;

static __attribute__((format(printf, 2, 3))) void metrics__put(metrics__buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p + b->len, b->len < b->cap ? b->cap - b->len : 0, fmt, ap);
    va_end(ap);
    if (n < 0 || b->len + (size_t)n >= b->cap)
        b->overflow = true;
    else
        b->len += (size_t)n;
}

static void metrics__counter(metrics__buf_t *b, const char *name, const char *help, uint64_t v)
{
    metrics__put(b, "# HELP %s %s\n# TYPE %s counter\n%s %" PRIu64 "\n", name, help, name, name, v);
}

static void metrics__gauge(metrics__buf_t *b, const char *name, const char *help, double v)
{
    metrics__put(b, "# HELP %s %s\n# TYPE %s gauge\n%s %.17g\n", name, help, name, name, v);
}

long metrics_render(const ring_stats_t *rs, const exp_stats_t *es, char *out, size_t cap)
{
    metrics__buf_t b = {.p = out, .cap = cap};
    metrics__counter(&b, "shop_ring_spans_written_total", "Span records committed by producers.", rs->written);
    metrics__counter(&b, "shop_ring_spans_truncated_total", "Span records cut down to fit (also counted written).",
                     rs->truncated);
    metrics__counter(&b, "shop_ring_spans_torn_total", "Writes begun by a producer that died before committing.",
                     rs->torn);
    metrics__counter(&b, "shop_ring_spans_exported_total", "Span records released as delivered.", rs->exported);
    metrics__put(&b, "# HELP shop_ring_spans_dropped_total Span records dropped, by reason.\n"
                     "# TYPE shop_ring_spans_dropped_total counter\n");
    for (int r = 0; r < RING_DROP__COUNT; r++)
        metrics__put(&b, "shop_ring_spans_dropped_total{reason=\"%s\"} %" PRIu64 "\n",
                     ring_drop_reason_name((ring_drop_reason_t)r), rs->dropped[r]);
    metrics__counter(&b, "shop_ring_spans_redelivered_total", "Records a restarted exporter may send twice.",
                     rs->redelivered);
    metrics__counter(&b, "shop_ring_resyncs_total", "Times the consumer skipped invalid lane bytes.", rs->resyncs);
    metrics__gauge(&b, "shop_ring_spans_in_ring", "Records committed and not yet released.", (double)rs->in_ring);
    metrics__gauge(&b, "shop_ring_bytes_used", "Committed bytes not yet released.", (double)rs->bytes_used);
    metrics__gauge(&b, "shop_ring_bytes_capacity", "Data bytes of the ring (lanes x lane_size).",
                   (double)rs->bytes_capacity);
    metrics__gauge(&b, "shop_ring_fill_ratio", "bytes_used / bytes_capacity.",
                   rs->bytes_capacity ? (double)rs->bytes_used / (double)rs->bytes_capacity : 0.0);
    metrics__gauge(&b, "shop_ring_producers", "Lanes held by a live producer.", rs->producers);

    metrics__counter(&b, "shop_exporter_exports_total", "Export calls started (retries included).", es->exports);
    metrics__counter(&b, "shop_exporter_export_failures_total", "Export calls that did not end OK.",
                     es->export_failures);
    metrics__counter(&b, "shop_exporter_retries_total", "Export calls that were retries.", es->retries);
    metrics__counter(&b, "shop_exporter_batches_total", "Batches finished (acknowledged or given up).", es->batches);
    metrics__counter(&b, "shop_exporter_spans_exported_total", "Spans acknowledged by the receiver.",
                     es->spans_exported);
    metrics__put(&b, "# HELP shop_exporter_spans_dropped_total Spans this exporter gave up, by reason.\n"
                     "# TYPE shop_exporter_spans_dropped_total counter\n");
    for (int r = RING_DROP_CORRUPT; r < RING_DROP__COUNT; r++)
        metrics__put(&b, "shop_exporter_spans_dropped_total{reason=\"%s\"} %" PRIu64 "\n",
                     ring_drop_reason_name((ring_drop_reason_t)r), es->spans_dropped[r]);
    metrics__counter(&b, "shop_exporter_partial_rejected_spans_total",
                     "Spans the receiver rejected in a partial_success.", es->partial_rejected);
    metrics__gauge(&b, "shop_exporter_queue_spans", "Spans peeked from the ring and not yet released.",
                   (double)es->queue_len);

    metrics__put(&b, "# HELP shop_exporter_batch_size_spans Spans per finished batch.\n"
                     "# TYPE shop_exporter_batch_size_spans histogram\n");
    uint64_t cum = 0;
    for (int k = 0; k < EXP_BATCH_BUCKETS; k++) {
        cum += es->batch_hist[k];
        metrics__put(&b, "shop_exporter_batch_size_spans_bucket{le=\"%" PRIu32 "\"} %" PRIu64 "\n",
                     exp_batch_bounds[k], cum);
    }
    cum += es->batch_hist[EXP_BATCH_BUCKETS];
    metrics__put(&b, "shop_exporter_batch_size_spans_bucket{le=\"+Inf\"} %" PRIu64 "\n"
                     "shop_exporter_batch_size_spans_sum %" PRIu64 "\nshop_exporter_batch_size_spans_count %" PRIu64 "\n",
                 cum, es->batch_sum, cum);

    metrics__put(&b, "# HELP shop_exporter_export_duration_seconds Time from sending an Export call to its end.\n"
                     "# TYPE shop_exporter_export_duration_seconds histogram\n");
    cum = 0;
    for (int k = 0; k < EXP_LATENCY_BUCKETS; k++) {
        cum += es->lat_hist[k];
        metrics__put(&b, "shop_exporter_export_duration_seconds_bucket{le=\"%g\"} %" PRIu64 "\n",
                     exp_latency_bounds[k], cum);
    }
    cum += es->lat_hist[EXP_LATENCY_BUCKETS];
    metrics__put(&b, "shop_exporter_export_duration_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n"
                     "shop_exporter_export_duration_seconds_sum %.9f\n"
                     "shop_exporter_export_duration_seconds_count %" PRIu64 "\n",
                 cum, es->lat_sum, cum);
    return b.overflow ? -ENOSPC : (long)b.len;
}

int metrics_http_route(const char *buf, size_t len)
{
    const char *eol = memchr(buf, '\n', len);
    if (!eol)
        return len >= METRICS__REQ_MAX ? -1 : -2;
    const char *sp1 = memchr(buf, ' ', (size_t)(eol - buf));
    if (!sp1 || sp1 == buf)
        return -1;
    const char *path = sp1 + 1;
    const char *sp2 = memchr(path, ' ', (size_t)(eol - path));
    if (!sp2 || sp2 == path || (size_t)(eol - sp2) < 9 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0)
        return -1;
    size_t plen = (size_t)(sp2 - path);
    const char *q = memchr(path, '?', plen);
    if (q)
        plen = (size_t)(q - path);
    bool get = (sp1 - buf == 3 && !memcmp(buf, "GET", 3)) || (sp1 - buf == 4 && !memcmp(buf, "HEAD", 4));
    bool ours = plen == 8 && !memcmp(path, "/metrics", 8);
    if (!ours)
        return 404;
    return get ? 200 : 405;
}

/* ---------------------------------------------------------- responder */

struct st_metrics_server_t {
    loop_t *loop;
    loop_listener_t *l;
    metrics_snapshot_fn snap;
    void *arg;
    struct metrics__conn *conns; /* open connections, for free */
};

typedef enum { METRICS__READING = 1, METRICS__WRITING, METRICS__CLOSING } metrics__state_t;

typedef struct metrics__conn {
    metrics_server_t *srv;
    loop_conn_t *c;
    metrics__state_t state;
    loop_timer_t idle;
    size_t len;
    char *resp;
    struct metrics__conn *next, **pprev;
    char req[METRICS__REQ_MAX];
} metrics__conn_t;

static void metrics__on_close(loop_conn_t *c, void *data)
{
    (void)c;
    metrics__conn_t *m = data;
    free(m->resp);
    free(m);
}

static void metrics__close(metrics__conn_t *m)
{
    if (m->state == METRICS__CLOSING)
        return;
    m->state = METRICS__CLOSING;
    loop_timer_stop(m->srv->loop, &m->idle);
    if (m->pprev) {
        *m->pprev = m->next;
        if (m->next)
            m->next->pprev = m->pprev;
        m->pprev = NULL;
    }
    loop_conn_close(m->c, metrics__on_close);
}

static void metrics__on_written(loop_conn_t *c, int status, void *arg)
{
    (void)c, (void)status;
    metrics__close(arg); /* Connection: close */
}

static void metrics__respond(metrics__conn_t *m, int code, bool head)
{
    size_t cap = 32768;
    char *body = NULL;
    long blen = 0;
    const char *reason = code == 200 ? "OK" : code == 404 ? "Not Found" : code == 405 ? "Method Not Allowed"
                                                                                     : "Bad Request";
    if (code == 200) {
        ring_stats_t rs;
        exp_stats_t es;
        m->srv->snap(m->srv->arg, &rs, &es);
        for (;;) {
            char *nb = realloc(body, cap);
            if (!nb) {
                free(body);
                metrics__close(m);
                return;
            }
            body = nb;
            blen = metrics_render(&rs, &es, body + 256, cap - 256);
            if (blen >= 0)
                break;
            cap *= 2;
        }
    } else {
        body = malloc(256 + 64);
        if (!body) {
            metrics__close(m);
            return;
        }
        blen = snprintf(body + 256, 64, "%d %s\n", code, reason);
    }
    /* headers right before the body, in the same buffer */
    char hdr[256];
    int hl = snprintf(hdr, sizeof hdr,
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %ld\r\nConnection: close\r\n\r\n",
                      code, reason, code == 200 ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain", blen);
    char *start = body + 256 - hl;
    memcpy(start, hdr, (size_t)hl);
    m->resp = body;
    m->state = METRICS__WRITING;
    struct iovec iov = {start, (size_t)hl + (head ? 0 : (size_t)blen)};
    if (loop_conn_write(m->c, &iov, 1, metrics__on_written, m) != 0)
        metrics__close(m);
}

static void metrics__on_read(loop_conn_t *c, ssize_t n, const void *buf, void *data)
{
    (void)c;
    metrics__conn_t *m = data;
    if (m->state != METRICS__READING)
        return; /* a pipelined extra request: ignored, we close after answering */
    if (n <= 0) {
        metrics__close(m);
        return;
    }
    size_t take = (size_t)n;
    if (take > sizeof m->req - m->len)
        take = sizeof m->req - m->len;
    memcpy(m->req + m->len, buf, take);
    m->len += take;
    bool complete = false;
    for (size_t i = 3; i < m->len && !complete; i++)
        complete = !memcmp(m->req + i - 3, "\r\n\r\n", 4) || !memcmp(m->req + i - 1, "\n\n", 2);
    if (!complete) {
        if (m->len == sizeof m->req)
            metrics__respond(m, 400, false);
        return; /* partial read: wait for more */
    }
    int r = metrics_http_route(m->req, m->len);
    metrics__respond(m, r < 0 ? 400 : r, m->len >= 4 && !memcmp(m->req, "HEAD", 4));
}

static void metrics__on_idle(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop, (void)t;
    metrics__close(arg);
}

static void metrics__on_accept(loop_listener_t *l, loop_conn_t *c, void *arg)
{
    (void)l;
    metrics_server_t *s = arg;
    metrics__conn_t *m = calloc(1, sizeof *m);
    if (!m) {
        loop_conn_close(c, NULL);
        return;
    }
    m->srv = s;
    m->c = c;
    m->state = METRICS__READING;
    loop_conn_set_data(c, m);
    loop_timer_init(&m->idle);
    m->next = s->conns;
    if (s->conns)
        s->conns->pprev = &m->next;
    m->pprev = &s->conns;
    s->conns = m;
    if (loop_timer_start(s->loop, &m->idle, METRICS__IDLE_NS, 0, metrics__on_idle, m) != 0 ||
        loop_conn_read_start(c, metrics__on_read) != 0)
        metrics__close(m);
}

int metrics_server_new(loop_t *loop, const char *addr, uint16_t port, metrics_snapshot_fn snap, void *arg,
                       metrics_server_t **out)
{
    metrics_server_t *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->loop = loop;
    s->snap = snap;
    s->arg = arg;
    int rc = loop_listen(loop, addr, port, 64, metrics__on_accept, s, &s->l);
    if (rc < 0) {
        free(s);
        return rc;
    }
    *out = s;
    return 0;
}

uint16_t metrics_server_port(const metrics_server_t *m) { return loop_listener_port(m->l); }

void metrics_server_free(metrics_server_t *s)
{
    if (!s)
        return;
    if (s->l)
        loop_listener_close(s->l);
    while (s->conns)
        metrics__close(s->conns);
    free(s);
}
