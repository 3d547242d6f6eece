/*
 * services/order/relay.c - the outbox relay of order-svc: publishes the
 * outbox rows (written with each order's final UPDATE) to Kafka and marks
 * them sent once the broker acknowledged them.
 *
 * One poll at a time, every relay_poll_ms (and at once after a poll that
 * found work):
 *   SELECT ... FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT batch
 * For each row, in id order: if an earlier row of the same aggregate (order
 * id) is in flight, or was held back in this batch, the row is held back
 * too; otherwise kafka_produce (key = order id, value = payload).  So never
 * two messages of one order are in flight, and a row goes out only after
 * every earlier row of its order was acknowledged: core/kafka does not
 * retry a message whose delivery timed out, so without this hold a later
 * event could overtake a failed earlier one.
 *
 * Trace: the row's traceparent (the CreateOrder SERVER span's context) is
 * both the parent of the PRODUCER span and its link, so the span belongs
 * to the order's trace, as DESIGN.md's expected trace shows it, and the
 * message's traceparent header (the PRODUCER span's context) carries the
 * order's trace id: a consumer continues the order's trace.  A row without
 * a traceparent gets a trace of its own.
 *
 * Delivery report: success -> UPDATE outbox SET sent_at = now(); failure ->
 * attempts + 1, last_error; the row stays unsent and a later poll sends it
 * again (first in its order, by the rule above).  While Kafka is down,
 * messages wait in librdkafka's queue (delivery_timeout) and rows wait in
 * the table; none is lost.
 *
 * A row stays "in flight" until its UPDATE finished *and* a poll started
 * after that UPDATE: a poll whose SELECT ran before the UPDATE committed
 * could otherwise see the row unsent and send it twice.
 *
 * Delivery is at least once: a crash between the acknowledgement and the
 * UPDATE resends the row; consumers deduplicate on payload.event_id.  One
 * relay per database is assumed (see docs/ARCHITECTURE.md): two order-svc
 * instances would each send the unsent rows (duplicates, never losses).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "order.h"

#define MS 1000000ull

typedef struct st_relay_row_t {
    struct st_relay_row_t *next;
    order_relay_t *relay;
    int64_t id;
    char id_s[24];
    char agg[72];
    char traceparent[56]; /* the PRODUCER span's context (parent of the UPDATE); "" if none */
    bool settled;        /* delivery reported and its UPDATE finished */
    uint64_t settled_at; /* relay->polls when it settled */
} relay_row_t;

struct st_order_relay_t {
    order_svc_t *svc;
    loop_t *loop;
    pg_pool_t *pool;
    kafka_t *kafka;
    uint32_t poll_ms, batch;
    loop_timer_t timer;
    bool running, polling;
    uint64_t polls;        /* polls started */
    relay_row_t *rows;     /* in flight or settled-but-not-yet-forgotten */
    unsigned unsettled;    /* rows produced whose UPDATE has not finished */
    order_counters_t c;
};

static void relay_poll(order_relay_t *r);

int order_relay_create(order_svc_t *svc, loop_t *loop, pg_pool_t *pool, kafka_t *kafka,
                       const order_options_t *o, order_relay_t **out)
{
    order_relay_t *r = calloc(1, sizeof *r);
    if (r == NULL)
        return -ENOMEM;
    r->svc = svc;
    r->loop = loop;
    r->pool = pool;
    r->kafka = kafka;
    r->poll_ms = o->relay_poll_ms ? o->relay_poll_ms : 200;
    r->batch = o->relay_batch ? o->relay_batch : 100;
    loop_timer_init(&r->timer);
    *out = r;
    return 0;
}

