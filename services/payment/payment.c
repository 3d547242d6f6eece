/*
 * services/payment/payment.c - payment-svc: shop.v1.PaymentService
 * (ProcessPayment) over the payments table (docs/DATA.md), charging through
 * the external payment processor over HTTP/1.1 (core/http1_client.h;
 * shop-payment-sim in the stack, the demo and the tests).
 *
 * Usage:
 *   shop-payment-sim --config shop.conf &  # the processor, [payment_sim]
 *   payment-svc --config shop.conf         # listens on [payment_svc] address:port
 *   grpcurl -plaintext -import-path proto -proto shop/v1/payment.proto \
 *     -d '{"order_id":"o1","user_id":"user123","amount_cents":1299}' \
 *     127.0.0.1:9093 shop.v1.PaymentService/ProcessPayment
 *
 * Idempotent per order id (payments.order_id is UNIQUE).  The row is the
 * state machine; a call only talks to the processor while it holds the
 * row's "lease":
 *
 *   (none) --INSERT .. ON CONFLICT DO NOTHING--> pending, failure_reason NULL
 *            the caller whose INSERT returned the row holds the lease and
 *            POSTs the charge (header Idempotency-Key: order id);
 *   pending, NULL  = a call is talking to the processor now (the lease).
 *                    Other calls for the order wait (re-read every 20 ms)
 *                    for its outcome and return it (already_applied).  A
 *                    lease older than processor_timeout + 2 s belongs to a
 *                    crashed process and is taken over.
 *   pending, 'processor_timeout' | 'processor_unavailable' | 'processor_error'
 *                  = the last attempt ended without a decision (the lease
 *                    is released).  A retry takes the lease (one UPDATE,
 *                    so one winner) and charges again with the same
 *                    Idempotency-Key: a processor that did charge the first
 *                    time answers with the same charge, none is doubled.
 *   succeeded      = approved; processor_ref is the charge id.  Final.
 *   failed, reason = declined ('card_declined', 'insufficient_funds') or
 *                    refused by the processor ('processor_rejected').  Final.
 *
 * Statuses of ProcessPayment:
 *   OK                  approved (already_applied when replayed);
 *   INVALID_ARGUMENT    a bad field, named first in the message;
 *   ALREADY_EXISTS      the order was paid with another amount or currency;
 *   FAILED_PRECONDITION declined: "payment declined: <reason>" (also on a
 *                       replay of a declined payment);
 *   UNAVAILABLE         the processor timed out, could not be reached or
 *                       answered 5xx: the row stays pending, a retry is safe.
 *                       UNAVAILABLE and not DEADLINE_EXCEEDED for a timeout:
 *                       DEADLINE_EXCEEDED tells the caller its *own* deadline
 *                       passed and gRPC clients do not retry it, while here
 *                       the call ended in time and the right action is a
 *                       retry, which is what UNAVAILABLE means;
 *                       also "in progress" when a concurrent call still holds
 *                       the lease when our wait ends;
 *   INTERNAL            the processor refused the request (4xx other than 402);
 *   database errors through svc_reply_pg_error.
 *
 * Spans: the SERVER span; "INSERT payments" (db), "POST" (HTTP CLIENT,
 * traceparent sent to the processor), "UPDATE payments" (the outcome); a
 * replay shows "SELECT payments" instead of the POST.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http1_client.h"
#include "shop/v1/payment.pb-c.h"
#include "svc.h"

#define PAY_POLL_MS 20u
#define PAY_LEASE_SLACK_MS 2000u

typedef struct {
    svc_t *svc;
    pg_pool_t *pg;
    http1c_client_t *proc;
    uint32_t proc_timeout_ms;
    char proc_host[64];
    uint16_t proc_port;
} pay_svc_t;

/* One ProcessPayment in flight; freed when answered. */
typedef struct {
    pay_svc_t *ps;
    grpc_server_call_t *call;
    const Shop__V1__ProcessPaymentRequest *req; /* owned by the call */
    const char *currency;                       /* req's or "USD" */
    char id[24];                                /* payment id we inserted or took over */
    char amount[24];
    uint64_t wait_until;                        /* loop_now_ns() bound of the wait */
    loop_timer_t timer;
    char reason[64];                            /* outcome being recorded */
    char charge_id[80];
    grpc_status_t final_status;
    char final_msg[256];
} pay_call_t;

