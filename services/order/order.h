/*
 * services/order/order.h - order-svc internals: the CreateOrder saga, the
 * order queries (GetOrder, ListOrders), crash recovery, and the outbox
 * relay that publishes order-events to Kafka.  Internal header of
 * services/order (order.c, relay.c, main.c); nothing outside includes it.
 *
 * Everything runs on one loop thread; no function blocks.  The saga and
 * the relay only talk to the outside through core/grpc (inventory-svc,
 * payment-svc), core/pg (orders, outbox) and core/kafka.
 *
 * Return convention: 0 or -errno (STYLE.md).
 */
#ifndef SHOP_SERVICES_ORDER_H
#define SHOP_SERVICES_ORDER_H

#include <stdbool.h>
#include <stdint.h>

#include "core.h"
#include "grpc.h"
#include "kafka.h"
#include "loop.h"
#include "pg.h"

/* Why an order failed (orders.failure_reason) and the gRPC status the caller
 * gets for it, also when a retry with the same idempotency key replays it.
 * X(id, reason text, status) */
#define ORDER_REASON_MAP(X)                                                    \
    X(INSUFFICIENT_STOCK, "insufficient_stock", FAILED_PRECONDITION)           \
    X(PRODUCT_NOT_FOUND, "product_not_found", NOT_FOUND)                       \
    X(INVENTORY_UNAVAILABLE, "inventory_unavailable", UNAVAILABLE)             \
    X(INVENTORY_TIMEOUT, "inventory_timeout", ABORTED)                         \
    X(INVENTORY_ERROR, "inventory_error", ABORTED)                             \
    X(PAYMENT_DECLINED, "payment_declined", FAILED_PRECONDITION)               \
    X(PAYMENT_TIMEOUT, "payment_timeout", ABORTED)                             \
    X(PAYMENT_UNAVAILABLE, "payment_unavailable", UNAVAILABLE)                 \
    X(PAYMENT_ERROR, "payment_error", ABORTED)

typedef enum {
    ORDER_REASON_NONE = 0,
#define ORDER__REASON_ENUM(id, text, st) ORDER_REASON_##id,
    ORDER_REASON_MAP(ORDER__REASON_ENUM)
#undef ORDER__REASON_ENUM
} order_reason_t;

const char *order_reason_text(order_reason_t r);
grpc_status_t order_reason_status(order_reason_t r);
/* The reason for a stored text, ORDER_REASON_NONE if unknown. */
order_reason_t order_reason_parse(const char *text);

typedef struct st_order_svc_t order_svc_t;

typedef struct st_order_options_t {
    const char *inventory_address;  /* "host:port", numeric host */
    const char *payment_address;
    uint32_t stock_timeout_ms;      /* per CheckStock/ReduceStock/RestoreStock call */
    uint32_t payment_timeout_ms;    /* per ProcessPayment call */
    uint32_t recovery_age_ms;       /* pending orders older than this are resumed */
    uint32_t relay_poll_ms;         /* outbox poll interval */
    uint32_t relay_batch;           /* rows per poll, and most messages in flight */
    const char *topic;              /* Kafka topic of order events */
} order_options_t;

/* 0 when addr is "numeric-host:port" (IPv4, or IPv6 in brackets) as the
 * gRPC channels need it, else -EINVAL. */
int order_address_check(const char *addr);

/* Creates the service on loop with its two gRPC channels.  pool and kafka
 * stay the caller's and must outlive it; kafka may be NULL (no relay).
 * Errors: -EINVAL (bad address; err says which), -ENOMEM. */
int order_svc_create(loop_t *loop, pg_pool_t *pool, kafka_t *kafka, const order_options_t *o,
                     order_svc_t **out, char *err, size_t errlen);
/* Handlers of shop.v1.OrderService in descriptor method order (CreateOrder,
 * GetOrder, ListOrders); their arg is the order_svc_t. */
const grpc_server_handler_cb *order_svc_handlers(void);
/* Starts the outbox relay timer and the recovery sweep (one run at once,
 * then every recovery_age_ms).  Errors: -ENOMEM. */
int order_svc_start(order_svc_t *svc);
/* Stops polling (relay and sweep); sagas and deliveries in flight go on. */
void order_svc_stop(order_svc_t *svc);
/* Sagas in flight plus relay messages/updates not yet settled. */
unsigned order_svc_busy(const order_svc_t *svc);
/* Frees svc (after order_svc_busy() is 0, or at exit). */
void order_svc_free(order_svc_t *svc);

/* Counters for the shutdown log. */
typedef struct st_order_counters_t {
    uint64_t created, completed, failed, replayed, conflicts, recovered;
    uint64_t relay_produced, relay_sent, relay_failed, relay_polls;
} order_counters_t;
void order_svc_counters(const order_svc_t *svc, order_counters_t *out);

/* ---------------------------------------------------------- relay.c */
typedef struct st_order_relay_t order_relay_t;
int order_relay_create(order_svc_t *svc, loop_t *loop, pg_pool_t *pool, kafka_t *kafka,
                       const order_options_t *o, order_relay_t **out);
int order_relay_start(order_relay_t *r);
void order_relay_stop(order_relay_t *r);
unsigned order_relay_busy(const order_relay_t *r);
void order_relay_counters(const order_relay_t *r, order_counters_t *out);
void order_relay_free(order_relay_t *r);

#endif