void order_relay_free(order_relay_t *r)
{
    if (r == NULL)
        return;
    loop_timer_stop(r->loop, &r->timer);
    /* Rows still referenced by delivery callbacks are leaked on purpose if
     * kafka is destroyed later: free only settled ones. */
    relay_row_t **pp = &r->rows;
    while (*pp) {
        relay_row_t *x = *pp;
        if (x->settled) {
            *pp = x->next;
            free(x);
        } else {
            x->relay = NULL;
            pp = &x->next;
        }
    }
    free(r);
}

unsigned order_relay_busy(const order_relay_t *r)
{
    return r->unsettled + (r->polling ? 1u : 0u);
}

void order_relay_counters(const order_relay_t *r, order_counters_t *out)
{
    out->relay_produced = r->c.relay_produced;
    out->relay_sent = r->c.relay_sent;
    out->relay_failed = r->c.relay_failed;
    out->relay_polls = r->c.relay_polls;
}

static void relay_tick(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    relay_poll(arg);
}

int order_relay_start(order_relay_t *r)
{
    r->running = true;
    return loop_timer_start(r->loop, &r->timer, 0, (uint64_t)r->poll_ms * MS, relay_tick, r);
}

void order_relay_stop(order_relay_t *r)
{
    r->running = false;
    loop_timer_stop(r->loop, &r->timer);
}

static bool relay_holds(const order_relay_t *r, const char *agg)
{
    for (const relay_row_t *x = r->rows; x; x = x->next)
        if (strcmp(x->agg, agg) == 0)
            return true;
    return false;
}

/* --- settle: the UPDATE after a delivery report --- */

static void relay_on_update(pg_pool_t *p, int st, const PGresult *res, const char *msg, void *arg)
{
    (void)p;
    (void)res;
    relay_row_t *x = arg;
    if (st != 0)
        fprintf(stderr, "order-svc: relay: outbox row %s: %s (it may be sent again)\n", x->id_s, msg);
    order_relay_t *r = x->relay;
    if (r == NULL) { /* the relay is gone (shutdown) */
        free(x);
        return;
    }
    x->settled = true;
    x->settled_at = r->polls;
    r->unsettled--;
}

static void relay_on_delivery(kafka_t *k, const kafka_report_t *rep, void *arg)
{
    (void)k;
    relay_row_t *x = arg;
    order_relay_t *r = x->relay;
    if (r == NULL) {
        free(x);
        return;
    }
    int ret;
    /* The UPDATE belongs to the order's trace, under the PRODUCER span
     * whose delivery it records (no trace of its own per event). */
    trace_context_t parent;
    bool has_parent = x->traceparent[0] != '\0' &&
                      trace_w3c_traceparent_parse(x->traceparent, strlen(x->traceparent), &parent) == 0;
    pg_query_opts_t q = {.operation = "UPDATE", .collection = "outbox", .parent = has_parent ? &parent : NULL};
    if (rep->status == 0) {
        r->c.relay_sent++;
        const char *v[] = {x->id_s};
        ret = pg_query(r->pool,
                       "UPDATE outbox SET sent_at = now(), attempts = attempts + 1, last_error = NULL "
                       "WHERE id = $1",
                       1, v, NULL, NULL, &q, relay_on_update, x);
    } else {
        r->c.relay_failed++;
        char err[200];
        snprintf(err, sizeof err, "%s: %s", rep->error_name ? rep->error_name : "error",
                 rep->error_str ? rep->error_str : "");
        const char *v[] = {x->id_s, err};
        ret = pg_query(r->pool,
                       "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1", 2,
                       v, NULL, NULL, &q, relay_on_update, x);
    }
    if (ret != 0)
        relay_on_update(r->pool, ret, NULL, strerror(-ret), x);
}

/* --- poll --- */