/* Columns of a payment row, in this order, for pay_row(). */
#define PAY_COLS                                                                            \
    "id, order_id, user_id, amount_cents, currency, status, coalesce(failure_reason, ''), " \
    "coalesce(processor_ref, ''), (extract(epoch FROM created_at) * 1000)::bigint"

static const char *const SQL_INSERT =
    "INSERT INTO payments (id, order_id, user_id, amount_cents, currency) "
    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (order_id) DO NOTHING RETURNING id";
/* Takes the lease of a released (or abandoned) pending row. */
static const char *const SQL_TAKEOVER =
    "UPDATE payments SET updated_at = now(), failure_reason = NULL "
    "WHERE order_id = $1 AND status = 'pending' AND amount_cents = $2 AND currency = $3 "
    "AND (failure_reason IS NOT NULL OR updated_at < now() - make_interval(secs => $4::float8)) "
    "RETURNING id";
static const char *const SQL_SELECT = "SELECT " PAY_COLS " FROM payments WHERE order_id = $1";
static const char *const SQL_RECORD =
    "UPDATE payments SET status = $2, failure_reason = nullif($3, ''), "
    "processor_ref = nullif($4, ''), updated_at = now() "
    "WHERE id = $1 AND status = 'pending' RETURNING " PAY_COLS;

static void pay_takeover(pay_call_t *pc);
static void pay_select(pay_call_t *pc);

static void pay_free(pay_call_t *pc)
{
    loop_timer_stop(svc_loop(pc->ps->svc), &pc->timer);
    free(pc);
}

static void pay_reply(pay_call_t *pc, grpc_status_t st, const char *msg,
                      const Shop__V1__ProcessPaymentResponse *res)
{
    if (st != GRPC_STATUS_OK && st != GRPC_STATUS_FAILED_PRECONDITION &&
        st != GRPC_STATUS_ALREADY_EXISTS && st != GRPC_STATUS_INVALID_ARGUMENT)
        svc_log(pc->ps->svc, "ProcessPayment order_id=%s: %s: %s", pc->req->order_id,
                grpc_status_name(st), msg ? msg : "");
    grpc_server_reply(pc->call, st, msg, (const ProtobufCMessage *)res);
    pay_free(pc);
}

static Shop__V1__PaymentStatus pay_status(const char *s)
{
    if (strcmp(s, "pending") == 0)
        return SHOP__V1__PAYMENT_STATUS__PAYMENT_STATUS_PENDING;
    if (strcmp(s, "succeeded") == 0)
        return SHOP__V1__PAYMENT_STATUS__PAYMENT_STATUS_SUCCEEDED;
    if (strcmp(s, "failed") == 0)
        return SHOP__V1__PAYMENT_STATUS__PAYMENT_STATUS_FAILED;
    if (strcmp(s, "refunded") == 0)
        return SHOP__V1__PAYMENT_STATUS__PAYMENT_STATUS_REFUNDED;
    return SHOP__V1__PAYMENT_STATUS__PAYMENT_STATUS_UNSPECIFIED;
}

/* Answers from a payment row (PAY_COLS): OK for succeeded, FAILED_PRECONDITION
 * for failed, with the payment in the response. */
static void pay_reply_row(pay_call_t *pc, const PGresult *r, bool replayed)
{
    Shop__V1__Payment p = SHOP__V1__PAYMENT__INIT;
    p.id = PQgetvalue(r, 0, 0);
    p.order_id = PQgetvalue(r, 0, 1);
    p.user_id = PQgetvalue(r, 0, 2);
    p.amount_cents = strtoll(PQgetvalue(r, 0, 3), NULL, 10);
    p.currency = PQgetvalue(r, 0, 4);
    p.status = pay_status(PQgetvalue(r, 0, 5));
    p.failure_reason = PQgetvalue(r, 0, 6);
    p.processor_ref = PQgetvalue(r, 0, 7);
    p.created_at_ms = strtoll(PQgetvalue(r, 0, 8), NULL, 10);
    Shop__V1__ProcessPaymentResponse res = SHOP__V1__PROCESS_PAYMENT_RESPONSE__INIT;
    res.payment = &p;
    res.already_applied = replayed;
    trace_span_t *sp = grpc_server_call_span(pc->call);
    trace_span_set_bool(sp, "shop.payment.replayed", replayed);
    trace_span_set_str(sp, "shop.payment.status", PQgetvalue(r, 0, 5));
    if (p.status == SHOP__V1__PAYMENT_STATUS__PAYMENT_STATUS_FAILED) {
        char msg[160];
        snprintf(msg, sizeof msg, "payment declined: %s", p.failure_reason);
        pay_reply(pc, GRPC_STATUS_FAILED_PRECONDITION, msg, NULL);
        return;
    }
    pay_reply(pc, GRPC_STATUS_OK, NULL, &res);
}

