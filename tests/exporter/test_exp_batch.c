/*
 * tests/exporter/test_exp_batch.c - exporter/batch.c with a fake transport
 * over a real ring: never more than max_export_batch_size spans per export,
 * never more than max_queue_size peeked (and no more than the batch being
 * sent: peeks are just in time), the schedule delay honoured, the idle
 * poll back-off,
 * retries, give-ups (REJECTED, EXPIRED), partial success, shutdown; the
 * ring's accounting balances after each scenario.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "exporter.h"
#include "grpc.h"
#include "otlp_proto.h"
#include "tap.h"

static const trace_scope_t scope = TRACE_SCOPE("batch.test", "1");

/* ------------------------------------------------------ fake transport */

typedef struct {
    loop_t *loop;
    loop_timer_t t;
    exp_done_cb done;
    void *arg;
    size_t last_spans;
    /* script: results for calls 0..n-1, then OK */
    const exp_result_t *script;
    size_t n_script, calls;
    size_t max_spans, total_spans;
    uint64_t max_queue_seen;
    uint64_t call_time[64];
    exp_batcher_t *b;
    uint64_t delay_ns; /* answer after this long */
} fake_t;

static void fake_fire(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop, (void)t;
    fake_t *f = arg;
    exp_result_t ok = {.status = 0, .message = "", .retry_delay_ns = -1, .partial_msg = ""};
    size_t k = f->calls - 1;
    const exp_result_t *r = k < f->n_script ? &f->script[k] : &ok;
    f->done(f->arg, r);
}

/* Spans in an encoded ExportTraceServiceRequest, and the "i" attribute of
 * the first one (-1 without). */
static size_t request_spans(const uint8_t *msg, size_t len, int64_t *first_i)
{
    Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceRequest *req =
        opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(NULL, len, msg);
    size_t n = 0;
    int64_t first = -1;
    for (size_t i = 0; req && i < req->n_resource_spans; i++)
        for (size_t j = 0; j < req->resource_spans[i]->n_scope_spans; j++) {
            Opentelemetry__Proto__Trace__V1__ScopeSpans *ss = req->resource_spans[i]->scope_spans[j];
            if (first < 0 && ss->n_spans && ss->spans[0]->n_attributes)
                first = ss->spans[0]->attributes[0]->value->int_value;
            n += ss->n_spans;
        }
    if (req)
        opentelemetry__proto__collector__trace__v1__export_trace_service_request__free_unpacked(req, NULL);
    if (first_i)
        *first_i = first;
    return n;
}

static int fake_send(void *tctx, const uint8_t *msg, size_t len, uint64_t timeout_ns, exp_done_cb done, void *arg)
{
    (void)timeout_ns;
    fake_t *f = tctx;
    size_t n = request_spans(msg, len, NULL);
    if (f->calls < 64)
        f->call_time[f->calls] = loop_now_ns();
    f->calls++;
    f->last_spans = n;
    if (n > f->max_spans)
        f->max_spans = n;
    f->total_spans += n;
    exp_stats_t st;
    exp_batcher_stats(f->b, &st);
    if (st.queue_len > f->max_queue_seen)
        f->max_queue_seen = st.queue_len;
    f->done = done;
    f->arg = arg;
    loop_timer_start(f->loop, &f->t, f->delay_ns, 0, fake_fire, f);
    return 0;
}

/* A transport that keeps every call pending until the test answers it:
 * several Exports in flight (max_concurrent_exports), answered in any order. */
typedef struct {
    size_t n;
    exp_done_cb done[64];
    void *arg[64];
    size_t spans[64];
    int64_t first_i[64]; /* the "i" attribute of the call's first span */
    size_t pending;
    exp_batcher_t *b;
    uint64_t max_queue_seen;
} multi_t;

