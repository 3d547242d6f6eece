/*
 * core/kafka.h - the Kafka producer of shop-trace: an idempotent librdkafka
 * producer driven from the io_uring loop, with one PRODUCER span per
 * message.  The order service's outbox relay publishes order-events with it.
 *
 * Usage:
 *   kafka_options_t o;
 *   kafka_options_default(&o);
 *   o.bootstrap_servers = "127.0.0.1:9092";
 *   kafka_t *k;
 *   char err[256];
 *   if (kafka_create(loop, &o, &k, err, sizeof err) != 0) { ... err ... }
 *   kafka_message_t m = {.topic = "order-events", .key = id, .key_len = strlen(id),
 *                        .value = json, .value_len = len, .link = &order_ctx};
 *   kafka_produce(k, &m, on_delivered, row, NULL);   // returns at once
 *   ...
 *   static void on_delivered(kafka_t *k, const kafka_report_t *r, void *row) {
 *       if (r->status == 0) mark_sent(row);           // acknowledged (acks=all)
 *   }
 *   kafka_destroy(k);                                 // after kafka_pending() == 0
 *
 * ------------------------------------------------------------------------
 * CALLBACK CONTRACT
 *
 * Threads.  librdkafka's own threads do the network I/O.  Everything they
 * hand back (delivery reports, errors) waits in the client's main queue; the
 * queue signals a pipe when it becomes non-empty, the loop watches the pipe
 * (loop_watch_*) and serves the queue on the loop thread.  So every callback
 * below runs on the loop thread, from loop_run(), never inside
 * kafka_produce() (a message refused at once is reported by its return
 * value, and then no callback runs).  One exception, as loop_destroy() has:
 * kafka_destroy() runs the delivery callbacks of the messages it purges.
 * A callback may call kafka_produce() but not kafka_destroy().  All
 * functions must be called on the loop's thread.
 *
 * Delivery.  Exactly one delivery callback per accepted message: status 0
 * once the partition leader and its in-sync replicas acknowledged it
 * (acks=all), or an error when it could not be delivered within
 * delivery_timeout_ms (retries included) or was purged by kafka_destroy().
 * The producer is idempotent (enable.idempotence=true): retries cannot
 * duplicate or reorder messages within a partition, and since the partition
 * is chosen from the key, messages with one key (one order) are delivered in
 * kafka_produce() order.  While the broker is down messages wait in
 * librdkafka's queue; kafka_produce() never blocks (a full queue returns
 * -ENOBUFS).
 *
 * Spans.  kafka_produce() starts a PRODUCER span "send <topic>" with the
 * OpenTelemetry messaging attributes (semconv 1.37.0: messaging.system=kafka,
 * messaging.operation.type=send, messaging.operation.name=send,
 * messaging.destination.name, messaging.kafka.message.key), an OTel link to
 * the caller's context (the order's trace), and puts the span's own context
 * in the message's traceparent header (consumers continue from it).  The
 * span ends when the delivery report arrives: partition and offset on
 * success, status ERROR and error.type (librdkafka's error name) on failure.
 *
 * Who frees what.  kafka_create() allocates the kafka_t, kafka_destroy()
 * frees it.  kafka_produce() copies key, value and headers: the caller's
 * buffers may be reused as soon as it returns.
 *
 * Return convention: 0 on success, -errno on failure (STYLE.md).
 * ------------------------------------------------------------------------
 */
#ifndef SHOP_CORE_KAFKA_H
#define SHOP_CORE_KAFKA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"
#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ codes */

#define KAFKA_TOPIC_ORDER_EVENTS "order-events"
#define KAFKA_HEADERS_MAX 16u /* extra headers per message */

/* Defaults of kafka_options_default() (and of the [kafka] config keys). */
#define KAFKA_DELIVERY_TIMEOUT_MS_DEFAULT 120000
#define KAFKA_LINGER_MS_DEFAULT 5
#define KAFKA_RECONNECT_BACKOFF_MAX_MS_DEFAULT 1000

/* --------------------------------------------------------------- callbacks */

typedef struct st_kafka_t kafka_t;

/* The outcome of one message. */
typedef struct st_kafka_report_t {
    int status;             /* 0 = acknowledged; -ETIMEDOUT (delivery timeout),
                             * -ECANCELED (purged by kafka_destroy), -EIO (other) */
    int kafka_err;          /* librdkafka's rd_kafka_resp_err_t, 0 on success */
    const char *error_name; /* e.g. "_MSG_TIMED_OUT"; NULL on success (static) */
    const char *error_str;  /* human text; NULL on success (static) */
    int32_t partition;      /* -1 when unknown */
    int64_t offset;         /* -1 when unknown (not acknowledged) */
    const void *key;        /* the message's key, valid during the callback */
    size_t key_len;
} kafka_report_t;

