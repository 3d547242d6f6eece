/*
 * exporter/batch.c - the Batch Span Processor over the ring consumer.
 *
 * The queue is the ring itself: records are peeked (not copied) into q[],
 * at most max_queue_size of them peeked and not yet released (what
 * OTEL_BSP_MAX_QUEUE_SIZE bounds).  A batch is the first <= max_export_batch_size
 * of them; it is exported when the queue holds a full batch or when
 * schedule_delay passed since the previous export started.  One batch is in
 * flight at a time: ring_consumer_release frees records in peek order, so a
 * second concurrent batch could not be released before the first anyway.
 * The read position moves only when a batch is acknowledged or given up
 * (promise 3): exported, or dropped REJECTED / EXPIRED / CORRUPT / SHUTDOWN.
 *
 * Peeking is just in time: only while no batch is in flight, and only up
 * to one batch (max_export_batch_size), so the records are encoded right
 * after the peek brought them into the cache.  Peeked earlier, behind the
 * batch in flight, they were encoded one or more Exports later, after the
 * exporter had slept through the receiver's answer, and the encoder read
 * them from memory a second time (benchmark VM, batch 512: ~20 ns per
 * span more in otlp_encode beside Jaeger).  Peeking ahead buys nothing
 * else: the ring holds the spans either way, and frees their room only on
 * release.  Only the shutdown drain fills the queue to max_queue_size.
 *
 * Producers make no system call, so nothing wakes us when spans arrive: a
 * repeating poll timer peeks (every EXP_POLL_NS, backing off to
 * EXP_POLL_IDLE_MAX_NS while the ring stays empty), and a finished export
 * peeks at once.
 * The poll timer is stopped while a batch is in flight (or waits for a
 * retry): nothing is peeked or sent before the batch ends, and its end
 * peeks at once, so a poll then would only be a wake-up (each one costs the
 * process several microseconds of CPU in a VM, as much as encoding tens of
 * spans; a receiver slower than us, as Jaeger is, saw one or two per
 * Export).  Each peek repeats until the queue holds a batch or the ring has
 * nothing committed, since one call takes at most a quota per lane.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "exporter.h"
#include "grpc.h"

struct st_exp_batcher_t {
    loop_t *loop;
    ring_t *ring;
    exp_settings_t s;
    retry_policy_t rp;
    exp_send_fn send;
    void *tctx;
    otlp_encoder_t *enc;
    uint64_t (*now)(void);
    uint64_t rng;
    ring_record_t *q;       /* q[0..qlen): peeked, not released; qlen <= queue_max */
    uint32_t qlen;
    /* the batch in flight: q[0..batch_n) */
    bool busy;              /* a batch is being sent or waits for a retry */
    uint32_t batch_n;
    uint64_t batch_bad;     /* of them, not valid span records */
    const uint8_t *msg;     /* encoded request (encoder buffer) */
    size_t msg_len;
    unsigned attempt;       /* 0 = first */
    uint64_t batch_deadline, attempt_start;
    uint64_t last_export;   /* start of the previous batch (schedule delay) */
    uint64_t last_reap;
    uint64_t poll_ns;       /* current poll interval (EXP_POLL_NS .. EXP_POLL_IDLE_MAX_NS) */
    loop_timer_t poll, retry, kick, shut;
    bool stopping;
    uint64_t shut_deadline;
    void (*shut_done)(void *);
    void *shut_arg;
    bool shut_called;
    exp_stats_t st;
};

static void exp__pump(exp_batcher_t *b);
static void exp__attempt(exp_batcher_t *b);
static void exp__on_kick(loop_t *loop, loop_timer_t *t, void *arg);
static void exp__on_retry(loop_t *loop, loop_timer_t *t, void *arg);
static void exp__on_poll(loop_t *loop, loop_timer_t *t, void *arg);

static uint64_t exp__rand(exp_batcher_t *b)
{
    /* xorshift64*: jitter only, not security */
    b->rng ^= b->rng >> 12;
    b->rng ^= b->rng << 25;
    b->rng ^= b->rng >> 27;
    return b->rng * 2685821657736338717ull;
}

