/*
 * exporter/batch.c - the Batch Span Processor over the ring consumer.
 *
 * The queue is the ring itself: records are peeked (not copied) into q[],
 * at most max_queue_size of them peeked and not yet released (what
 * OTEL_BSP_MAX_QUEUE_SIZE bounds).  A batch is the next <= max_export_batch_size
 * of them; it is exported when the queue holds a full batch or when
 * schedule_delay passed since the previous export started.
 *
 * Up to max_concurrent_exports batches are in flight at once, each in a
 * slot of its own (its encoder, attempt count, deadline, retry timer); the
 * slots are a FIFO over q[]: the oldest covers q[0..n), the next the records
 * after it.  ring_consumer_release frees records in peek order, so a batch
 * that is done (acknowledged or given up) waits until every older one is
 * done too, and then they are released together, oldest first.  The read
 * position so moves only past batches that are acknowledged or given up
 * (promise 3): exported, or dropped REJECTED / EXPIRED / CORRUPT / SHUTDOWN.
 * With one slot this is OTel's Batch Span Processor, one Export at a time.
 * Several pay for the fixed cost of an Export (a sleep until the answer and
 * a wake-up of the receiver, ~25-35 us of CPU on the benchmark VM) less
 * often and lift the cap of one batch per round trip (perf/RESULTS.md).
 *
 * Peeking is just in time: only when a slot is free, and only up to one
 * batch (max_export_batch_size) beyond those in flight, so the records are
 * encoded right after the peek brought them into the cache.  Peeked
 * earlier, behind the batches in flight, they were encoded one or more
 * Exports later, after the exporter had slept through the receiver's answer,
 * and the encoder read them from memory a second time (benchmark VM, batch
 * 512: ~20 ns per span more in otlp_encode beside Jaeger).  Peeking ahead
 * buys nothing else: the ring holds the spans either way, and frees their
 * room only on release.  Only the shutdown drain fills the queue to
 * max_queue_size.
 *
 * Producers make no system call, so nothing wakes us when spans arrive: a
 * repeating poll timer peeks (every EXP_POLL_NS, backing off to
 * EXP_POLL_IDLE_MAX_NS while the ring stays empty), and a finished export
 * peeks at once.
 * The poll timer is stopped while every slot is in flight (or waits for a
 * retry): nothing is peeked or sent before one ends, and its end peeks at
 * once, so a poll then would only be a wake-up (each one costs the
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

typedef struct exp_slot {
    exp_batcher_t *b;
    otlp_encoder_t *enc;
    bool done;
    uint32_t n;
    uint64_t bad;
    const uint8_t *msg;
    size_t msg_len;
    unsigned attempt;
    uint64_t deadline, attempt_start;
    uint64_t exported;
    ring_drop_reason_t reason;
    loop_timer_t retry;
} exp_slot_t;

struct st_exp_batcher_t {
    loop_t *loop;
    ring_t *ring;
    exp_settings_t s;
    retry_policy_t rp;
    exp_send_fn send;
    void *tctx;
    uint64_t (*now)(void);
    uint64_t rng;
    ring_record_t *q;       /* q[0..qlen): peeked, not released; qlen <= queue_max */
    uint32_t qlen;
    exp_slot_t *slots;      /* k of them, a FIFO from s_head: Exports in flight */
    unsigned k, s_head, s_count;
    uint32_t inflight_n;    /* q[0..inflight_n): the slots' records, oldest first */
    uint64_t last_export;   /* start of the previous batch (schedule delay) */
    uint64_t last_reap;
    uint64_t poll_ns;       /* current poll interval (EXP_POLL_NS .. EXP_POLL_IDLE_MAX_NS) */
    loop_timer_t poll, kick, shut;
    bool stopping;
    uint64_t shut_deadline;
    void (*shut_done)(void *);
    void *shut_arg;
    bool shut_called;
    exp_stats_t st;
};

static void exp__pump(exp_batcher_t *b);
static void exp__attempt(exp_slot_t *sl);
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