static int multi_send(void *tctx, const uint8_t *msg, size_t len, uint64_t timeout_ns, exp_done_cb done, void *arg)
{
    (void)timeout_ns;
    multi_t *m = tctx;
    if (m->n >= 64)
        return -ENOSPC;
    m->done[m->n] = done;
    m->arg[m->n] = arg;
    m->spans[m->n] = request_spans(msg, len, &m->first_i[m->n]);
    m->n++;
    m->pending++;
    exp_stats_t st;
    exp_batcher_stats(m->b, &st);
    if (st.queue_len > m->max_queue_seen)
        m->max_queue_seen = st.queue_len;
    return 0;
}

static void multi_answer(multi_t *m, size_t k, const exp_result_t *r)
{
    m->pending--;
    m->done[k](m->arg[k], r);
}

/* ------------------------------------------------------------ helpers */

static ring_t *ring;
static ring_producer_t *prod;
static char rname[64];

static int write_spans(int n)
{
    int w = 0;
    static uint8_t buf[4096];
    for (int i = 0; i < n; i++) {
        trace_span_t s;
        trace_span_start(&s, &scope, "op", 2, TRACE_KIND_INTERNAL, NULL);
        trace_span_set_int(&s, "i", i);
        int len = trace_span_end_into(&s, 0, buf, sizeof buf);
        void *p = ring_try_reserve_spsc(prod, (uint32_t)len);
        if (!p)
            break;
        memcpy(p, buf, (size_t)len);
        ring_commit_spsc(prod, false);
        w++;
    }
    return w;
}

static void stop_loop(void *arg) { loop_stop(arg); }
static void set_flag(void *arg) { *(bool *)arg = true; }

static bool stopped;
static void on_stop(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)t, (void)arg;
    stopped = true;
    loop_stop(loop);
}

/* Runs the loop until all `want` spans were released or timeout_ms. */
static void run_until(loop_t *loop, exp_batcher_t *b, uint64_t want, int timeout_ms)
{
    uint64_t end = loop_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    loop_timer_t t;
    loop_timer_init(&t);
    while (loop_now_ns() < end) {
        loop_timer_start(loop, &t, 5000000ull, 0, on_stop, NULL);
        loop_run(loop);
        exp_stats_t st;
        exp_batcher_stats(b, &st);
        uint64_t rel = st.spans_exported;
        for (int r = 0; r < RING_DROP__COUNT; r++)
            rel += st.spans_dropped[r];
        if (rel >= want)
            break;
    }
    loop_timer_stop(loop, &t);
}

/* Runs the loop until `want` spans were peeked (queued or already
 * released) or timeout_ms.  A peek takes at most max_queue_size / lanes
 * records from one lane, so a backlog in one lane takes several polls. */
static void run_until_peeked(loop_t *loop, exp_batcher_t *b, uint64_t want, int timeout_ms)
{
    uint64_t end = loop_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    loop_timer_t t;
    loop_timer_init(&t);
    while (loop_now_ns() < end) {
        loop_timer_start(loop, &t, 5000000ull, 0, on_stop, NULL);
        loop_run(loop);
        exp_stats_t st;
        exp_batcher_stats(b, &st);
        uint64_t seen = st.queue_len + st.spans_exported;
        for (int r = 0; r < RING_DROP__COUNT; r++)
            seen += st.spans_dropped[r];
        if (seen >= want)
            break;
    }
    loop_timer_stop(loop, &t);
}

static void run_for(loop_t *loop, int ms)
{
    loop_timer_t t;
    loop_timer_init(&t);
    loop_timer_start(loop, &t, (uint64_t)ms * 1000000ull, 0, on_stop, NULL);
    loop_run(loop);
    loop_timer_stop(loop, &t);
}

static bool balanced(void)
{
    ring_stats_t rs;
    ring_stats(ring, &rs);
    uint64_t d = 0;
    for (int r = RING_DROP_CORRUPT; r < RING_DROP__COUNT; r++)
        d += rs.dropped[r];
    return rs.written == rs.exported + d + rs.in_ring;
}