static int exp__meta(void *arg, uint32_t lane, const void **blob)
{
    int32_t pid;
    return ring_lane_meta((const ring_t *)arg, lane, blob, &pid);
}

/* Releases the first n queued records: bad ones CORRUPT, then `exported`
 * of the rest exported and the others dropped with `reason`. */
static void exp__release(exp_batcher_t *b, uint32_t n, uint64_t bad, uint64_t exported,
                         ring_drop_reason_t reason)
{
    if (bad) {
        ring_consumer_release(b->ring, bad, 0, RING_DROP_CORRUPT);
        b->st.spans_dropped[RING_DROP_CORRUPT] += bad;
        b->st.undecodable += bad;
    }
    uint64_t rest = n - bad;
    if (rest) {
        int rc = ring_consumer_release(b->ring, rest, exported, reason);
        if (rc < 0)
            fprintf(stderr, "shop-exporter: ring_consumer_release(%llu): %s\n",
                    (unsigned long long)rest, strerror(-rc));
    }
    b->st.spans_exported += exported;
    b->st.spans_dropped[reason] += rest - exported;
    memmove(b->q, b->q + n, (b->qlen - n) * sizeof *b->q);
    b->qlen -= n;
}

static void exp__finish(exp_batcher_t *b, uint64_t exported, ring_drop_reason_t reason)
{
    uint32_t n = b->batch_n;
    exp__release(b, n, b->batch_bad, exported, reason);
    b->busy = false;
    b->batch_n = 0;
    b->st.batches++;
    b->st.batch_sum += n;
    unsigned k = 0;
    while (k < EXP_BATCH_BUCKETS && n > exp_batch_bounds[k])
        k++;
    b->st.batch_hist[k]++;
    /* more work may be ready: continue from a timer, not from inside the
     * transport's callback */
    loop_timer_start(b->loop, &b->kick, 0, 0, exp__on_kick, b);
}

static void exp__on_kick(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop, (void)t;
    exp__pump(arg);
}

static void exp__on_done(void *arg, const exp_result_t *res)
{
    exp_batcher_t *b = arg;
    uint64_t now = b->now();
    double secs = (double)(now - b->attempt_start) / 1e9;
    unsigned k = 0;
    while (k < EXP_LATENCY_BUCKETS && secs > exp_latency_bounds[k])
        k++;
    b->st.lat_hist[k]++;
    b->st.lat_sum += secs;
    b->st.lat_count++;
    if (res->status != GRPC_STATUS_OK)
        b->st.export_failures++;
    retry_verdict_t v = retry_decide(&b->rp, res, b->attempt, now, b->batch_deadline, exp__rand(b));
    uint64_t good = b->batch_n - b->batch_bad;
    switch (v.action) {
    case RETRY_DONE: {
        uint64_t rej = res->rejected < good ? res->rejected : good;
        if (res->rejected || (res->partial_msg && *res->partial_msg))
            fprintf(stderr, "shop-exporter: partial success: %llu of %llu spans rejected: %s\n",
                    (unsigned long long)res->rejected, (unsigned long long)good,
                    res->partial_msg ? res->partial_msg : "");
        b->st.partial_rejected += rej;
        exp__finish(b, good - rej, RING_DROP_REJECTED);
        return;
    }
    case RETRY_AGAIN:
        b->attempt++;
        b->st.retries++;
        loop_timer_start(b->loop, &b->retry, v.delay_ns, 0, exp__on_retry, b);
        return;
    case RETRY_GIVE_UP:
        fprintf(stderr, "shop-exporter: giving up a batch of %llu spans (%s) after %u attempt(s): %s %s\n",
                (unsigned long long)good, ring_drop_reason_name(v.reason), b->attempt + 1,
                retry_status_name(res->status), res->message ? res->message : "");
        exp__finish(b, 0, v.reason);
        return;
    }
    fprintf(stderr, "shop-exporter: unknown retry action %d\n", (int)v.action);
    abort();
}

static void exp__on_retry(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop, (void)t;
    exp__attempt(arg);
}