static void relay_on_rows(pg_pool_t *p, int st, const PGresult *res, const char *msg, void *arg)
{
    (void)p;
    order_relay_t *r = arg;
    r->polling = false;
    if (st != 0) {
        fprintf(stderr, "order-svc: relay: poll: %s\n", msg);
        return;
    }
    /* Forget rows settled before this poll started: its SELECT saw their
     * UPDATE. */
    uint64_t this_poll = r->polls;
    for (relay_row_t **pp = &r->rows; *pp;) {
        relay_row_t *x = *pp;
        if (x->settled && x->settled_at < this_poll) {
            *pp = x->next;
            free(x);
        } else {
            pp = &x->next;
        }
    }
    int n = PQntuples(res);
    /* Aggregates held back in this batch (an earlier row of theirs is not
     * out yet).  At most `batch` entries. */
    const char **held = calloc((size_t)n + 1, sizeof *held);
    int nheld = 0, produced = 0;
    bool full = false;
    for (int i = 0; i < n && held; i++) {
        const char *agg = PQgetvalue(res, i, 1);
        bool hold = full || r->unsettled >= r->batch || relay_holds(r, agg);
        for (int j = 0; j < nheld && !hold; j++)
            if (strcmp(held[j], agg) == 0)
                hold = true;
        if (hold) {
            held[nheld++] = agg;
            continue;
        }
        relay_row_t *x = calloc(1, sizeof *x);
        if (x == NULL) {
            held[nheld++] = agg;
            continue;
        }
        x->relay = r;
        snprintf(x->id_s, sizeof x->id_s, "%s", PQgetvalue(res, i, 0));
        x->id = strtoll(x->id_s, NULL, 10);
        snprintf(x->agg, sizeof x->agg, "%s", agg);
        const char *topic = PQgetvalue(res, i, 2);
        const char *key = PQgetvalue(res, i, 3);
        const char *payload = PQgetvalue(res, i, 4);
        const char *tp = PQgetvalue(res, i, 5);
        trace_context_t link;
        bool has_link = tp[0] != '\0' && trace_w3c_traceparent_parse(tp, strlen(tp), &link) == 0;
        kafka_message_t m = {.topic = topic,
                             .key = key,
                             .key_len = strlen(key),
                             .value = payload,
                             .value_len = (size_t)PQgetlength(res, i, 4),
                             .parent = has_link ? &link : NULL,
                             .link = has_link ? &link : NULL};
        int ret = kafka_produce(r->kafka, &m, relay_on_delivery, x, x->traceparent);
        if (ret != 0) {
            /* Refused at once (queue full, ...): the row stays unsent. */
            fprintf(stderr, "order-svc: relay: produce outbox row %s: %s\n", x->id_s, strerror(-ret));
            free(x);
            held[nheld++] = agg;
            full = ret == -ENOBUFS;
            continue;
        }
        x->next = r->rows;
        r->rows = x;
        r->unsettled++;
        r->c.relay_produced++;
        produced++;
    }
    free(held);
    /* A full batch of new work: poll again at once rather than waiting. */
    if (r->running && produced > 0 && n == (int)r->batch)
        loop_timer_start(r->loop, &r->timer, 0, (uint64_t)r->poll_ms * MS, relay_tick, r);
}

static void relay_poll(order_relay_t *r)
{
    if (!r->running || r->polling || r->unsettled >= r->batch)
        return;
    r->polling = true;
    r->polls++;
    r->c.relay_polls++;
    char lim[16];
    snprintf(lim, sizeof lim, "%u", r->batch);
    const char *v[] = {lim};
    /* Not traced: a poll every relay_poll_ms would put a trace of its own
     * into the trace store each time (18,000 an hour at 200 ms), burying
     * the orders' traces in searches.  What a poll finds is traced: the
     * PRODUCER span and its UPDATE, in the order's trace. */
    pg_query_opts_t q = {.operation = "SELECT", .collection = "outbox", .untraced = true};
    int ret = pg_query(r->pool,
                       "SELECT id, aggregate_id, topic, key, payload::text, coalesce(traceparent, '') "
                       "FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT $1",
                       1, v, NULL, NULL, &q, relay_on_rows, r);
    if (ret != 0)
        r->polling = false;
}