/* ------------------------------------------------------- recording */

static void pay_recorded(pg_pool_t *pool, int st, const PGresult *r, const char *msg, void *arg)
{
    (void)pool;
    pay_call_t *pc = arg;
    if (st != 0) {
        svc_reply_pg_error(pc->call, "UPDATE payments", st, r, msg);
        pay_free(pc);
        return;
    }
    if (pc->final_status != GRPC_STATUS_OK || PQntuples(r) != 1) {
        if (PQntuples(r) != 1 && pc->final_status == GRPC_STATUS_OK)
            pay_reply(pc, GRPC_STATUS_INTERNAL, "payment row changed under its lease", NULL);
        else
            pay_reply(pc, pc->final_status, pc->final_msg, NULL);
        return;
    }
    pay_reply_row(pc, r, false);
}

/* Records the outcome: status ("succeeded", "failed", or "pending" with a
 * reason that releases the lease), then answers final_status (or from the
 * row for OK/declined). */
static void pay_record(pay_call_t *pc, const char *status, const char *reason, const char *ref)
{
    const char *v[] = {pc->id, status, reason, ref};
    pg_query_opts_t q = {.operation = "UPDATE", .collection = "payments",
                         .parent = svc_call_ctx(pc->call)};
    int ret = pg_query(pc->ps->pg, SQL_RECORD, 4, v, NULL, NULL, &q, pay_recorded, pc);
    if (ret != 0)
        pay_reply(pc, GRPC_STATUS_INTERNAL, "UPDATE payments: out of memory", NULL);
}

/* Finds "key":"value" in a small JSON object (the processor's answer). */
static bool pay_json_str(const char *body, size_t len, const char *key, char *out, size_t cap)
{
    char buf[1024], pat[48];
    if (len >= sizeof buf)
        return false;
    memcpy(buf, body, len);
    buf[len] = '\0';
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(buf, pat);
    if (p == NULL)
        return false;
    p += strlen(pat);
    while (*p == ' ' || *p == ':')
        p++;
    if (*p++ != '"')
        return false;
    size_t n = 0;
    while (p[n] != '\0' && p[n] != '"' && p[n] != '\\' && n + 1 < cap) {
        if ((unsigned char)p[n] < 0x20)
            return false;
        n++;
    }
    if (p[n] != '"' || n == 0)
        return false;
    memcpy(out, p, n);
    out[n] = '\0';
    return true;
}

static void pay_processed(int err, const http1c_response_t *res, void *arg)
{
    pay_call_t *pc = arg;
    if (err == -ECANCELED) { /* shutting down: the row stays pending, the lease times out */
        pay_reply(pc, GRPC_STATUS_UNAVAILABLE, "payment-svc is shutting down", NULL);
        return;
    }
    pc->final_status = GRPC_STATUS_UNAVAILABLE;
    if (err < 0) {
        const char *why = err == -ETIMEDOUT ? "processor_timeout" : "processor_unavailable";
        if (err == -ETIMEDOUT)
            snprintf(pc->final_msg, sizeof pc->final_msg,
                     "payment processor timed out after %u ms: outcome unknown, the payment "
                     "stays pending; retry (same order id) is safe",
                     pc->ps->proc_timeout_ms);
        else
            snprintf(pc->final_msg, sizeof pc->final_msg,
                     "payment processor %s:%u unreachable: %s; retry is safe", pc->ps->proc_host,
                     pc->ps->proc_port, http1c_strerror(err));
        pay_record(pc, "pending", why, "");
        return;
    }
    if (res->status == 200) {
        if (!pay_json_str(res->body, res->body_len, "charge_id", pc->charge_id,
                          sizeof pc->charge_id)) {
            pc->final_status = GRPC_STATUS_UNAVAILABLE;
            snprintf(pc->final_msg, sizeof pc->final_msg,
                     "payment processor answered 200 without a charge_id; retry is safe");
            pay_record(pc, "pending", "processor_error", "");
            return;
        }
        pc->final_status = GRPC_STATUS_OK;
        pay_record(pc, "succeeded", "", pc->charge_id);
    } else if (res->status == 402) {
        if (!pay_json_str(res->body, res->body_len, "reason", pc->reason, sizeof pc->reason))
            snprintf(pc->reason, sizeof pc->reason, "card_declined");
        pc->final_status = GRPC_STATUS_FAILED_PRECONDITION;
        snprintf(pc->final_msg, sizeof pc->final_msg, "payment declined: %s", pc->reason);
        pay_record(pc, "failed", pc->reason, "");
    } else if (res->status >= 500) {
        snprintf(pc->final_msg, sizeof pc->final_msg,
                 "payment processor error (HTTP %d); the payment stays pending, retry is safe",
                 res->status);
        pay_record(pc, "pending", "processor_error", "");
    } else {
        pc->final_status = GRPC_STATUS_INTERNAL;
        snprintf(pc->final_msg, sizeof pc->final_msg, "payment processor refused the charge (HTTP %d)",
                 res->status);
        pay_record(pc, "failed", "processor_rejected", "");
    }
}