static exp_settings_t base(void)
{
    exp_settings_t s = {0};
    s.batch_max = 512;
    s.queue_max = 2048;
    s.delay_ns = 300000000ull;
    s.export_timeout_ns = 5000000000ull;
    s.timeout_ns = 1000000000ull;
    return s;
}

int main(void)
{
    char err[256] = "";
    trace_options_t o = {.service_name = "batch-test", .no_ring = true};
    if (!tap_check(trace_init(&o, err, sizeof err) == 0, "trace_init: %s", err))
        return tap_done();
    snprintf(rname, sizeof rname, "/shop-test-exp-batch-%d", (int)getpid());
    ring_geometry_t g = {.lanes = 4, .max_record = 4096, .lane_size = 4u * 1024u * 1024u};
    ring_unlink(rname);
    if (!tap_check(ring_open(rname, &g, true, &ring, err, sizeof err) == 0, "ring created: %s", err))
        return tap_done();
    tap_check(ring_consumer_open(ring, err, sizeof err) == 0, "consumer role: %s", err);
    uint8_t meta[256];
    trace_attr_t ra = {.key = "service.name", .key_len = 12, .type = TRACE_ATTR_STRING, .v.s = {"bt", 2}};
    int ml = span_resource_encode(&ra, 1, meta, sizeof meta);
    tap_check(ring_producer_acquire(ring, meta, (uint32_t)ml, &prod) == 0, "producer lane");
    loop_t *loop;
    loop_create(&loop, NULL);
    retry_policy_t rp = {.initial_ns = 20000000ull, .max_ns = 80000000ull};

    /* 1. 5000 spans: full batches of 512 at once, the rest after the delay */
    fake_t f = {.loop = loop};
    loop_timer_init(&f.t);
    exp_settings_t s = base();
    exp_batcher_t *b;
    int w = write_spans(5000);
    tap_check(w == 5000, "5000 spans written");
    uint64_t t0 = loop_now_ns();
    tap_check(exp_batcher_new(loop, ring, &s, &rp, fake_send, &f, &b) == 0, "batcher created");
    f.b = b;
    run_until(loop, b, 5000, 5000);
    tap_check(f.total_spans == 5000, "every span sent once (%zu)", f.total_spans);
    tap_check(f.max_spans <= 512 && f.max_spans == 512, "largest export 512 spans (%zu)", f.max_spans);
    tap_check(f.max_queue_seen <= 2048, "never more than 2048 peeked (%llu)", (unsigned long long)f.max_queue_seen);
    tap_check(f.calls == 10, "10 exports: 9 x 512 + 392 (%zu)", f.calls);
    tap_check(f.calls == 10 && f.call_time[8] - t0 < 200000000ull,
              "full batches go at once, not after the delay (%.1f ms)", (double)(f.call_time[8] - t0) / 1e6);
    tap_check(f.calls == 10 && f.call_time[9] - f.call_time[8] >= 290000000ull,
              "the partial batch waits for the schedule delay (%.1f ms)",
              (double)(f.call_time[9] - f.call_time[8]) / 1e6);
    ring_stats_t rs;
    ring_stats(ring, &rs);
    tap_check(rs.exported == 5000 && rs.in_ring == 0 && balanced(), "ring: exported 5000, in ring 0, balanced");
    exp_batcher_free(b);

    /* 2. a small batch under load never exceeds the batch size; queue 600, batch 100 */
    fake_t f2 = {.loop = loop, .delay_ns = 2000000ull};
    loop_timer_init(&f2.t);
    s = base();
    s.batch_max = 100;
    s.queue_max = 600;
    s.delay_ns = 50000000ull;
    exp_batcher_new(loop, ring, &s, &rp, fake_send, &f2, &b);
    f2.b = b;
    w = write_spans(3000);
    run_until(loop, b, 3000, 5000);
    tap_check(f2.total_spans == 3000 && f2.max_spans <= 100 && f2.max_queue_seen <= 600,
              "batch 100 / queue 600: %zu spans, largest %zu, most peeked %llu", f2.total_spans, f2.max_spans,
              (unsigned long long)f2.max_queue_seen);
    /* peeked just in time: at each send the queue holds that batch and
     * nothing behind it (records peeked ahead would be encoded later, from
     * memory rather than from the cache); the 3000 spans were all in the
     * ring from the start */
    tap_check(f2.max_queue_seen == 100, "queue at each send: the batch only, nothing peeked behind it (most %llu)",
              (unsigned long long)f2.max_queue_seen);
    exp_batcher_free(b);

    /* 3. retries: UNAVAILABLE twice, then OK */
    exp_result_t unav = {.status = GRPC_STATUS_UNAVAILABLE, .message = "down", .retry_delay_ns = -1, .partial_msg = ""};
    exp_result_t script3[] = {unav, unav};
    fake_t f3 = {.loop = loop, .script = script3, .n_script = 2};
    loop_timer_init(&f3.t);
    s = base();
    s.delay_ns = 0;
    exp_batcher_new(loop, ring, &s, &rp, fake_send, &f3, &b);
    f3.b = b;
    write_spans(10);
    run_until(loop, b, 10, 3000);
    exp_stats_t st;
    exp_batcher_stats(b, &st);
    tap_check(f3.calls == 3 && st.retries == 2 && st.spans_exported == 10 && st.export_failures == 2,
              "UNAVAILABLE x2 then OK: 3 calls, 2 retries, 10 exported");
    tap_check(f3.calls == 3 && f3.call_time[1] - f3.call_time[0] >= 10000000ull,
              "retry waited the backoff (%.1f ms >= 10)", (double)(f3.call_time[1] - f3.call_time[0]) / 1e6);
    exp_batcher_free(b);

    /* 4. RetryInfo honoured */
    exp_result_t ri = {.status = GRPC_STATUS_RESOURCE_EXHAUSTED, .message = "", .retry_delay_ns = 150000000ll,
                       .partial_msg = ""};
    fake_t f4 = {.loop = loop, .script = &ri, .n_script = 1};
    loop_timer_init(&f4.t);
    exp_batcher_new(loop, ring, &s, &rp, fake_send, &f4, &b);
    f4.b = b;
    write_spans(5);
    run_until(loop, b, 5, 3000);
    tap_check(f4.calls == 2 && f4.call_time[1] - f4.call_time[0] >= 150000000ull,
              "RESOURCE_EXHAUSTED + RetryInfo 150 ms: retried after %.1f ms",
              (double)(f4.call_time[1] - f4.call_time[0]) / 1e6);
    exp_batcher_free(b);

    /* 5. non-retryable: dropped REJECTED */
    ring_stats(ring, &rs);
    uint64_t rej0 = rs.dropped[RING_DROP_REJECTED];
    exp_result_t inv = {.status = GRPC_STATUS_INVALID_ARGUMENT, .message = "bad", .retry_delay_ns = -1, .partial_msg = ""};
    fake_t f5 = {.loop = loop, .script = &inv, .n_script = 1};
    loop_timer_init(&f5.t);
    exp_batcher_new(loop, ring, &s, &rp, fake_send, &f5, &b);
    f5.b = b;
    write_spans(7);
    run_until(loop, b, 7, 3000);
    ring_stats(ring, &rs);
    tap_check(f5.calls == 1 && rs.dropped[RING_DROP_REJECTED] - rej0 == 7 && balanced(),
              "INVALID_ARGUMENT: 1 call, 7 dropped REJECTED, balanced");
    exp_batcher_free(b);

    /* 6. partial success: 3 of 9 rejected */
    exp_result_t part = {.status = 0, .message = "", .retry_delay_ns = -1, .rejected = 3, .partial_msg = "too old"};
    fake_t f6 = {.loop = loop, .script = &part, .n_script = 1};
    loop_timer_init(&f6.t);
    exp_batcher_new(loop, ring, &s, &rp, fake_send, &f6, &b);
    f6.b = b;
    write_spans(9);
    run_until(loop, b, 9, 3000);
    exp_batcher_stats(b, &st);
    tap_check(st.spans_exported == 6 && st.spans_dropped[RING_DROP_REJECTED] == 3 && st.partial_rejected == 3,
              "partial_success 3 rejected: 6 exported, 3 dropped REJECTED");
    exp_batcher_free(b);

    /* 7. export timeout spent: EXPIRED */
    exp_result_t many[64];
    for (int i = 0; i < 64; i++)
        many[i] = unav;
    fake_t f7 = {.loop = loop, .script = many, .n_script = 64};
    loop_timer_init(&f7.t);
    s.export_timeout_ns = 200000000ull;
    exp_batcher_new(loop, ring, &s, &rp, fake_send, &f7, &b);
    f7.b = b;
    write_spans(4);
    uint64_t t7 = loop_now_ns();
    run_until(loop, b, 4, 3000);
    exp_batcher_stats(b, &st);
    tap_check(st.spans_dropped[RING_DROP_EXPIRED] == 4 && f7.calls >= 2 && loop_now_ns() - t7 < 1000000000ull,
              "always UNAVAILABLE, export timeout 200 ms: 4 dropped EXPIRED after %zu calls", f7.calls);
    exp_batcher_free(b);

    /* 8. shutdown exports what is queued, within the export timeout, at once */
    fake_t f8 = {.loop = loop};
    loop_timer_init(&f8.t);
    s = base();
    s.delay_ns = 3600000000ull; /* would never fire during the test */
    exp_batcher_new(loop, ring, &s, &rp, fake_send, &f8, &b);
    f8.b = b;
    write_spans(1234);
    /* lets it peek all of them (the first full batches may go meanwhile):
     * shutdown exports what is queued, and peeks no more */
    run_until_peeked(loop, b, 1234, 1000);
    stopped = false;
    exp_batcher_shutdown(b, stop_loop, loop);
    uint64_t t8 = loop_now_ns();
    loop_run(loop);
    exp_batcher_stats(b, &st);
    ring_stats(ring, &rs);
    /* "At once": well before the 1 h schedule delay; the bound leaves room for
     * a loaded machine and the sanitizer build. */
    uint64_t took8 = loop_now_ns() - t8;
    tap_check(st.spans_exported == 1234 && rs.in_ring == 0 && took8 < 5000000000ull,
              "shutdown: all 1234 queued spans exported at once (%llu exported, %llu in ring, %llu ms)",
              (unsigned long long)st.spans_exported, (unsigned long long)rs.in_ring,
              (unsigned long long)(took8 / 1000000u));
    exp_batcher_free(b);

    /* 9. shutdown with the receiver down: released SHUTDOWN/EXPIRED by the deadline */
    fake_t f9 = {.loop = loop, .script = many, .n_script = 64};
    loop_timer_init(&f9.t);
    s.export_timeout_ns = 300000000ull;
    exp_batcher_new(loop, ring, &s, &rp, fake_send, &f9, &b);
    f9.b = b;
    write_spans(600);
    run_until_peeked(loop, b, 600, 1000);
    exp_batcher_shutdown(b, stop_loop, loop);
    uint64_t t9 = loop_now_ns();
    loop_run(loop);
    exp_batcher_stats(b, &st);
    ring_stats(ring, &rs);
    uint64_t gone = st.spans_dropped[RING_DROP_SHUTDOWN] + st.spans_dropped[RING_DROP_EXPIRED];
    uint64_t took9 = loop_now_ns() - t9;
    tap_check(gone == 600 && rs.in_ring == 0 && took9 < 3000000000ull && balanced(),
              "shutdown with receiver down: 600 dropped (shutdown %llu, expired %llu, in ring %llu) in %llu ms, "
              "bounded by the export timeout, balanced",
              (unsigned long long)st.spans_dropped[RING_DROP_SHUTDOWN],
              (unsigned long long)st.spans_dropped[RING_DROP_EXPIRED], (unsigned long long)rs.in_ring,
              (unsigned long long)(took9 / 1000000u));
    exp_batcher_free(b);

    /* 10. idle back-off: on an empty ring the poll interval doubles from 2
     * to 16 ms (about 60 polls a second, not 500); the first span after
     * the quiet spell is still picked up within one 16 ms interval (plus
     * room for a loaded machine). */
    fake_t f10 = {.loop = loop};
    loop_timer_init(&f10.t);
    s = base();
    s.delay_ns = 0; /* export what is there at once */
    exp_batcher_new(loop, ring, &s, &rp, fake_send, &f10, &b);
    f10.b = b;
    loop_timer_t t10;
    loop_timer_init(&t10);
    loop_timer_start(loop, &t10, 500000000ull, 0, on_stop, NULL);
    loop_run(loop); /* 500 ms, nothing in the ring */
    exp_batcher_stats(b, &st);
    uint64_t idle_polls = st.polls;
    tap_check(idle_polls >= 5 && idle_polls <= 45,
              "idle ring: %llu polls in 500 ms (2 ms doubling to 16 ms: ~33; at a fixed 2 ms: 250)",
              (unsigned long long)idle_polls);
    uint64_t t10w = loop_now_ns();
    write_spans(1);
    run_until(loop, b, 1, 1000);
    uint64_t took10 = f10.calls ? f10.call_time[0] - t10w : UINT64_MAX;
    tap_check(f10.calls == 1 && took10 < 16000000ull + 100000000ull,
              "the first span after the quiet spell is sent %llu ms after it was written (one idle interval, "
              "16 ms, at most, plus scheduling)", (unsigned long long)(took10 / 1000000u));
    /* A burst after the quiet spell is not paced by the idle interval: each
     * batch's end peeks at once. */
    loop_timer_start(loop, &t10, 300000000ull, 0, on_stop, NULL);
    loop_run(loop); /* back to 16 ms */
    write_spans(5000);
    uint64_t t10b = loop_now_ns();
    run_until(loop, b, 5001, 2000);
    tap_check(f10.calls == 11 && f10.call_time[10] - t10b < 16000000ull + 200000000ull,
              "a burst of 5000 after another quiet spell: 10 exports, the last %llu ms after the write",
              (unsigned long long)(f10.calls == 11 ? (f10.call_time[10] - t10b) / 1000000u : 0));
    exp_batcher_free(b);


    /* 11. several Exports in flight (max_concurrent_exports 3, batch 10,
     * queue 30): three go out at once; answered out of order, nothing is
     * released before every earlier batch is done (the ring releases in
     * peek order, and promise 3 holds); a retry in the oldest one holds
     * back the two later ones it finished before. */
    exp_result_t ok = {.status = 0, .message = "", .retry_delay_ns = -1, .partial_msg = ""};
    multi_t m11 = {0};
    s = base();
    s.batch_max = 10;
    s.queue_max = 30;
    s.concurrent_max = 3;
    s.delay_ns = 0;
    tap_check(exp_batcher_new(loop, ring, &s, &rp, multi_send, &m11, &b) == 0, "batcher with 3 Exports in flight");
    m11.b = b;
    ring_stats(ring, &rs);
    uint64_t exp11 = rs.exported;
    write_spans(40);
    run_for(loop, 50);
    tap_check(m11.n == 3 && m11.pending == 3 && m11.spans[0] == 10 && m11.spans[1] == 10 && m11.spans[2] == 10,
              "40 spans, batch 10, 3 in flight: 3 calls of 10 at once (%zu calls, %zu pending)", m11.n, m11.pending);
    tap_check(m11.max_queue_seen <= 30, "peeked and not released stays <= max_queue_size 30 (most %llu)",
              (unsigned long long)m11.max_queue_seen);
    tap_check(m11.first_i[0] == 0 && m11.first_i[1] == 10 && m11.first_i[2] == 20,
              "the calls carry the spans in ring order (first i: %lld, %lld, %lld)", (long long)m11.first_i[0],
              (long long)m11.first_i[1], (long long)m11.first_i[2]);
    multi_answer(&m11, 2, &ok);
    multi_answer(&m11, 1, &ok);
    run_for(loop, 20);
    ring_stats(ring, &rs);
    tap_check(rs.exported == exp11 && m11.n == 3,
              "the 2nd and 3rd answered first: nothing released, no 4th call (%llu released, %zu calls)",
              (unsigned long long)(rs.exported - exp11), m11.n);
    exp_result_t unav11 = {.status = GRPC_STATUS_UNAVAILABLE, .message = "down", .retry_delay_ns = -1,
                           .partial_msg = ""};
    multi_answer(&m11, 0, &unav11);
    run_for(loop, 150); /* the backoff: 20 ms +- jitter */
    ring_stats(ring, &rs);
    tap_check(m11.n == 4 && m11.spans[3] == 10 && m11.first_i[3] == 0 && rs.exported == exp11,
              "the 1st failed: retried as call 4 (first i %lld), still nothing released (%llu)",
              (long long)(m11.n > 3 ? m11.first_i[3] : -1), (unsigned long long)(rs.exported - exp11));
    multi_answer(&m11, 3, &ok);
    run_for(loop, 50);
    ring_stats(ring, &rs);
    tap_check(rs.exported - exp11 == 30 && m11.n == 5 && m11.spans[4] == 10 && m11.first_i[4] == 30,
              "the retry answered: all three batches released together (%llu), the last 10 go out (call %zu)",
              (unsigned long long)(rs.exported - exp11), m11.n);
    multi_answer(&m11, 4, &ok);
    run_for(loop, 20);
    exp_batcher_stats(b, &st);
    ring_stats(ring, &rs);
    tap_check(rs.exported - exp11 == 40 && st.spans_exported == 40 && st.batches == 4 && st.retries == 1 &&
                  rs.in_ring == 0 && balanced(),
              "40 exported in 4 batches, 1 retry, ring empty and balanced");

    /* 12. the queue bounds the Exports in flight: 3 allowed, batch 10,
     * queue 20: two at most; shutdown with both in flight waits for them. */
    exp_batcher_free(b);
    multi_t m12 = {0};
    s.queue_max = 20;
    exp_batcher_new(loop, ring, &s, &rp, multi_send, &m12, &b);
    m12.b = b;
    ring_stats(ring, &rs);
    uint64_t exp12 = rs.exported;
    write_spans(50);
    run_for(loop, 50);
    tap_check(m12.n == 2 && m12.pending == 2 && m12.max_queue_seen <= 20,
              "queue 20 / batch 10: 2 in flight of the 3 allowed (%zu calls, most peeked %llu)", m12.n,
              (unsigned long long)m12.max_queue_seen);
    bool shut12 = false;
    exp_batcher_shutdown(b, set_flag, &shut12);
    run_for(loop, 20);
    tap_check(m12.n == 2 && !shut12, "shutdown: no new call while both in flight hold the queue, not done (%zu calls)",
              m12.n);
    multi_answer(&m12, 1, &ok);
    multi_answer(&m12, 0, &ok);
    run_for(loop, 50);
    exp_batcher_stats(b, &st);
    ring_stats(ring, &rs);
    tap_check(shut12 && m12.n == 2 && st.spans_exported == 20 && rs.exported - exp12 == 20 && rs.in_ring == 30 &&
                  balanced(),
              "shutdown done once both answered: 20 exported, the 30 never peeked left in the ring for the next "
              "exporter (%llu exported, %llu in ring), balanced", (unsigned long long)st.spans_exported,
              (unsigned long long)rs.in_ring);
    exp_batcher_free(b);

    ring_producer_release(prod);
    loop_destroy(loop);
    ring_close(ring);
    ring_unlink(rname);
    trace_shutdown();
    return tap_done();
}
