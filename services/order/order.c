/*
 * services/order/order.c - shop.v1.OrderService: the CreateOrder saga,
 * GetOrder, ListOrders and the recovery of interrupted sagas.
 *
 * The saga (one saga_t per CreateOrder, a chain of callbacks on the loop):
 *
 *   [key given] SELECT orders by (user_id, idempotency_key) -> replay
 *   CheckStock            refusal: no order is written, status returned
 *   INSERT orders         pending; ON CONFLICT (user_id, key) -> replay
 *   ReduceStock           FAILED_PRECONDITION/NOT_FOUND: stock unchanged,
 *                         order failed; any other error: outcome unknown,
 *                         compensate (RestoreStock writes a tombstone)
 *   ProcessPayment        declined/timeout/unavailable: compensate
 *   UPDATE orders + INSERT outbox   one statement (a CTE), so one
 *                         transaction and one DB span: an order never
 *                         completes without its event
 *   compensate            RestoreStock (retried), then UPDATE orders
 *                         SET status 'failed', failure_reason
 *
 * Every step after the INSERT is idempotent per order id (inventory's
 * stock_movements, payment's UNIQUE(order_id), the final UPDATEs only act
 * on a pending order), which is what makes recovery simple: a pending order
 * older than recovery_age_ms is resumed from ReduceStock (roll forward),
 * and each step either finds its earlier effect or makes it.  See
 * docs/ARCHITECTURE.md, "order-svc: the saga and the outbox relay".
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <openssl/evp.h>

#include "order.h"
#include "shop/v1/inventory.pb-c.h"
#include "shop/v1/order.pb-c.h"
#include "shop/v1/payment.pb-c.h"

#define MS 1000000ull
#define ORDER_LIST_DEFAULT 20
#define ORDER_LIST_MAX 100
#define ORDER_RESTORE_TRIES 3
#define ORDER_RECOVERY_BATCH 100

/* ------------------------------------------------------------ reasons */

const char *order_reason_text(order_reason_t r)
{
    switch (r) {
#define ORDER__REASON_TEXT(id, text, st) \
    case ORDER_REASON_##id:              \
        return text;
        ORDER_REASON_MAP(ORDER__REASON_TEXT)
#undef ORDER__REASON_TEXT
    case ORDER_REASON_NONE:
        break;
    }
    return "";
}

grpc_status_t order_reason_status(order_reason_t r)
{
    switch (r) {
#define ORDER__REASON_STATUS(id, text, st) \
    case ORDER_REASON_##id:                \
        return GRPC_STATUS_##st;
        ORDER_REASON_MAP(ORDER__REASON_STATUS)
#undef ORDER__REASON_STATUS
    case ORDER_REASON_NONE:
        break;
    }
    return GRPC_STATUS_OK;
}

order_reason_t order_reason_parse(const char *text)
{
#define ORDER__REASON_PARSE(id, t, st) \
    if (strcmp(text, t) == 0)         \
        return ORDER_REASON_##id;
    ORDER_REASON_MAP(ORDER__REASON_PARSE)
#undef ORDER__REASON_PARSE
    return ORDER_REASON_NONE;
}

/* ------------------------------------------------------------ service */

struct st_order_svc_t {
    loop_t *loop;
    pg_pool_t *pool;
    grpc_channel_t *inventory, *payment;
    order_relay_t *relay;
    order_options_t o;
    char topic[256];
    unsigned sagas;           /* sagas in flight (calls and recoveries) */
    bool sweeping;            /* a recovery SELECT or its sagas are running */
    bool closing;             /* order_svc_free runs: sagas end at their next step */
    unsigned sweep_left;      /* recovery sagas of the current sweep still running */
    loop_timer_t sweep_timer;
    order_counters_t c;
};

static const trace_scope_t order__scope = TRACE_SCOPE("shop.order", "0.1.0");

static int order__addr(const char *addr, char *host, size_t cap, uint16_t *port)
{
    const char *colon = strrchr(addr, ':');
    if (colon == NULL || colon == addr)
        return -EINVAL;
    const char *h = addr;
    size_t hl = (size_t)(colon - addr);
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end != '\0' || p <= 0 || p > 65535 || hl == 0 || hl >= cap)
        return -EINVAL;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (uint16_t)p;
    return 0;
}

int order_address_check(const char *addr)
{
    char host[128];
    uint16_t port;
    unsigned char bin[sizeof(struct in6_addr)];
    if (addr == NULL || order__addr(addr, host, sizeof host, &port) != 0)
        return -EINVAL;
    if (inet_pton(AF_INET, host, bin) != 1 && inet_pton(AF_INET6, host, bin) != 1)
        return -EINVAL;
    return 0;
}

int order_svc_create(loop_t *loop, pg_pool_t *pool, kafka_t *kafka, const order_options_t *o,
                     order_svc_t **out, char *err, size_t errlen)
{
    order_svc_t *s = calloc(1, sizeof *s);
    if (s == NULL)
        return -ENOMEM;
    s->loop = loop;
    s->pool = pool;
    s->o = *o;
    snprintf(s->topic, sizeof s->topic, "%s", o->topic ? o->topic : KAFKA_TOPIC_ORDER_EVENTS);
    s->o.topic = s->topic;
    loop_timer_init(&s->sweep_timer);
    const char *which[2] = {o->inventory_address, o->payment_address};
    grpc_channel_t **chs[2] = {&s->inventory, &s->payment};
    for (int i = 0; i < 2; i++) {
        char host[128];
        uint16_t port;
        if (which[i] == NULL || order__addr(which[i], host, sizeof host, &port) != 0) {
            snprintf(err, errlen, "%s address '%s': want numeric-host:port",
                     i == 0 ? "inventory" : "payment", which[i] ? which[i] : "");
            order_svc_free(s);
            return -EINVAL;
        }
        /* Keepalive finds a dead peer between calls; a short connect
         * timeout turns a service that is down into a quick UNAVAILABLE. */
        grpc_channel_opts_t co = {.connect_timeout_ns = 2000 * MS, .keepalive_ns = 0};
        int ret = grpc_channel_new(loop, host, port, &co, chs[i], err, errlen);
        if (ret != 0) {
            order_svc_free(s);
            return ret;
        }
    }
    if (kafka != NULL) {
        int ret = order_relay_create(s, loop, pool, kafka, &s->o, &s->relay);
        if (ret != 0) {
            snprintf(err, errlen, "outbox relay: %s", strerror(-ret));
            order_svc_free(s);
            return ret;
        }
    }
    *out = s;
    return 0;
}

