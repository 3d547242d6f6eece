/*
 * core/kafka.c - idempotent librdkafka producer on the io_uring loop, with a
 * PRODUCER span per message (contract in kafka.h).
 *
 * How the two event systems meet: librdkafka runs its own broker threads
 * and puts delivery reports and errors on the client's main queue.
 * rd_kafka_queue_io_event_enable() makes the queue write one byte to our
 * pipe when something is enqueued; the loop watches the pipe's read end
 * (loop_watch_*), drains it and serves the queue with rd_kafka_poll(rk, 0),
 * which runs the delivery-report callback here, on the loop thread.  A slow
 * timer serves the queue too: it is the safety net for a missed wake-up
 * (librdkafka writes to the pipe only on some enqueues; if a write ever
 * found the pipe full it would be dropped) and costs one poll per 250 ms.
 *
 * Spans: each message owns a kafka_msg_t (span storage included, ~4 KiB);
 * they come from a free list kept by the producer, so the steady state does
 * no malloc per message (STYLE.md), and the list is bounded so a burst does
 * not pin memory for ever.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "config.h"
#include "kafka.h"

static const trace_scope_t kafka__scope = TRACE_SCOPE("shop.core.kafka", "0.1.0");

/* Free-list bound: messages kept for reuse beyond this are freed. */
#define KAFKA__FREE_MAX 1024u
/* Safety-net poll period (see the file comment). */
#define KAFKA__POLL_NS (250u * 1000000u)
/* kafka_destroy: how long to wait for librdkafka to hand back purged
 * messages before giving up on their reports. */
#define KAFKA__PURGE_WAIT_MS 5000

typedef struct st_kafka_msg_t {
    struct st_kafka_msg_t *next; /* free list link */
    kafka_delivery_cb cb;
    void *arg;
    trace_span_t span;
} kafka_msg_t;

struct st_kafka_t {
    loop_t *loop;
    rd_kafka_t *rk;
    rd_kafka_queue_t *mainq; /* our reference to the main queue (io event) */
    loop_watch_t *watch;     /* on pipe_r */
    loop_timer_t timer;      /* safety-net poll */
    int pipe_r, pipe_w;
    unsigned pending;        /* accepted and not yet reported */
    kafka_msg_t *free_list;
    unsigned free_n;
    kafka_error_cb on_error;
    void *error_arg;
    char *bootstrap, *client_id;
    int delivery_timeout_ms, linger_ms, reconnect_backoff_max_ms;
    kafka_counters_t cnt;
};

/* ------------------------------------------------------------- helpers */

static void kafka__fatal_oom(const char *what)
{
    fprintf(stderr, "kafka: out of memory (%s) at %s:%d\n", what, __FILE__, __LINE__);
    abort();
}

static kafka_msg_t *kafka__msg_get(kafka_t *k)
{
    kafka_msg_t *m = k->free_list;
    if (m) {
        k->free_list = m->next;
        k->free_n--;
        return m;
    }
    m = malloc(sizeof *m);
    if (!m)
        kafka__fatal_oom("message");
    return m;
}

static void kafka__msg_put(kafka_t *k, kafka_msg_t *m)
{
    if (k->free_n >= KAFKA__FREE_MAX) {
        free(m);
        return;
    }
    m->next = k->free_list;
    k->free_list = m;
    k->free_n++;
}

static int kafka__errno(rd_kafka_resp_err_t e)
{
    switch (e) {
    case RD_KAFKA_RESP_ERR_NO_ERROR: return 0;
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT: return -ETIMEDOUT;
    case RD_KAFKA_RESP_ERR__PURGE_QUEUE:
    case RD_KAFKA_RESP_ERR__PURGE_INFLIGHT: return -ECANCELED;
    case RD_KAFKA_RESP_ERR__QUEUE_FULL: return -ENOBUFS;
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE: return -EMSGSIZE;
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION: return -ENOENT;
    case RD_KAFKA_RESP_ERR__INVALID_ARG: return -EINVAL;
    default: return -EIO;
    }
}