static void exp__finish(exp_slot_t *sl, uint64_t exported, ring_drop_reason_t reason)
{
    exp_batcher_t *b = sl->b;
    sl->done = true;
    sl->exported = exported;
    sl->reason = reason;
    /* release in peek order: the oldest slots that are done */
    while (b->s_count && b->slots[b->s_head].done) {
        exp_slot_t *h = &b->slots[b->s_head];
        uint32_t n = h->n;
        exp__release(b, n, h->bad, h->exported, h->reason);
        b->inflight_n -= n;
        h->done = false;
        h->n = 0;
        b->s_head = (b->s_head + 1) % b->k;
        b->s_count--;
        b->st.batches++;
        b->st.batch_sum += n;
        unsigned k = 0;
        while (k < EXP_BATCH_BUCKETS && n > exp_batch_bounds[k])
            k++;
        b->st.batch_hist[k]++;
    }
    loop_timer_start(b->loop, &b->kick, 0, 0, exp__on_kick, b);
}

static void exp__on_kick(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop, (void)t;
    exp__pump(arg);
}

static void exp__on_done(void *arg, const exp_result_t *res)
{
    exp_slot_t *sl = arg;
    exp_batcher_t *b = sl->b;
    uint64_t now = b->now();
    double secs = (double)(now - sl->attempt_start) / 1e9;
    unsigned k = 0;
    while (k < EXP_LATENCY_BUCKETS && secs > exp_latency_bounds[k])
        k++;
    b->st.lat_hist[k]++;
    b->st.lat_sum += secs;
    b->st.lat_count++;
    if (res->status != GRPC_STATUS_OK)
        b->st.export_failures++;
    retry_verdict_t v = retry_decide(&b->rp, res, sl->attempt, now, sl->deadline, exp__rand(b));
    uint64_t good = sl->n - sl->bad;
    switch (v.action) {
    case RETRY_DONE: {
        uint64_t rej = res->rejected < good ? res->rejected : good;
        if (res->rejected || (res->partial_msg && *res->partial_msg))
            fprintf(stderr, "shop-exporter: partial success: %llu of %llu spans rejected: %s\n",
                    (unsigned long long)res->rejected, (unsigned long long)good,
                    res->partial_msg ? res->partial_msg : "");
        b->st.partial_rejected += rej;
        exp__finish(sl, good - rej, RING_DROP_REJECTED);
        return;
    }
    case RETRY_AGAIN:
        sl->attempt++;
        b->st.retries++;
        loop_timer_start(b->loop, &sl->retry, v.delay_ns, 0, exp__on_retry, sl);
        return;
    case RETRY_GIVE_UP:
        fprintf(stderr, "shop-exporter: giving up a batch of %llu spans (%s) after %u attempt(s): %s %s\n",
                (unsigned long long)good, ring_drop_reason_name(v.reason), sl->attempt + 1,
                retry_status_name(res->status), res->message ? res->message : "");
        exp__finish(sl, 0, v.reason);
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

static void exp__attempt(exp_slot_t *sl)
{
    exp_batcher_t *b = sl->b;
    uint64_t now = b->now();
    sl->attempt_start = now;
    uint64_t left = sl->deadline > now ? sl->deadline - now : 1;
    uint64_t to = b->s.timeout_ns < left ? b->s.timeout_ns : left;
    b->st.exports++;
    int rc = b->send(b->tctx, sl->msg, sl->msg_len, to, exp__on_done, sl);
    if (rc < 0) {
        /* could not even start: the same as an unreachable receiver */
        exp_result_t r = {.status = GRPC_STATUS_UNAVAILABLE, .message = strerror(-rc),
                          .retry_delay_ns = -1, .partial_msg = ""};
        exp__on_done(sl, &r);
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

/* Runs the processor, then stops the poll timer if polling is useless
 * (every slot in flight, or the queue full: nothing can be peeked
 * meanwhile, and a finished export peeks at once) or starts it again.  A
 * poll every 2 ms while a slow receiver (Jaeger: ~1-3 ms per Export)
 * answers costs a wake-up per tick, each ~7-15 us of CPU on a VM. */
static void exp__pump(exp_batcher_t *b)
{
    exp__pump_once(b);
    if (b->shut_called || b->stopping)
        return;
    if (b->s_count == b->k || b->qlen >= b->s.queue_max) {
        loop_timer_stop(b->loop, &b->poll);
        b->poll_ns = EXP_POLL_NS;
        return;
    }
    /* Not busy: the queue holds what the ring had; empty = a quiet ring. */
    uint64_t want = EXP_POLL_NS;
    if (b->qlen == b->inflight_n)
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
    if (b->stopping && b->s_count == 0 && (b->qlen == 0 || now >= b->shut_deadline)) {
        exp__finish_shutdown(b);
        return;
    }
    for (;;) {
        if (b->s_count == b->k || (b->stopping && now >= b->shut_deadline))
            break;
        if (!b->stopping) {
            while (b->qlen - b->inflight_n < b->s.batch_max && b->qlen < b->s.queue_max) {
                uint32_t room = b->inflight_n + b->s.batch_max - b->qlen;
                if (room > b->s.queue_max - b->qlen)
                    room = b->s.queue_max - b->qlen;
                int n = ring_consumer_peek(b->ring, b->q + b->qlen, (int)room);
                if (n <= 0)
                    break;
                b->qlen += (uint32_t)n;
            }
            if (now - b->last_reap >= 1000000000ull) {
                b->last_reap = now;
                ring_consumer_reap(b->ring);
            }
        }
        b->st.queue_len = b->qlen;
        uint32_t avail = b->qlen - b->inflight_n;
        if (avail == 0)
            break;
        if (avail < b->s.batch_max && !b->stopping && now - b->last_export < b->s.delay_ns)
            break;
        uint32_t n = avail < b->s.batch_max ? avail : b->s.batch_max;
        exp_slot_t *sl = &b->slots[(b->s_head + b->s_count) % b->k];
        b->s_count++;
        uint64_t bad = 0;
        long len = otlp_encode(sl->enc, b->q + b->inflight_n, n, exp__meta, b->ring, &sl->msg, &bad);
        b->inflight_n += n;
        b->last_export = now;
        sl->n = n;
        sl->bad = bad;
        sl->done = false;
        if (len < 0) {
            fprintf(stderr, "shop-exporter: encoding a batch of %u spans: out of memory\n", n);
            exp__finish(sl, 0, RING_DROP_EXPIRED);
            continue;
        }
        if (bad == n) {
            exp__finish(sl, 0, RING_DROP_REJECTED);
            continue;
        }
        sl->msg_len = (size_t)len;
        sl->attempt = 0;
        sl->deadline = now + b->s.export_timeout_ns;
        if (b->stopping && b->shut_deadline < sl->deadline)
            sl->deadline = b->shut_deadline;
        ring_consumer_inflight(b->ring, n - bad);
        exp__attempt(sl);
    }
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
    for (unsigned i = 0; i < b->k; i++) {
        exp_slot_t *sl = &b->slots[i];
        if (sl->n && !sl->done && loop_timer_active(&sl->retry)) {
            loop_timer_stop(b->loop, &sl->retry);
            exp__finish(sl, 0, RING_DROP_SHUTDOWN);
        }
    }
    if (b->s_count == 0)
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
    b->k = s->concurrent_max ? s->concurrent_max : 1;
    b->slots = calloc(b->k, sizeof *b->slots);
    if (!b->slots)
        goto err;
    for (unsigned i = 0; i < b->k; i++) {
        b->slots[i].b = b;
        b->slots[i].enc = otlp_encoder_new();
        if (!b->slots[i].enc)
            goto err;
        loop_timer_init(&b->slots[i].retry);
    }
    if (!b->q)
        goto err;
    loop_timer_init(&b->poll);
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
    for (unsigned i = 0; b->slots && i < b->k; i++)
        otlp_encoder_free(b->slots[i].enc);
    free(b->slots);
    free(b->q);
    free(b);
    return -ENOMEM;
}

void exp_batcher_free(exp_batcher_t *b)
{
    if (!b)
        return;
    loop_timer_stop(b->loop, &b->poll);
    loop_timer_stop(b->loop, &b->kick);
    loop_timer_stop(b->loop, &b->shut);
    for (unsigned i = 0; i < b->k; i++) {
        loop_timer_stop(b->loop, &b->slots[i].retry);
        otlp_encoder_free(b->slots[i].enc);
    }
    free(b->slots);
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