static void exp__attempt(exp_batcher_t *b)
{
    uint64_t now = b->now();
    b->attempt_start = now;
    uint64_t left = b->batch_deadline > now ? b->batch_deadline - now : 1;
    uint64_t to = b->s.timeout_ns < left ? b->s.timeout_ns : left;
    b->st.exports++;
    int rc = b->send(b->tctx, b->msg, b->msg_len, to, exp__on_done, b);
    if (rc < 0) {
        /* could not even start: the same as an unreachable receiver */
        exp_result_t r = {.status = GRPC_STATUS_UNAVAILABLE, .message = strerror(-rc),
                          .retry_delay_ns = -1, .partial_msg = ""};
        exp__on_done(b, &r);
    }
}

static void exp__finish_shutdown(exp_batcher_t *b)
{
    if (b->qlen)
        exp__release(b, b->qlen, 0, 0, RING_DROP_SHUTDOWN);
    loop_timer_stop(b->loop, &b->poll);
    loop_timer_stop(b->loop, &b->shut);
    if (!b->shut_called) {
        b->shut_called = true;
        if (b->shut_done)
            b->shut_done(b->shut_arg);
    }
}

static void exp__pump_once(exp_batcher_t *b);

/* Runs the processor, then stops the poll timer if polling is useless (a
 * batch in flight: nothing is peeked meanwhile, and the finished export
 * peeks at once) or starts it again.  A poll every 2 ms while a slow
 * receiver (Jaeger: ~1-3 ms per Export) answers costs a wake-up per tick,
 * each ~7-15 us of CPU on a VM. */
static void exp__pump(exp_batcher_t *b)
{
    exp__pump_once(b);
    if (b->shut_called || b->stopping)
        return;
    if (b->busy) {
        loop_timer_stop(b->loop, &b->poll);
        b->poll_ns = EXP_POLL_NS;
        return;
    }
    /* Not busy: the queue holds what the ring had; empty = a quiet ring. */
    uint64_t want = EXP_POLL_NS;
    if (b->qlen == 0)
        want = b->poll_ns * 2 < EXP_POLL_IDLE_MAX_NS ? b->poll_ns * 2 : EXP_POLL_IDLE_MAX_NS;
    if (want != b->poll_ns || !loop_timer_active(&b->poll)) {
        b->poll_ns = want;
        (void)loop_timer_start(b->loop, &b->poll, want, want, exp__on_poll, b);
    }
}

static void exp__pump_once(exp_batcher_t *b)
{
    if (b->shut_called)
        return;
    uint64_t now = b->now();
    /* Just in time (see the top): nothing while a batch is in flight, then
     * up to one batch, encoded below while its records are in the cache. */
    if (!b->stopping) {
        while (!b->busy && b->qlen < b->s.batch_max) {
            int n = ring_consumer_peek(b->ring, b->q + b->qlen, (int)(b->s.batch_max - b->qlen));
            if (n <= 0)
                break;
            b->qlen += (uint32_t)n;
        }
        if (now - b->last_reap >= 1000000000ull) {
            b->last_reap = now;
            ring_consumer_reap(b->ring);
        }
    } else if (!b->busy && (b->qlen == 0 || now >= b->shut_deadline)) {
        exp__finish_shutdown(b);
        return;
    }
    b->st.queue_len = b->qlen;
    if (b->busy || b->qlen == 0)
        return;
    if (b->qlen < b->s.batch_max && !b->stopping && now - b->last_export < b->s.delay_ns)
        return;
    uint32_t n = b->qlen < b->s.batch_max ? b->qlen : b->s.batch_max;
    uint64_t bad = 0;
    long len = otlp_encode(b->enc, b->q, n, exp__meta, b->ring, &b->msg, &bad);
    b->last_export = now;
    b->busy = true;
    b->batch_n = n;
    b->batch_bad = bad;
    if (len < 0) {
        fprintf(stderr, "shop-exporter: encoding a batch of %u spans: out of memory\n", n);
        exp__finish(b, 0, RING_DROP_EXPIRED);
        return;
    }
    if (bad == n) { /* nothing to send */
        exp__finish(b, 0, RING_DROP_REJECTED);
        return;
    }
    b->msg_len = (size_t)len;
    b->attempt = 0;
    b->batch_deadline = now + b->s.export_timeout_ns;
    if (b->stopping && b->shut_deadline < b->batch_deadline)
        b->batch_deadline = b->shut_deadline;
    ring_consumer_inflight(b->ring, n - bad);
    exp__attempt(b);
}