/* Ends a message's span as an error (semconv: error.type = the error's
 * name; librdkafka's names are stable identifiers like _MSG_TIMED_OUT). */
static void kafka__span_error(trace_span_t *s, rd_kafka_resp_err_t e)
{
    const char *name = rd_kafka_err2name(e), *text = rd_kafka_err2str(e);
    trace_span_set_str(s, "error.type", name);
    trace_span_set_status(s, TRACE_STATUS_ERROR, text, strlen(text));
}

/* ---------------------------------------------- librdkafka callbacks
 * Both run inside rd_kafka_poll(), i.e. on the loop thread. */

static void kafka__on_dr(rd_kafka_t *rk, const rd_kafka_message_t *rm, void *opaque)
{
    (void)rk;
    kafka_t *k = opaque;
    kafka_msg_t *m = rm->_private;
    kafka_report_t r = {
        .status = kafka__errno(rm->err),
        .kafka_err = (int)rm->err,
        .partition = rm->partition,
        .offset = rm->err ? -1 : rm->offset,
        .key = rm->key,
        .key_len = rm->key_len,
    };
    if (rm->err) {
        r.error_name = rd_kafka_err2name(rm->err);
        r.error_str = rd_kafka_err2str(rm->err);
        kafka__span_error(&m->span, rm->err);
        k->cnt.failed++;
    } else {
        k->cnt.delivered++;
    }
    if (rm->partition >= 0)
        trace_span_set_int(&m->span, "messaging.destination.partition.id", rm->partition);
    if (!rm->err && rm->offset >= 0)
        trace_span_set_int(&m->span, "messaging.kafka.offset", rm->offset);
    trace_span_end(&m->span);
    k->pending--;
    kafka_delivery_cb cb = m->cb;
    void *arg = m->arg;
    kafka__msg_put(k, m);
    if (cb)
        cb(k, &r, arg);
}