/* We hold the lease: POST the charge. */
static void pay_charge(pay_call_t *pc)
{
    pay_svc_t *ps = pc->ps;
    char body[512];
    int n = snprintf(body, sizeof body, "{\"order_id\":\"%s\",\"amount_cents\":%s,\"currency\":\"%s\"}",
                     pc->req->order_id, pc->amount, pc->currency);
    uint32_t tmo = ps->proc_timeout_ms;
    uint64_t dl = grpc_server_call_deadline(pc->call), now = loop_now_ns();
    if (dl != 0) { /* never outlive the caller's deadline: keep 50 ms to record the outcome */
        uint64_t left_ms = dl > now ? (dl - now) / 1000000u : 0;
        left_ms = left_ms > 50 ? left_ms - 50 : 1;
        if (left_ms < tmo)
            tmo = (uint32_t)left_ms;
    }
    http1c_header_t h[] = {{"Idempotency-Key", 15, pc->req->order_id, strlen(pc->req->order_id)}};
    http1c_request_t rq = {.method = "POST", .path = "/v1/charges", .headers = h, .num_headers = 1,
                           .content_type = "application/json", .body = body,
                           .body_len = (size_t)n, .timeout_ms = tmo,
                           .parent = svc_call_ctx(pc->call)};
    int ret = http1c_request(ps->proc, &rq, pay_processed, pc);
    if (ret != 0) {
        pc->final_status = GRPC_STATUS_UNAVAILABLE;
        snprintf(pc->final_msg, sizeof pc->final_msg, "payment processor request: %s",
                 http1c_strerror(ret));
        pay_record(pc, "pending", "processor_unavailable", "");
    }
}

/* ------------------------------------------------------- claim and wait */

static void pay_poll(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    pay_takeover(arg);
}

static void pay_selected(pg_pool_t *pool, int st, const PGresult *r, const char *msg, void *arg)
{
    (void)pool;
    pay_call_t *pc = arg;
    if (st != 0) {
        svc_reply_pg_error(pc->call, "SELECT payments", st, r, msg);
        pay_free(pc);
        return;
    }
    if (PQntuples(r) != 1) { /* deleted meanwhile (not done by us): start over */
        pay_reply(pc, GRPC_STATUS_ABORTED, "payment row vanished; retry", NULL);
        return;
    }
    if (strcmp(PQgetvalue(r, 0, 3), pc->amount) != 0 || strcmp(PQgetvalue(r, 0, 4), pc->currency) != 0) {
        char m[200];
        snprintf(m, sizeof m, "order %s was already paid with amount_cents=%s currency=%s",
                 pc->req->order_id, PQgetvalue(r, 0, 3), PQgetvalue(r, 0, 4));
        pay_reply(pc, GRPC_STATUS_ALREADY_EXISTS, m, NULL);
        return;
    }
    if (strcmp(PQgetvalue(r, 0, 5), "pending") != 0) {
        pay_reply_row(pc, r, true);
        return;
    }
    /* another call holds the lease: wait for its outcome */
    if (grpc_server_call_done(pc->call) || loop_now_ns() >= pc->wait_until) {
        char m[160];
        snprintf(m, sizeof m, "payment for order %s is in progress; retry", pc->req->order_id);
        pay_reply(pc, GRPC_STATUS_UNAVAILABLE, m, NULL);
        return;
    }
    loop_timer_start(svc_loop(pc->ps->svc), &pc->timer, PAY_POLL_MS * 1000000ull, 0, pay_poll, pc);
}