/* Runs once per accepted message on the loop thread (see the contract). */
typedef void (*kafka_delivery_cb)(kafka_t *k, const kafka_report_t *r, void *arg);
/* Client-level errors (all brokers down, fatal idempotence errors), for
 * logging; fatal = the producer cannot go on and must be re-created. */
typedef void (*kafka_error_cb)(kafka_t *k, int kafka_err, bool fatal, const char *reason,
                               void *arg);

/* ----------------------------------------------------------------- structs */

typedef struct st_kafka_options_t {
    const char *bootstrap_servers;   /* "host:port,host:port"; required */
    const char *client_id;           /* default "shop-trace" */
    int delivery_timeout_ms;         /* time to acknowledgement, retries included (> 0) */
    int linger_ms;                   /* batching delay (>= 0) */
    int reconnect_backoff_max_ms;    /* ceiling of the reconnect back-off (> 0) */
    kafka_error_cb on_error;         /* optional; default logs to stderr */
    void *error_arg;
} kafka_options_t;

typedef struct st_kafka_header_t {
    const char *name;  /* NUL-terminated */
    const void *value;
    size_t len;
} kafka_header_t;

typedef struct st_kafka_message_t {
    const char *topic;                /* NUL-terminated */
    const void *key;                  /* the order id */
    size_t key_len;
    const void *value;                /* the JSON event */
    size_t value_len;
    const kafka_header_t *headers;    /* extra headers (not traceparent), copied */
    size_t n_headers;                 /* <= KAFKA_HEADERS_MAX */
    const trace_context_t *parent;    /* parent of the PRODUCER span; NULL = new trace */
    const trace_context_t *link;      /* linked context (the order's); NULL = none */
} kafka_message_t;

/* Counters since kafka_create(). */
typedef struct st_kafka_counters_t {
    uint64_t produced;    /* accepted by kafka_produce() */
    uint64_t refused;     /* refused by kafka_produce() (queue full, bad topic, ...) */
    uint64_t delivered;   /* acknowledged */
    uint64_t failed;      /* delivery reports with an error */
    uint64_t wakeups;     /* times the loop served the queue */
} kafka_counters_t;

/* -------------------------------------------------------------- prototypes */

void kafka_options_default(kafka_options_t *o);
/* The [kafka] section of the configuration (core/config.h); the strings
 * point into c, which must outlive kafka_create(). */
typedef struct st_config_t config_t;
void kafka_options_from_config(kafka_options_t *o, const config_t *c);

/* Creates the producer (idempotent, acks=all) and hooks its queue to the
 * loop.  Connecting is lazy and asynchronous: a broker that is down is not
 * an error here.  Returns 0 and *out, or -EINVAL (bad option; err says
 * which), -ENOMEM, -errno of pipe2/loop_watch_start. */
int kafka_create(loop_t *loop, const kafka_options_t *o, kafka_t **out, char *err, size_t errlen);
/* Purges what was not delivered (their callbacks run here with -ECANCELED,
 * their spans end as errors), stops librdkafka's threads and frees k.  To
 * lose nothing, run the loop until kafka_pending() is 0 first.  Blocks for
 * as long as librdkafka needs to join its threads (shutdown only). */
void kafka_destroy(kafka_t *k);

/* Queues one message; see the contract.  traceparent_out, when not NULL,
 * receives the traceparent header put on the message (55 chars + NUL).
 * Errors: -EINVAL (no topic, too many headers, invalid link), -ENOBUFS
 * (librdkafka's queue is full: queue.buffering.max.messages), -EMSGSIZE,
 * -ENOENT (unknown topic/partition), -EIO (a fatal producer error). */
int kafka_produce(kafka_t *k, const kafka_message_t *m, kafka_delivery_cb cb, void *arg,
                  char *traceparent_out);

/* Messages accepted and not yet reported (queued, in flight, or reports not
 * yet served). */
unsigned kafka_pending(const kafka_t *k);
void kafka_counters(const kafka_t *k, kafka_counters_t *out);
/* The effective configuration, one line, for the start-up log. */
int kafka_describe(const kafka_t *k, char *out, size_t cap);

#ifdef __cplusplus
}
#endif

#endif