static void kafka__on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    kafka_t *k = opaque;
    bool fatal = false;
    char fbuf[512];
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        /* The real cause of a fatal (idempotence) error is kept apart. */
        err = rd_kafka_fatal_error(rk, fbuf, sizeof fbuf);
        reason = fbuf;
        fatal = true;
    }
    if (k->on_error)
        k->on_error(k, err, fatal, reason, k->error_arg);
    else
        fprintf(stderr, "kafka: %s%s: %s\n", fatal ? "FATAL " : "",
                rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

/* ------------------------------------------------------ loop side */

static void kafka__serve(kafka_t *k)
{
    k->cnt.wakeups++;
    while (rd_kafka_poll(k->rk, 0) > 0) {
    }
}

static void kafka__on_pipe(loop_watch_t *w, unsigned events, void *arg)
{
    (void)w;
    (void)events;
    kafka_t *k = arg;
    char buf[256];
    /* Drain first: an enqueue racing with the serve below writes again. */
    while (read(k->pipe_r, buf, sizeof buf) > 0) {
    }
    kafka__serve(k);
}

static void kafka__on_timer(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    kafka__serve(arg);
}

/* ---------------------------------------------------------- public */

void kafka_options_default(kafka_options_t *o)
{
    memset(o, 0, sizeof *o);
    o->client_id = "shop-trace";
    o->delivery_timeout_ms = KAFKA_DELIVERY_TIMEOUT_MS_DEFAULT;
    o->linger_ms = KAFKA_LINGER_MS_DEFAULT;
    o->reconnect_backoff_max_ms = KAFKA_RECONNECT_BACKOFF_MAX_MS_DEFAULT;
}

void kafka_options_from_config(kafka_options_t *o, const config_t *c)
{
    kafka_options_default(o);
    o->bootstrap_servers = config_str(c, CONFIG_KAFKA_BOOTSTRAP_SERVERS);
    o->client_id = config_str(c, CONFIG_KAFKA_CLIENT_ID);
    o->delivery_timeout_ms = (int)config_int(c, CONFIG_KAFKA_DELIVERY_TIMEOUT);
    o->linger_ms = (int)config_int(c, CONFIG_KAFKA_LINGER);
    o->reconnect_backoff_max_ms = (int)config_int(c, CONFIG_KAFKA_RECONNECT_BACKOFF_MAX);
}

static int kafka__set(rd_kafka_conf_t *conf, const char *name, const char *val, char *err,
                      size_t errlen)
{
    char e[256];
    if (rd_kafka_conf_set(conf, name, val, e, sizeof e) != RD_KAFKA_CONF_OK) {
        snprintf(err, errlen, "kafka: %s = %s: %s", name, val, e);
        return -EINVAL;
    }
    return 0;
}

static int kafka__set_int(rd_kafka_conf_t *conf, const char *name, int v, char *err, size_t errlen)
{
    char buf[24];
    snprintf(buf, sizeof buf, "%d", v);
    return kafka__set(conf, name, buf, err, errlen);
}

int kafka_create(loop_t *loop, const kafka_options_t *o, kafka_t **out, char *err, size_t errlen)
{
    int rc;
    if (!o->bootstrap_servers || !*o->bootstrap_servers) {
        snprintf(err, errlen, "kafka: bootstrap_servers is empty");
        return -EINVAL;
    }
    if (o->delivery_timeout_ms <= 0 || o->linger_ms < 0 || o->reconnect_backoff_max_ms <= 0 ||
        o->linger_ms >= o->delivery_timeout_ms) {
        snprintf(err, errlen,
                 "kafka: delivery_timeout_ms %d, linger_ms %d, reconnect_backoff_max_ms %d: "
                 "need 0 <= linger < delivery timeout and back-off > 0",
                 o->delivery_timeout_ms, o->linger_ms, o->reconnect_backoff_max_ms);
        return -EINVAL;
    }
    kafka_t *k = calloc(1, sizeof *k);
    if (!k)
        return -ENOMEM;
    k->loop = loop;
    k->pipe_r = k->pipe_w = -1;
    k->on_error = o->on_error;
    k->error_arg = o->error_arg;
    k->delivery_timeout_ms = o->delivery_timeout_ms;
    k->linger_ms = o->linger_ms;
    k->reconnect_backoff_max_ms = o->reconnect_backoff_max_ms;
    loop_timer_init(&k->timer);
    k->bootstrap = strdup(o->bootstrap_servers);
    k->client_id = strdup(o->client_id ? o->client_id : "shop-trace");
    if (!k->bootstrap || !k->client_id) {
        rc = -ENOMEM;
        goto err_k;
    }

    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    /* Idempotence implies acks=all, max.in.flight <= 5 and retries; acks is
     * set anyway so the log and a reader see it.  request.timeout.ms may not
     * pass the delivery timeout or a short timeout could never fire. */
    int req_timeout = o->delivery_timeout_ms < 30000 ? o->delivery_timeout_ms : 30000;
    int backoff = o->reconnect_backoff_max_ms < 100 ? o->reconnect_backoff_max_ms : 100;
    if ((rc = kafka__set(conf, "bootstrap.servers", k->bootstrap, err, errlen)) ||
        (rc = kafka__set(conf, "client.id", k->client_id, err, errlen)) ||
        (rc = kafka__set(conf, "enable.idempotence", "true", err, errlen)) ||
        (rc = kafka__set(conf, "acks", "all", err, errlen)) ||
        (rc = kafka__set_int(conf, "message.timeout.ms", o->delivery_timeout_ms, err, errlen)) ||
        (rc = kafka__set_int(conf, "request.timeout.ms", req_timeout, err, errlen)) ||
        (rc = kafka__set_int(conf, "linger.ms", o->linger_ms, err, errlen)) ||
        (rc = kafka__set_int(conf, "reconnect.backoff.ms", backoff, err, errlen)) ||
        (rc = kafka__set_int(conf, "reconnect.backoff.max.ms", o->reconnect_backoff_max_ms, err,
                             errlen)) ||
        /* Partition from the key with the Java client's hash, so a key maps
         * to the same partition whichever client produced it. */
        (rc = kafka__set(conf, "partitioner", "murmur2_random", err, errlen)) ||
        /* A broker going away is reported once through the error callback;
         * librdkafka's per-connection close log would repeat it. */
        (rc = kafka__set(conf, "log.connection.close", "false", err, errlen)))
        goto err_conf;
    rd_kafka_conf_set_dr_msg_cb(conf, kafka__on_dr);
    rd_kafka_conf_set_error_cb(conf, kafka__on_error);
    rd_kafka_conf_set_opaque(conf, k);

    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
        rc = -errno;
        snprintf(err, errlen, "kafka: pipe2: %s", strerror(errno));
        goto err_conf;
    }
    k->pipe_r = fds[0];
    k->pipe_w = fds[1];

    char e[512];
    k->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, e, sizeof e);
    if (!k->rk) {
        snprintf(err, errlen, "kafka: rd_kafka_new: %s", e);
        rc = -EINVAL;
        goto err_conf;
    }
    conf = NULL; /* owned by rk now */
    k->mainq = rd_kafka_queue_get_main(k->rk);
    rd_kafka_queue_io_event_enable(k->mainq, k->pipe_w, "1", 1);
    rc = loop_watch_start(loop, k->pipe_r, kafka__on_pipe, k, &k->watch);
    if (rc) {
        snprintf(err, errlen, "kafka: loop_watch_start(pipe): %s", strerror(-rc));
        goto err_rk;
    }
    loop_watch_set(k->watch, LOOP_WATCH_READ);
    rc = loop_timer_start(loop, &k->timer, KAFKA__POLL_NS, KAFKA__POLL_NS, kafka__on_timer, k);
    if (rc) {
        snprintf(err, errlen, "kafka: loop_timer_start: %s", strerror(-rc));
        goto err_watch;
    }
    *out = k;
    return 0;