static void pay_select(pay_call_t *pc)
{
    const char *v[] = {pc->req->order_id};
    pg_query_opts_t q = {.operation = "SELECT", .collection = "payments",
                         .parent = svc_call_ctx(pc->call)};
    if (pg_query(pc->ps->pg, SQL_SELECT, 1, v, NULL, NULL, &q, pay_selected, pc) != 0)
        pay_reply(pc, GRPC_STATUS_INTERNAL, "SELECT payments: out of memory", NULL);
}

static void pay_took(pg_pool_t *pool, int st, const PGresult *r, const char *msg, void *arg)
{
    (void)pool;
    pay_call_t *pc = arg;
    if (st != 0) {
        svc_reply_pg_error(pc->call, "UPDATE payments", st, r, msg);
        pay_free(pc);
        return;
    }
    if (PQntuples(r) == 1) { /* the lease is ours: charge (again) */
        snprintf(pc->id, sizeof pc->id, "%s", PQgetvalue(r, 0, 0));
        trace_span_set_bool(grpc_server_call_span(pc->call), "shop.payment.retried", true);
        pay_charge(pc);
        return;
    }
    pay_select(pc);
}

static void pay_takeover(pay_call_t *pc)
{
    char lease[32];
    snprintf(lease, sizeof lease, "%.3f", (pc->ps->proc_timeout_ms + PAY_LEASE_SLACK_MS) / 1000.0);
    const char *v[] = {pc->req->order_id, pc->amount, pc->currency, lease};
    pg_query_opts_t q = {.operation = "UPDATE", .collection = "payments",
                         .parent = svc_call_ctx(pc->call)};
    if (pg_query(pc->ps->pg, SQL_TAKEOVER, 4, v, NULL, NULL, &q, pay_took, pc) != 0)
        pay_reply(pc, GRPC_STATUS_INTERNAL, "UPDATE payments: out of memory", NULL);
}

static void pay_inserted(pg_pool_t *pool, int st, const PGresult *r, const char *msg, void *arg)
{
    (void)pool;
    pay_call_t *pc = arg;
    if (st != 0) {
        svc_reply_pg_error(pc->call, "INSERT payments", st, r, msg);
        pay_free(pc);
        return;
    }
    if (PQntuples(r) == 1) {
        pay_charge(pc);
        return;
    }
    pay_takeover(pc); /* the order has a payment row already */
}

static void pay_process(grpc_server_call_t *call, const ProtobufCMessage *msg, void *arg)
{
    pay_svc_t *ps = arg;
    const Shop__V1__ProcessPaymentRequest *rq = (const Shop__V1__ProcessPaymentRequest *)msg;
    char m[160];
    if (svc_check_id(rq->order_id, "order_id", m, sizeof m) != 0 ||
        svc_check_id(rq->user_id, "user_id", m, sizeof m) != 0) {
        grpc_server_reply(call, GRPC_STATUS_INVALID_ARGUMENT, m, NULL);
        return;
    }
    if (rq->amount_cents <= 0) {
        snprintf(m, sizeof m, "amount_cents: must be > 0, got %" PRId64, rq->amount_cents);
        grpc_server_reply(call, GRPC_STATUS_INVALID_ARGUMENT, m, NULL);
        return;
    }
    const char *cur = rq->currency[0] ? rq->currency : "USD";
    if (strlen(cur) != 3 || cur[0] < 'A' || cur[0] > 'Z' || cur[1] < 'A' || cur[1] > 'Z' ||
        cur[2] < 'A' || cur[2] > 'Z') {
        grpc_server_reply(call, GRPC_STATUS_INVALID_ARGUMENT,
                          "currency: must be an ISO 4217 code of 3 upper-case letters", NULL);
        return;
    }
    pay_call_t *pc = calloc(1, sizeof *pc);
    if (pc == NULL) {
        grpc_server_reply(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL);
        return;
    }
    pc->ps = ps;
    pc->call = call;
    pc->req = rq;
    pc->currency = cur;
    loop_timer_init(&pc->timer);
    snprintf(pc->amount, sizeof pc->amount, "%" PRId64, rq->amount_cents);
    uint8_t rid[TRACE_SPAN_ID_SIZE];
    char hex[2 * TRACE_SPAN_ID_SIZE];
    trace_id_new_span(rid);
    trace_id_hex(rid, sizeof rid, hex);
    snprintf(pc->id, sizeof pc->id, "pay_%.16s", hex);
    uint64_t now = loop_now_ns();
    pc->wait_until = now + (uint64_t)(ps->proc_timeout_ms + PAY_LEASE_SLACK_MS) * 1000000u;
    uint64_t dl = grpc_server_call_deadline(call);
    if (dl != 0 && dl < pc->wait_until)
        pc->wait_until = dl;
    trace_span_t *sp = grpc_server_call_span(call);
    trace_span_set_str(sp, "shop.order.id", rq->order_id);
    const char *v[] = {pc->id, rq->order_id, rq->user_id, pc->amount, cur};
    pg_query_opts_t q = {.operation = "INSERT", .collection = "payments", .parent = svc_call_ctx(call)};
    if (pg_query(ps->pg, SQL_INSERT, 5, v, NULL, NULL, &q, pay_inserted, pc) != 0)
        pay_reply(pc, GRPC_STATUS_INTERNAL, "INSERT payments: out of memory", NULL);
}