void order_svc_free(order_svc_t *s)
{
    if (s == NULL)
        return;
    s->closing = true;
    loop_timer_stop(s->loop, &s->sweep_timer);
    if (s->relay)
        order_relay_free(s->relay);
    if (s->inventory)
        grpc_channel_free(s->inventory);
    if (s->payment)
        grpc_channel_free(s->payment);
    free(s);
}

unsigned order_svc_busy(const order_svc_t *s)
{
    return s->sagas + (s->sweeping ? 1u : 0u) + (s->relay ? order_relay_busy(s->relay) : 0u);
}

void order_svc_counters(const order_svc_t *s, order_counters_t *out)
{
    *out = s->c;
    if (s->relay)
        order_relay_counters(s->relay, out);
}

/* ------------------------------------------------------------ order rows */

/* Column list every order query returns, in this order. */
#define ORDER_COLS                                                                        \
    "id, user_id, product_id, quantity, amount_cents, status, "                           \
    "coalesce(failure_reason, ''), coalesce(idempotency_key, ''), "                       \
    "(extract(epoch FROM created_at) * 1000)::bigint, "                                   \
    "(extract(epoch FROM updated_at) * 1000)::bigint, coalesce(request_hash, ''), "       \
    "(extract(epoch FROM created_at) * 1000000)::bigint"
#define ORDER_NCOLS 12

/* An order read from a row; strings point into the PGresult. */
typedef struct {
    Shop__V1__Order msg;
    const char *request_hash;
    const char *created_us;
} order_row_t;

static void order__row(const PGresult *r, int i, order_row_t *o)
{
    Shop__V1__Order init = SHOP__V1__ORDER__INIT;
    o->msg = init;
    o->msg.id = PQgetvalue(r, i, 0);
    o->msg.user_id = PQgetvalue(r, i, 1);
    o->msg.product_id = PQgetvalue(r, i, 2);
    o->msg.quantity = (int32_t)strtol(PQgetvalue(r, i, 3), NULL, 10);
    o->msg.amount_cents = strtoll(PQgetvalue(r, i, 4), NULL, 10);
    const char *st = PQgetvalue(r, i, 5);
    o->msg.status = strcmp(st, "completed") == 0 ? SHOP__V1__ORDER_STATUS__ORDER_STATUS_COMPLETED
                    : strcmp(st, "failed") == 0  ? SHOP__V1__ORDER_STATUS__ORDER_STATUS_FAILED
                    : strcmp(st, "pending") == 0 ? SHOP__V1__ORDER_STATUS__ORDER_STATUS_PENDING
                                                 : SHOP__V1__ORDER_STATUS__ORDER_STATUS_UNSPECIFIED;
    o->msg.failure_reason = PQgetvalue(r, i, 6);
    o->msg.idempotency_key = PQgetvalue(r, i, 7);
    o->msg.created_at_ms = strtoll(PQgetvalue(r, i, 8), NULL, 10);
    o->msg.updated_at_ms = strtoll(PQgetvalue(r, i, 9), NULL, 10);
    o->request_hash = PQgetvalue(r, i, 10);
    o->created_us = PQgetvalue(r, i, 11);
}

/* A DB failure as a gRPC status: the server refused the statement
 * (INTERNAL) or could not be reached (UNAVAILABLE). */
static grpc_status_t order__db_status(int st)
{
    return st == PG_ERR_SERVER ? GRPC_STATUS_INTERNAL : GRPC_STATUS_UNAVAILABLE;
}

/* ------------------------------------------------------------ the saga */

typedef enum {
    SAGA_LOOKUP = 1,  /* SELECT by idempotency key */
    SAGA_CHECK,       /* CheckStock */
    SAGA_INSERT,      /* INSERT orders */
    SAGA_REDUCE,      /* ReduceStock */
    SAGA_PAY,         /* ProcessPayment */
    SAGA_COMPLETE,    /* UPDATE orders + INSERT outbox */
    SAGA_RESTORE,     /* RestoreStock (compensation) */
    SAGA_MARK_FAILED, /* UPDATE orders SET failed */
    SAGA_REPLAY,      /* SELECT the order that won the key */
} saga_step_t;

typedef struct {
    order_svc_t *svc;
    grpc_server_call_t *call; /* NULL for a recovery run */
    trace_span_t *span;       /* the SERVER span, or rec_span */
    trace_span_t rec_span;    /* recovery: an INTERNAL root span */
    trace_context_t parent;   /* parent of every client span (tracestate dropped) */
    saga_step_t step;
    char id[64];
    char user_id[65], product_id[65];
    char key[256];            /* "" = none */
    char hash[65];            /* SHA-256 hex of the request body */
    char traceparent[TRACE_TRACEPARENT_LEN + 1];
    char qty_s[16], amount_s[24];
    int32_t quantity;
    int64_t amount;
    order_reason_t reason;    /* set once the saga fails */
    grpc_status_t fail_status;
    char detail[200];         /* what the failing step said */
    int restore_tries;
} saga_t;