err_watch:
    loop_watch_close(k->watch);
err_rk:
    rd_kafka_queue_io_event_enable(k->mainq, -1, NULL, 0);
    rd_kafka_queue_destroy(k->mainq);
    rd_kafka_destroy(k->rk);
err_conf:
    if (conf)
        rd_kafka_conf_destroy(conf);
    if (k->pipe_r >= 0) {
        close(k->pipe_r);
        close(k->pipe_w);
    }
err_k:
    free(k->bootstrap);
    free(k->client_id);
    free(k);
    return rc;
}

void kafka_destroy(kafka_t *k)
{
    if (!k)
        return;
    /* Hand every undelivered message back: queued ones at once, in-flight
     * ones when their broker thread notices; then serve the reports. */
    rd_kafka_purge(k->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    for (int waited = 0; k->pending > 0 && waited < KAFKA__PURGE_WAIT_MS; waited += 10)
        rd_kafka_poll(k->rk, 10);
    if (k->pending > 0)
        fprintf(stderr, "kafka: destroy: %u message(s) never reported back\n", k->pending);
    loop_timer_stop(k->loop, &k->timer);
    loop_watch_close(k->watch);
    rd_kafka_queue_io_event_enable(k->mainq, -1, NULL, 0);
    rd_kafka_queue_destroy(k->mainq);
    rd_kafka_destroy(k->rk);
    close(k->pipe_r);
    close(k->pipe_w);
    while (k->free_list) {
        kafka_msg_t *m = k->free_list;
        k->free_list = m->next;
        free(m);
    }
    free(k->bootstrap);
    free(k->client_id);
    free(k);
}

/* trace_inject's carrier: the message's header list. */
static int kafka__hdr_set(void *carrier, const char *name, const char *value, size_t vlen)
{
    rd_kafka_resp_err_t e = rd_kafka_header_add(carrier, name, -1, value, (ssize_t)vlen);
    return e ? -EINVAL : 0;
}

int kafka_produce(kafka_t *k, const kafka_message_t *msg, kafka_delivery_cb cb, void *arg,
                  char *traceparent_out)
{
    if (!msg->topic || !*msg->topic || msg->n_headers > KAFKA_HEADERS_MAX ||
        (msg->n_headers && !msg->headers))
        return -EINVAL;
    size_t tlen = strlen(msg->topic);
    kafka_msg_t *m = kafka__msg_get(k);
    m->cb = cb;
    m->arg = arg;

    /* "send <destination>" (semconv messaging span name). */
    char name[300];
    int nl = snprintf(name, sizeof name, "send %s", msg->topic);
    if (nl < 0 || (size_t)nl >= sizeof name)
        nl = (int)sizeof name - 1;
    trace_span_t *s = &m->span;
    trace_span_start(s, &kafka__scope, name, (size_t)nl, TRACE_KIND_PRODUCER, msg->parent);
    trace_span_set_str(s, "messaging.system", "kafka");
    trace_span_set_str(s, "messaging.operation.type", "send");
    trace_span_set_str(s, "messaging.operation.name", "send");
    trace_span_set_str_n(s, "messaging.destination.name", 26, msg->topic, tlen);
    if (msg->key)
        trace_span_set_str_n(s, "messaging.kafka.message.key", 27, msg->key, msg->key_len);
    if (msg->link && trace_id_is_valid(msg->link->trace_id, TRACE_ID_SIZE))
        trace_span_add_link(s, msg->link, NULL, 0);

    rd_kafka_headers_t *h = rd_kafka_headers_new(msg->n_headers + 2);
    for (size_t i = 0; i < msg->n_headers; i++)
        rd_kafka_header_add(h, msg->headers[i].name, -1, msg->headers[i].value,
                            (ssize_t)msg->headers[i].len);
    /* The consumer's span continues from the PRODUCER span (OTel messaging
     * conventions: the creation context travels with the message). */
    int rc = trace_inject(&s->ctx, NULL, kafka__hdr_set, h);
    if (rc == 0 && traceparent_out)
        trace_w3c_traceparent_format(&s->ctx, traceparent_out);
    if (rc) {
        rd_kafka_headers_destroy(h);
        trace_span_set_str(s, "error.type", "traceparent");
        trace_span_set_status(s, TRACE_STATUS_ERROR, "inject traceparent", 18);
        trace_span_end(s);
        kafka__msg_put(k, m);
        k->cnt.refused++;
        return rc;
    }

    rd_kafka_resp_err_t e = rd_kafka_producev(
        k->rk, RD_KAFKA_V_TOPIC(msg->topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_KEY(msg->key, msg->key_len),
        RD_KAFKA_V_VALUE((void *)(uintptr_t)msg->value, msg->value_len),
        RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_OPAQUE(m), RD_KAFKA_V_END);
    if (e) {
        /* Not accepted: the headers are still ours, and no report follows. */
        rd_kafka_headers_destroy(h);
        kafka__span_error(s, e);
        trace_span_end(s);
        kafka__msg_put(k, m);
        k->cnt.refused++;
        return kafka__errno(e);
    }
    k->pending++;
    k->cnt.produced++;
    return 0;
}

unsigned kafka_pending(const kafka_t *k) { return k->pending; }

void kafka_counters(const kafka_t *k, kafka_counters_t *out) { *out = k->cnt; }

int kafka_describe(const kafka_t *k, char *out, size_t cap)
{
    int n = snprintf(out, cap,
                     "kafka: bootstrap=%s client.id=%s idempotent acks=all "
                     "delivery_timeout_ms=%d linger_ms=%d reconnect_backoff_max_ms=%d librdkafka=%s",
                     k->bootstrap, k->client_id, k->delivery_timeout_ms, k->linger_ms,
                     k->reconnect_backoff_max_ms, rd_kafka_version_str());
    return n < 0 ? -EINVAL : n;
}