static const grpc_server_handler_cb pay_handlers[] = {pay_process};

/* --check-config and start-up: the processor's address must be numeric
 * (core/http1_client does no DNS on the loop). */
static int pay_check_config(const config_t *c, char *err, size_t errlen)
{
    const char *a = config_str(c, CONFIG_PAYMENT_SVC_PROCESSOR_ADDRESS);
    unsigned char bin[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, a, bin) == 1 || inet_pton(AF_INET6, a, bin) == 1)
        return 0;
    snprintf(err, errlen, "%s: [payment_svc] processor_address = %s: want a numeric IPv4 or IPv6 address",
             config_origin(c, CONFIG_PAYMENT_SVC_PROCESSOR_ADDRESS), a);
    return -1;
}

int main(int argc, char **argv)
{
    svc_options_t o = {.name = "payment-svc", .listen_address = CONFIG_PAYMENT_SVC_ADDRESS,
                       .listen_port = CONFIG_PAYMENT_SVC_PORT, .needs = SVC_NEED_PG,
                       .check = pay_check_config};
    svc_t *svc;
    int rc = svc_create(&o, argc, argv, &svc);
    if (svc == NULL)
        return rc;
    const config_t *c = svc_config(svc);
    pay_svc_t ps = {.svc = svc, .pg = svc_pg(svc)};
    snprintf(ps.proc_host, sizeof ps.proc_host, "%s", config_str(c, CONFIG_PAYMENT_SVC_PROCESSOR_ADDRESS));
    ps.proc_port = (uint16_t)config_int(c, CONFIG_PAYMENT_SVC_PROCESSOR_PORT);
    ps.proc_timeout_ms = (uint32_t)config_int(c, CONFIG_PAYMENT_SVC_PROCESSOR_TIMEOUT);
    http1c_opts_t ho = {.max_conns = (unsigned)config_int(c, CONFIG_PAYMENT_SVC_PROCESSOR_CONNS),
                        .timeout_ms = ps.proc_timeout_ms};
    int ret = http1c_client_new(svc_loop(svc), ps.proc_host, ps.proc_port, &ho, &ps.proc);
    if (ret != 0) {
        svc_log(svc, "processor %s:%u: %s", ps.proc_host, ps.proc_port, strerror(-ret));
        svc_free(svc);
        return SVC_EXIT_CONFIG;
    }
    ret = svc_add_service(svc, &shop__v1__payment_service__descriptor, pay_handlers, &ps);
    if (ret != 0) {
        svc_log(svc, "add PaymentService: %s", strerror(-ret));
        http1c_client_free(ps.proc);
        svc_free(svc);
        return SVC_EXIT_FAIL;
    }
    rc = svc_run(svc);
    http1c_counters_t hc;
    http1c_counters(ps.proc, &hc);
    svc_log(svc, "processor: requests=%" PRIu64 " errors=%" PRIu64 " timeouts=%" PRIu64
            " connects=%" PRIu64 " reused=%" PRIu64 " discarded=%" PRIu64,
            hc.requests, hc.errors, hc.timeouts, hc.connects, hc.reused, hc.discarded);
    http1c_client_free(ps.proc);
    svc_free(svc);
    return rc;
}