static void exp__on_poll(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop, (void)t;
    exp_batcher_t *b = arg;
    b->st.polls++;
    exp__pump(b);
}

static void exp__on_shut(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop, (void)t;
    exp_batcher_t *b = arg;
    /* In flight: its attempt timeout ends by the deadline too, and its
     * callback finishes the shutdown.  A retry wait is cut short. */
    if (b->busy && loop_timer_active(&b->retry)) {
        loop_timer_stop(b->loop, &b->retry);
        exp__finish(b, 0, RING_DROP_SHUTDOWN);
    }
    if (!b->busy)
        exp__finish_shutdown(b);
}

static uint64_t exp__now_default(void) { return loop_now_ns(); }

int exp_batcher_new(loop_t *loop, ring_t *ring, const exp_settings_t *s, const retry_policy_t *rp,
                    exp_send_fn send, void *tctx, exp_batcher_t **out)
{
    if (!s->batch_max || s->batch_max > s->queue_max || s->queue_max > RING_CONSUMER_INFLIGHT_MAX)
        return -EINVAL;
    exp_batcher_t *b = calloc(1, sizeof *b);
    if (!b)
        return -ENOMEM;
    b->loop = loop;
    b->ring = ring;
    b->s = *s;
    if (rp)
        b->rp = *rp;
    else
        retry_policy_default(&b->rp);
    b->send = send;
    b->tctx = tctx;
    b->now = exp__now_default;
    b->rng = (loop_now_ns() ^ ((uint64_t)getpid() << 32)) | 1;
    b->q = calloc(s->queue_max, sizeof *b->q);
    b->enc = otlp_encoder_new();
    if (!b->q || !b->enc)
        goto err;
    loop_timer_init(&b->poll);
    loop_timer_init(&b->retry);
    loop_timer_init(&b->kick);
    loop_timer_init(&b->shut);
    b->last_export = b->now();
    b->last_reap = b->last_export;
    b->poll_ns = EXP_POLL_NS;
    int rc = loop_timer_start(loop, &b->poll, 0, EXP_POLL_NS, exp__on_poll, b);
    if (rc < 0)
        goto err;
    *out = b;
    return 0;
err:
    otlp_encoder_free(b->enc);
    free(b->q);
    free(b);
    return -ENOMEM;
}

void exp_batcher_free(exp_batcher_t *b)
{
    if (!b)
        return;
    loop_timer_stop(b->loop, &b->poll);
    loop_timer_stop(b->loop, &b->retry);
    loop_timer_stop(b->loop, &b->kick);
    loop_timer_stop(b->loop, &b->shut);
    otlp_encoder_free(b->enc);
    free(b->q);
    free(b);
}

void exp_batcher_shutdown(exp_batcher_t *b, void (*done)(void *arg), void *arg)
{
    if (b->stopping)
        return;
    /* One last drain before the queue closes: what the ring holds now (up to
     * the queue's size) goes out with the final batches instead of waiting
     * in the ring for the next exporter. */
    while (b->qlen < b->s.queue_max) {
        int n = ring_consumer_peek(b->ring, b->q + b->qlen, (int)(b->s.queue_max - b->qlen));
        if (n <= 0)
            break;
        b->qlen += (uint32_t)n;
    }
    b->stopping = true;
    b->shut_done = done;
    b->shut_arg = arg;
    b->shut_deadline = b->now() + b->s.export_timeout_ns;
    loop_timer_start(b->loop, &b->shut, b->s.export_timeout_ns, 0, exp__on_shut, b);
    loop_timer_start(b->loop, &b->kick, 0, 0, exp__on_kick, b);
}

void exp_batcher_stats(const exp_batcher_t *b, exp_stats_t *out)
{
    *out = b->st;
    out->queue_len = b->qlen;
}

void exp_batcher_set_clock(exp_batcher_t *b, uint64_t (*now)(void))
{
    b->now = now;
    b->last_export = now();
    b->last_reap = b->last_export;
}