static void saga_check(saga_t *s);
static void saga_insert(saga_t *s);
static void saga_reduce(saga_t *s);
static void saga_pay(saga_t *s);
static void saga_complete(saga_t *s);
static void saga_fail(saga_t *s, order_reason_t reason, bool restore, const char *detail);
static void saga_restore(saga_t *s);
static void saga_mark_failed(saga_t *s);
static void saga_replay(saga_t *s);

static void saga_free(saga_t *s)
{
    order_svc_t *svc = s->svc;
    if (s->call == NULL) {
        trace_span_end(&s->rec_span);
        if (svc->sweep_left > 0 && --svc->sweep_left == 0)
            svc->sweeping = false;
    }
    svc->sagas--;
    free(s);
}

/* Ends a saga with an error status (the order, if any, is settled). */
static void saga_reply_error(saga_t *s, grpc_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void saga_reply_error(saga_t *s, grpc_status_t st, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (s->call != NULL)
        grpc_server_reply(s->call, st, msg, NULL);
    else if (st != GRPC_STATUS_OK)
        trace_span_set_status(&s->rec_span, TRACE_STATUS_ERROR, msg, strlen(msg));
    saga_free(s);
}

static void saga_reply_order(saga_t *s, const Shop__V1__Order *o, bool replayed)
{
    if (s->call != NULL) {
        Shop__V1__CreateOrderResponse resp = SHOP__V1__CREATE_ORDER_RESPONSE__INIT;
        resp.order = (Shop__V1__Order *)o;
        resp.replayed = replayed;
        grpc_server_reply(s->call, GRPC_STATUS_OK, NULL, &resp.base);
    }
    saga_free(s);
}

/* Packs msg and starts a traced unary call; on a local refusal runs cb's
 * failure path through a synthetic result. */
/* The service is being freed: end the saga where it stands (a pending
 * order is left to the next start's recovery sweep). */
static bool saga_closing(saga_t *s)
{
    if (!s->svc->closing)
        return false;
    if (s->call != NULL)
        grpc_server_reply(s->call, GRPC_STATUS_UNAVAILABLE, "order-svc is shutting down", NULL);
    saga_free(s);
    return true;
}

static void saga_call(saga_t *s, grpc_channel_t *ch, const char *path, const ProtobufCMessage *msg,
                      uint32_t timeout_ms, grpc_unary_cb cb)
{
    if (saga_closing(s))
        return;
    size_t len = protobuf_c_message_get_packed_size(msg);
    uint8_t stackbuf[1024], *buf = len <= sizeof stackbuf ? stackbuf : malloc(len);
    if (buf == NULL) {
        grpc_result_t r = {.status = GRPC_STATUS_RESOURCE_EXHAUSTED, .message = "out of memory"};
        cb(&r, s);
        return;
    }
    protobuf_c_message_pack(msg, buf);
    int ret = grpc_call_unary_traced(ch, path, buf, len, false, (uint64_t)timeout_ms * MS, NULL, 0,
                                     &s->parent, cb, s);
    if (buf != stackbuf)
        free(buf);
    if (ret != 0) {
        grpc_result_t r = {.status = GRPC_STATUS_INTERNAL, .message = strerror(-ret)};
        cb(&r, s);
    }
}

static void saga_query(saga_t *s, const char *sql, int n, const char *const *v, const char *op,
                       const char *coll, pg_result_cb cb)
{
    if (saga_closing(s))
        return;
    pg_query_opts_t q = {.operation = op, .collection = coll, .parent = &s->parent};
    int ret = pg_query(s->svc->pool, sql, n, v, NULL, NULL, &q, cb, s);
    if (ret != 0)
        cb(s->svc->pool, ret, NULL, strerror(-ret), s);
}

/* --- lookup by idempotency key, and replay --- */

static void saga_replay_row(saga_t *s, const PGresult *r)
{
    order_row_t o;
    order__row(r, 0, &o);
    if (strcmp(o.request_hash, s->hash) != 0) {
        s->svc->c.conflicts++;
        saga_reply_error(s, GRPC_STATUS_ALREADY_EXISTS,
                         "idempotency_key: already used by order %s with a different request",
                         o.msg.id);
        return;
    }
    s->svc->c.replayed++;
    if (s->call != NULL) {
        trace_span_set_str(s->span, "shop.order.id", o.msg.id);
        trace_span_set_str(s->span, "shop.order.replayed", "true");
    }
    /* A replayed failure answers as the first call did; a pending order
     * (the first call still running) is returned as it stands. */
    order_reason_t rr = order_reason_parse(o.msg.failure_reason);
    if (o.msg.status == SHOP__V1__ORDER_STATUS__ORDER_STATUS_FAILED && rr != ORDER_REASON_NONE) {
        saga_reply_error(s, order_reason_status(rr), "%s (order %s, replayed)", o.msg.failure_reason,
                         o.msg.id);
        return;
    }
    saga_reply_order(s, &o.msg, true);
}

static void saga_on_lookup(pg_pool_t *p, int st, const PGresult *r, const char *msg, void *arg)
{
    (void)p;
    saga_t *s = arg;
    if (st != 0) {
        saga_reply_error(s, order__db_status(st), "database: %s", msg);
        return;
    }
    if (PQntuples(r) > 0) {
        saga_replay_row(s, r);
        return;
    }
    if (s->step == SAGA_REPLAY) {
        /* The key's order vanished between the conflict and this read. */
        saga_reply_error(s, GRPC_STATUS_ABORTED, "idempotency_key: concurrent request, retry");
        return;
    }
    saga_check(s);
}

static const char order__sql_by_key[] =
    "SELECT " ORDER_COLS " FROM orders WHERE user_id = $1 AND idempotency_key = $2";

static void saga_lookup(saga_t *s)
{
    s->step = SAGA_LOOKUP;
    const char *v[] = {s->user_id, s->key};
    saga_query(s, order__sql_by_key, 2, v, "SELECT", "orders", saga_on_lookup);
}

static void saga_replay(saga_t *s)
{
    s->step = SAGA_REPLAY;
    const char *v[] = {s->user_id, s->key};
    saga_query(s, order__sql_by_key, 2, v, "SELECT", "orders", saga_on_lookup);
}

/* --- CheckStock --- */

static void saga_on_check(const grpc_result_t *res, void *arg)
{
    saga_t *s = arg;
    if (res->status == GRPC_STATUS_NOT_FOUND) {
        saga_reply_error(s, GRPC_STATUS_NOT_FOUND, "product_id: unknown product %s", s->product_id);
        return;
    }
    if (res->status != GRPC_STATUS_OK) {
        /* Nothing is written yet: whatever went wrong, nothing happened. */
        saga_reply_error(s, GRPC_STATUS_UNAVAILABLE, "inventory-svc: CheckStock: %s: %s",
                         grpc_status_name(res->status), res->message);
        return;
    }
    Shop__V1__CheckStockResponse *cr =
        shop__v1__check_stock_response__unpack(NULL, res->response_len, res->response);
    if (cr == NULL) {
        saga_reply_error(s, GRPC_STATUS_INTERNAL, "inventory-svc: CheckStock: bad response");
        return;
    }
    bool ok = cr->available;
    int32_t stock = cr->stock;
    shop__v1__check_stock_response__free_unpacked(cr, NULL);
    if (!ok) {
        saga_reply_error(s, GRPC_STATUS_FAILED_PRECONDITION,
                         "insufficient_stock: %d in stock, %d asked (no order was made)", stock,
                         s->quantity);
        return;
    }
    saga_insert(s);
}

static void saga_check(saga_t *s)
{
    s->step = SAGA_CHECK;
    Shop__V1__CheckStockRequest q = SHOP__V1__CHECK_STOCK_REQUEST__INIT;
    q.product_id = s->product_id;
    q.quantity = s->quantity;
    saga_call(s, s->svc->inventory, "/shop.v1.InventoryService/CheckStock", &q.base,
              s->svc->o.stock_timeout_ms, saga_on_check);
}

/* --- INSERT orders --- */

static void saga_on_insert(pg_pool_t *p, int st, const PGresult *r, const char *msg, void *arg)
{
    (void)p;
    saga_t *s = arg;
    if (st != 0) {
        saga_reply_error(s, order__db_status(st), "database: INSERT orders: %s", msg);
        return;
    }
    if (PQntuples(r) == 0) { /* the key was taken by a concurrent request */
        saga_replay(s);
        return;
    }
    s->svc->c.created++;
    saga_reduce(s);
}

static void saga_insert(saga_t *s)
{
    s->step = SAGA_INSERT;
    const char *v[] = {s->id, s->user_id, s->product_id, s->qty_s, s->amount_s,
                       s->key[0] ? s->key : NULL, s->hash};
    saga_query(s,
               "INSERT INTO orders (id, user_id, product_id, quantity, amount_cents, "
               "idempotency_key, request_hash) VALUES ($1, $2, $3, $4, $5, $6, $7) "
               "ON CONFLICT (user_id, idempotency_key) DO NOTHING RETURNING id",
               7, v, "INSERT", "orders", saga_on_insert);
}

/* --- ReduceStock --- */

static void saga_on_reduce(const grpc_result_t *res, void *arg)
{
    saga_t *s = arg;
    switch (res->status) {
    case GRPC_STATUS_OK:
        saga_pay(s);
        return;
    case GRPC_STATUS_FAILED_PRECONDITION: /* not enough stock, or already restored */
        saga_fail(s, ORDER_REASON_INSUFFICIENT_STOCK, false, res->message);
        return;
    case GRPC_STATUS_NOT_FOUND:
        saga_fail(s, ORDER_REASON_PRODUCT_NOT_FOUND, false, res->message);
        return;
    case GRPC_STATUS_UNAVAILABLE:
        /* Possibly applied (the connection may have died after the
         * request went out): compensate. */
        saga_fail(s, ORDER_REASON_INVENTORY_UNAVAILABLE, true, res->message);
        return;
    case GRPC_STATUS_DEADLINE_EXCEEDED:
    case GRPC_STATUS_CANCELLED:
        saga_fail(s, ORDER_REASON_INVENTORY_TIMEOUT, true, res->message);
        return;
    default:
        saga_fail(s, ORDER_REASON_INVENTORY_ERROR, true, grpc_status_name(res->status));
        return;
    }
}

static void saga_reduce(saga_t *s)
{
    s->step = SAGA_REDUCE;
    Shop__V1__ReduceStockRequest q = SHOP__V1__REDUCE_STOCK_REQUEST__INIT;
    q.order_id = s->id;
    q.product_id = s->product_id;
    q.quantity = s->quantity;
    saga_call(s, s->svc->inventory, "/shop.v1.InventoryService/ReduceStock", &q.base,
              s->svc->o.stock_timeout_ms, saga_on_reduce);
}

/* --- ProcessPayment --- */

static void saga_on_pay(const grpc_result_t *res, void *arg)
{
    saga_t *s = arg;
    if (res->status != GRPC_STATUS_OK) {
        /* payment-svc answers a decline FAILED_PRECONDITION, and a
         * processor that did not answer in time UNAVAILABLE with "timed
         * out" (outcome unknown): that is a payment timeout to the caller,
         * like our own deadline passing. */
        const char *m = res->message ? res->message : "";
        order_reason_t why;
        if (res->status == GRPC_STATUS_DEADLINE_EXCEEDED || res->status == GRPC_STATUS_CANCELLED)
            why = ORDER_REASON_PAYMENT_TIMEOUT;
        else if (res->status == GRPC_STATUS_FAILED_PRECONDITION)
            why = ORDER_REASON_PAYMENT_DECLINED;
        else if (res->status == GRPC_STATUS_UNAVAILABLE)
            why = strstr(m, "timed out") || strstr(m, "timeout") ? ORDER_REASON_PAYMENT_TIMEOUT
                                                                 : ORDER_REASON_PAYMENT_UNAVAILABLE;
        else
            why = ORDER_REASON_PAYMENT_ERROR;
        char d[200];
        snprintf(d, sizeof d, "%s: %s", grpc_status_name(res->status), m);
        saga_fail(s, why, true, d);
        return;
    }
    Shop__V1__ProcessPaymentResponse *pr =
        shop__v1__process_payment_response__unpack(NULL, res->response_len, res->response);
    if (pr == NULL || pr->payment == NULL) {
        if (pr)
            shop__v1__process_payment_response__free_unpacked(pr, NULL);
        saga_fail(s, ORDER_REASON_PAYMENT_ERROR, true, "bad ProcessPayment response");
        return;
    }
    Shop__V1__PaymentStatus ps = pr->payment->status;
    char why[160];
    snprintf(why, sizeof why, "%s", pr->payment->failure_reason ? pr->payment->failure_reason : "");
    shop__v1__process_payment_response__free_unpacked(pr, NULL);
    if (ps == SHOP__V1__PAYMENT_STATUS__PAYMENT_STATUS_SUCCEEDED) {
        saga_complete(s);
    } else if (ps == SHOP__V1__PAYMENT_STATUS__PAYMENT_STATUS_FAILED) {
        /* payment-svc's reasons: processor timeouts and outages are not a
         * decline, the card was never judged. */
        order_reason_t r = strstr(why, "timeout") ? ORDER_REASON_PAYMENT_TIMEOUT
                           : strstr(why, "unavailable") ? ORDER_REASON_PAYMENT_UNAVAILABLE
                                                        : ORDER_REASON_PAYMENT_DECLINED;
        saga_fail(s, r, true, why);
    } else {
        /* PENDING: the processor's answer is unknown (an earlier call for
         * this order is still out, or timed out). */
        saga_fail(s, ORDER_REASON_PAYMENT_TIMEOUT, true, "payment still pending");
    }
}

static void saga_pay(saga_t *s)
{
    s->step = SAGA_PAY;
    Shop__V1__ProcessPaymentRequest q = SHOP__V1__PROCESS_PAYMENT_REQUEST__INIT;
    q.order_id = s->id;
    q.user_id = s->user_id;
    q.amount_cents = s->amount;
    q.currency = (char *)(uintptr_t)"USD";
    saga_call(s, s->svc->payment, "/shop.v1.PaymentService/ProcessPayment", &q.base,
              s->svc->o.payment_timeout_ms, saga_on_pay);
}

/* --- complete: UPDATE orders + INSERT outbox, one statement --- */

static void saga_on_complete(pg_pool_t *p, int st, const PGresult *r, const char *msg, void *arg)
{
    (void)p;
    saga_t *s = arg;
    if (st != 0) {
        /* Committed or not: unknown.  Compensating could give back the
         * stock of a completed order, so the order stays pending and the
         * recovery sweep finishes it (every step is idempotent). */
        saga_reply_error(s, order__db_status(st),
                         "database: completing order %s: %s (recovery will finish it)", s->id, msg);
        return;
    }
    if (PQntuples(r) == 0) {
        /* No longer pending: settled elsewhere (recovery).  Report it. */
        saga_replay(s);
        return;
    }
    order_row_t o;
    order__row(r, 0, &o);
    s->svc->c.completed++;
    saga_reply_order(s, &o.msg, false);
}

static void saga_complete(saga_t *s)
{
    s->step = SAGA_COMPLETE;
    const char *v[] = {s->id, s->traceparent[0] ? s->traceparent : NULL, s->svc->topic};
    saga_query(s,
               "WITH o AS (UPDATE orders SET status = 'completed', updated_at = now() "
               "WHERE id = $1 AND status = 'pending' RETURNING *), "
               "e AS (INSERT INTO outbox (aggregate_id, event_type, topic, key, payload, traceparent) "
               "SELECT o.id, 'order.completed', $3, o.id, jsonb_build_object("
               "'event_id', o.id || ':order.completed', 'type', 'order.completed', "
               "'order_id', o.id, 'user_id', o.user_id, 'product_id', o.product_id, "
               "'quantity', o.quantity, 'amount_cents', o.amount_cents, 'status', o.status, "
               "'occurred_at_ms', (extract(epoch FROM o.updated_at) * 1000)::bigint), $2 "
               "FROM o RETURNING id) "
               "SELECT " ORDER_COLS " FROM o WHERE EXISTS (SELECT 1 FROM e)",
               3, v, "UPDATE orders + INSERT outbox", NULL, saga_on_complete);
}

/* --- failure and compensation --- */

static void saga_fail(saga_t *s, order_reason_t reason, bool restore, const char *detail)
{
    s->reason = reason;
    s->fail_status = order_reason_status(reason);
    snprintf(s->detail, sizeof s->detail, "%s", detail ? detail : "");
    if (s->call != NULL) {
        trace_span_set_str(s->span, "shop.order.failure_reason", order_reason_text(reason));
        trace_span_set_str(s->span, "error.type", order_reason_text(reason));
    }
    if (restore)
        saga_restore(s);
    else
        saga_mark_failed(s);
}

static void saga_on_restore(const grpc_result_t *res, void *arg)
{
    saga_t *s = arg;
    if (res->status == GRPC_STATUS_OK) {
        saga_mark_failed(s);
        return;
    }
    if (++s->restore_tries < ORDER_RESTORE_TRIES) {
        saga_restore(s);
        return;
    }
    /* Stock may still be taken: the order stays pending, so the recovery
     * sweep resumes it later instead of leaving a reservation behind. */
    saga_reply_error(s, GRPC_STATUS_UNAVAILABLE,
                     "%s: %s; compensation of order %s pending (RestoreStock: %s)",
                     order_reason_text(s->reason), s->detail, s->id, grpc_status_name(res->status));
}

static void saga_restore(saga_t *s)
{
    s->step = SAGA_RESTORE;
    Shop__V1__RestoreStockRequest q = SHOP__V1__RESTORE_STOCK_REQUEST__INIT;
    q.order_id = s->id;
    q.product_id = s->product_id;
    q.quantity = s->quantity;
    saga_call(s, s->svc->inventory, "/shop.v1.InventoryService/RestoreStock", &q.base,
              s->svc->o.stock_timeout_ms, saga_on_restore);
}

static void saga_on_mark_failed(pg_pool_t *p, int st, const PGresult *r, const char *msg, void *arg)
{
    (void)p;
    saga_t *s = arg;
    if (st != 0) {
        saga_reply_error(s, order__db_status(st), "%s: %s; database: marking order %s failed: %s",
                         order_reason_text(s->reason), s->detail, s->id, msg);
        return;
    }
    if (PQntuples(r) > 0)
        s->svc->c.failed++;
    saga_reply_error(s, s->fail_status, "%s: %s (order %s)", order_reason_text(s->reason), s->detail,
                     s->id);
}

static void saga_mark_failed(saga_t *s)
{
    s->step = SAGA_MARK_FAILED;
    const char *v[] = {s->id, order_reason_text(s->reason)};
    saga_query(s,
               "UPDATE orders SET status = 'failed', failure_reason = $2, updated_at = now() "
               "WHERE id = $1 AND status = 'pending' RETURNING id",
               2, v, "UPDATE", "orders", saga_on_mark_failed);
}

/* ------------------------------------------------------------ handlers */

static int order__field_err(grpc_server_call_t *call, const char *msg)
{
    return grpc_server_reply(call, GRPC_STATUS_INVALID_ARGUMENT, msg, NULL);
}

static void order__hash(const Shop__V1__CreateOrderRequest *q, char out[65])
{
    char body[512];
    int n = snprintf(body, sizeof body, "%s\n%s\n%d\n%" PRId64, q->user_id, q->product_id,
                     q->quantity, q->amount_cents);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_Digest(body, (size_t)n, md, &mdlen, EVP_sha256(), NULL);
    trace_id_hex(md, 32, out);
    out[64] = '\0';
}

static void order_create(grpc_server_call_t *call, const ProtobufCMessage *m, void *arg)
{
    order_svc_t *svc = arg;
    const Shop__V1__CreateOrderRequest *q = (const Shop__V1__CreateOrderRequest *)m;
    if (q->user_id[0] == '\0' || strlen(q->user_id) > 64) {
        order__field_err(call, "user_id: required, at most 64 bytes");
        return;
    }
    if (q->product_id[0] == '\0' || strlen(q->product_id) > 64) {
        order__field_err(call, "product_id: required, at most 64 bytes");
        return;
    }
    if (q->quantity <= 0) {
        order__field_err(call, "quantity: must be > 0");
        return;
    }
    if (q->amount_cents <= 0) {
        order__field_err(call, "amount_cents: must be > 0");
        return;
    }
    if (strlen(q->idempotency_key) > 255) {
        order__field_err(call, "idempotency_key: at most 255 bytes");
        return;
    }
    saga_t *s = calloc(1, sizeof *s);
    if (s == NULL) {
        grpc_server_reply(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL);
        return;
    }
    svc->sagas++;
    s->svc = svc;
    s->call = call;
    s->span = grpc_server_call_span(call);
    s->parent = *trace_span_context(s->span);
    s->parent.tracestate = NULL; /* the span's buffer: not ours to keep */
    s->parent.tracestate_len = 0;
    if (trace_id_is_valid(s->parent.trace_id, TRACE_ID_SIZE))
        trace_w3c_traceparent_format(&s->parent, s->traceparent);
    uint8_t rnd[TRACE_ID_SIZE];
    trace_id_new(rnd);
    memcpy(s->id, "ord_", 4);
    trace_id_hex(rnd, 12, s->id + 4);
    s->id[28] = '\0';
    snprintf(s->user_id, sizeof s->user_id, "%s", q->user_id);
    snprintf(s->product_id, sizeof s->product_id, "%s", q->product_id);
    snprintf(s->key, sizeof s->key, "%s", q->idempotency_key);
    s->quantity = q->quantity;
    s->amount = q->amount_cents;
    snprintf(s->qty_s, sizeof s->qty_s, "%d", q->quantity);
    snprintf(s->amount_s, sizeof s->amount_s, "%" PRId64, q->amount_cents);
    order__hash(q, s->hash);
    trace_span_set_str(s->span, "shop.order.id", s->id);
    if (s->key[0] != '\0')
        saga_lookup(s);
    else
        saga_check(s);
}

/* --- GetOrder --- */

static void order_on_get(pg_pool_t *p, int st, const PGresult *r, const char *msg, void *arg)
{
    (void)p;
    grpc_server_call_t *call = arg;
    if (st != 0) {
        char m[300];
        snprintf(m, sizeof m, "database: %s", msg);
        grpc_server_reply(call, order__db_status(st), m, NULL);
        return;
    }
    if (PQntuples(r) == 0) {
        grpc_server_reply(call, GRPC_STATUS_NOT_FOUND, "id: no such order", NULL);
        return;
    }
    order_row_t o;
    order__row(r, 0, &o);
    Shop__V1__GetOrderResponse resp = SHOP__V1__GET_ORDER_RESPONSE__INIT;
    resp.order = &o.msg;
    grpc_server_reply(call, GRPC_STATUS_OK, NULL, &resp.base);
}

static void order_get(grpc_server_call_t *call, const ProtobufCMessage *m, void *arg)
{
    order_svc_t *svc = arg;
    const Shop__V1__GetOrderRequest *q = (const Shop__V1__GetOrderRequest *)m;
    if (q->id[0] == '\0' || strlen(q->id) > 64) {
        order__field_err(call, "id: required, at most 64 bytes");
        return;
    }
    const char *v[] = {q->id};
    /* prepared once per pooled connection: the hot read skips parse and plan */
    pg_query_opts_t o = {.operation = "SELECT", .collection = "orders",
                         .parent = trace_span_context(grpc_server_call_span(call)), .prepare = true};
    int ret = pg_query(svc->pool, "SELECT " ORDER_COLS " FROM orders WHERE id = $1", 1, v, NULL, NULL,
                       &o, order_on_get, call);
    if (ret != 0)
        grpc_server_reply(call, GRPC_STATUS_INTERNAL, strerror(-ret), NULL);
}

/* --- ListOrders: keyset paging on (created_at, id), newest first ---
 * The page token is "o1." + hex("<created_at in us>:<id>") of the last
 * order returned: opaque to clients, versioned for us. */

typedef struct {
    grpc_server_call_t *call;
    int page_size;
} list_t;

static void order_on_list(pg_pool_t *p, int st, const PGresult *r, const char *msg, void *arg)
{
    (void)p;
    list_t *l = arg;
    if (st != 0) {
        char m[300];
        snprintf(m, sizeof m, "database: %s", msg);
        grpc_server_reply(l->call, order__db_status(st), m, NULL);
        free(l);
        return;
    }
    int n = PQntuples(r);
    int take = n > l->page_size ? l->page_size : n;
    order_row_t *rows = calloc((size_t)take + 1, sizeof *rows);
    Shop__V1__Order **ptrs = calloc((size_t)take + 1, sizeof *ptrs);
    if (rows == NULL || ptrs == NULL) {
        free(rows);
        free(ptrs);
        grpc_server_reply(l->call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL);
        free(l);
        return;
    }
    for (int i = 0; i < take; i++) {
        order__row(r, i, &rows[i]);
        ptrs[i] = &rows[i].msg;
    }
    char token[3 + 2 * 100 + 1] = "";
    if (n > l->page_size && take > 0) {
        char raw[100];
        int rl = snprintf(raw, sizeof raw, "%s:%s", rows[take - 1].created_us, rows[take - 1].msg.id);
        if (rl > 0 && rl < (int)sizeof raw) {
            memcpy(token, "o1.", 3);
            trace_id_hex((const uint8_t *)raw, (size_t)rl, token + 3);
            token[3 + 2 * rl] = '\0';
        }
    }
    Shop__V1__ListOrdersResponse resp = SHOP__V1__LIST_ORDERS_RESPONSE__INIT;
    resp.n_orders = (size_t)take;
    resp.orders = ptrs;
    resp.next_page_token = token;
    grpc_server_reply(l->call, GRPC_STATUS_OK, NULL, &resp.base);
    free(rows);
    free(ptrs);
    free(l);
}

/* Decodes a page token into created_us and id; -1 if malformed. */
static int order__token(const char *t, char *us, size_t uscap, char *id, size_t idcap)
{
    size_t n = strlen(t);
    if (n < 5 || memcmp(t, "o1.", 3) != 0 || (n - 3) % 2 != 0 || (n - 3) / 2 >= 100)
        return -1;
    char raw[101];
    size_t rl = (n - 3) / 2;
    if (trace_id_unhex(t + 3, rl, (uint8_t *)raw) != 0)
        return -1;
    raw[rl] = '\0';
    if (memchr(raw, '\0', rl) != NULL)
        return -1;
    char *colon = strchr(raw, ':');
    if (colon == NULL || colon == raw || colon[1] == '\0')
        return -1;
    *colon = '\0';
    for (const char *c = raw; *c; c++)
        if (*c < '0' || *c > '9')
            return -1;
    if (strlen(raw) >= uscap || strlen(colon + 1) >= idcap)
        return -1;
    strcpy(us, raw);
    strcpy(id, colon + 1);
    return 0;
}

static void order_list(grpc_server_call_t *call, const ProtobufCMessage *m, void *arg)
{
    order_svc_t *svc = arg;
    const Shop__V1__ListOrdersRequest *q = (const Shop__V1__ListOrdersRequest *)m;
    if (q->user_id[0] == '\0' || strlen(q->user_id) > 64) {
        order__field_err(call, "user_id: required, at most 64 bytes");
        return;
    }
    if (q->page_size < 0) {
        order__field_err(call, "page_size: must be >= 0");
        return;
    }
    int size = q->page_size == 0 ? ORDER_LIST_DEFAULT : q->page_size;
    if (size > ORDER_LIST_MAX)
        size = ORDER_LIST_MAX;
    char us[24] = "", id[72] = "", lim[16];
    bool paged = q->page_token[0] != '\0';
    if (paged && order__token(q->page_token, us, sizeof us, id, sizeof id) != 0) {
        order__field_err(call, "page_token: not a token this server gave");
        return;
    }
    list_t *l = calloc(1, sizeof *l);
    if (l == NULL) {
        grpc_server_reply(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL);
        return;
    }
    l->call = call;
    l->page_size = size;
    snprintf(lim, sizeof lim, "%d", size + 1);
    pg_query_opts_t o = {.operation = "SELECT", .collection = "orders",
                         .parent = trace_span_context(grpc_server_call_span(call))};
    int ret;
    if (paged) {
        const char *v[] = {q->user_id, lim, us, id};
        ret = pg_query(svc->pool,
                       "SELECT " ORDER_COLS " FROM orders WHERE user_id = $1 AND (created_at, id) < "
                       "(timestamptz 'epoch' + $3::bigint * interval '1 microsecond', $4) "
                       "ORDER BY created_at DESC, id DESC LIMIT $2",
                       4, v, NULL, NULL, &o, order_on_list, l);
    } else {
        const char *v[] = {q->user_id, lim};
        ret = pg_query(svc->pool,
                       "SELECT " ORDER_COLS " FROM orders WHERE user_id = $1 "
                       "ORDER BY created_at DESC, id DESC LIMIT $2",
                       2, v, NULL, NULL, &o, order_on_list, l);
    }
    if (ret != 0) {
        free(l);
        grpc_server_reply(call, GRPC_STATUS_INTERNAL, strerror(-ret), NULL);
    }
}

/* Method order of shop.v1.OrderService: CreateOrder, GetOrder, ListOrders. */
static const grpc_server_handler_cb order__handlers[] = {order_create, order_get, order_list};

const grpc_server_handler_cb *order_svc_handlers(void)
{
    return order__handlers;
}

/* ------------------------------------------------------------ recovery */

static void order_on_stale(pg_pool_t *p, int st, const PGresult *r, const char *msg, void *arg)
{
    (void)p;
    order_svc_t *svc = arg;
    if (st != 0) {
        fprintf(stderr, "order-svc: recovery sweep: %s\n", msg);
        svc->sweeping = false;
        return;
    }
    int n = PQntuples(r);
    if (n == 0) {
        svc->sweeping = false;
        return;
    }
    svc->sweep_left = 0;
    for (int i = 0; i < n; i++) {
        saga_t *s = calloc(1, sizeof *s);
        if (s == NULL)
            break;
        svc->sagas++;
        svc->sweep_left++;
        svc->c.recovered++;
        s->svc = svc;
        snprintf(s->id, sizeof s->id, "%s", PQgetvalue(r, i, 0));
        snprintf(s->user_id, sizeof s->user_id, "%s", PQgetvalue(r, i, 1));
        snprintf(s->product_id, sizeof s->product_id, "%s", PQgetvalue(r, i, 2));
        snprintf(s->qty_s, sizeof s->qty_s, "%s", PQgetvalue(r, i, 3));
        snprintf(s->amount_s, sizeof s->amount_s, "%s", PQgetvalue(r, i, 4));
        s->quantity = (int32_t)strtol(s->qty_s, NULL, 10);
        s->amount = strtoll(s->amount_s, NULL, 10);
        /* A root span of its own per resumed order, tagged with the id. */
        static const char nm[] = "order recovery";
        trace_span_start(&s->rec_span, &order__scope, nm, sizeof nm - 1, TRACE_KIND_INTERNAL, NULL);
        trace_span_set_str(&s->rec_span, "shop.order.id", s->id);
        s->span = &s->rec_span;
        s->parent = *trace_span_context(&s->rec_span);
        s->parent.tracestate = NULL;
        s->parent.tracestate_len = 0;
        if (trace_id_is_valid(s->parent.trace_id, TRACE_ID_SIZE))
            trace_w3c_traceparent_format(&s->parent, s->traceparent);
        fprintf(stderr, "order-svc: recovery: resuming pending order %s\n", s->id);
        saga_reduce(s);
    }
    if (svc->sweep_left == 0)
        svc->sweeping = false;
}

static void order_sweep(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    order_svc_t *svc = arg;
    if (svc->sweeping)
        return;
    svc->sweeping = true;
    char age[24], lim[16];
    snprintf(age, sizeof age, "%u", svc->o.recovery_age_ms);
    snprintf(lim, sizeof lim, "%d", ORDER_RECOVERY_BATCH);
    const char *v[] = {age, lim};
    pg_query_opts_t q = {.operation = "SELECT", .collection = "orders"};
    int ret = pg_query(svc->pool,
                       "SELECT id, user_id, product_id, quantity, amount_cents FROM orders "
                       "WHERE status = 'pending' AND created_at < now() - $1::bigint * interval '1 ms' "
                       "ORDER BY created_at LIMIT $2",
                       2, v, NULL, NULL, &q, order_on_stale, svc);
    if (ret != 0)
        svc->sweeping = false;
}

int order_svc_start(order_svc_t *svc)
{
    int ret = loop_timer_start(svc->loop, &svc->sweep_timer, 0, (uint64_t)svc->o.recovery_age_ms * MS,
                               order_sweep, svc);
    if (ret != 0)
        return ret;
    return svc->relay ? order_relay_start(svc->relay) : 0;
}

void order_svc_stop(order_svc_t *svc)
{
    loop_timer_stop(svc->loop, &svc->sweep_timer);
    if (svc->relay)
        order_relay_stop(svc->relay);
}
