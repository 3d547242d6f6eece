/*
 * services/gateway/gw_route.c - routes and handlers: matching a request to
 * a route, the SERVER span ({method} {route}, incoming traceparent
 * honoured), rate limits and authentication, validation of the JSON body
 * (jansson), the gRPC calls to user-svc and order-svc and their answers as
 * JSON, gRPC statuses mapped to HTTP ones.  A request (gw_req_t) lives from
 * gw_route_handle to gw_req_finish, across its upstream calls.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "gateway.h"

static const trace_scope_t gw_scope = TRACE_SCOPE("shop-trace/gateway", "0.1.0");

const char *const gw_route_tmpl[] = {
#define GW__ROUTE_T(id, m, r) r,
    GW_ROUTE_MAP(GW__ROUTE_T)
#undef GW__ROUTE_T
};

/* gRPC status -> HTTP status (the table; anything else 500). */
static int gw_http_from_grpc(int st)
{
    switch (st) {
    case GRPC_STATUS_OK: return 200;
    case GRPC_STATUS_NOT_FOUND: return 404;
    case GRPC_STATUS_INVALID_ARGUMENT: return 400;
    case GRPC_STATUS_FAILED_PRECONDITION: return 409;
    case GRPC_STATUS_ALREADY_EXISTS: return 409;
    case GRPC_STATUS_UNAVAILABLE: return 503;
    case GRPC_STATUS_DEADLINE_EXCEEDED: return 504;
    case GRPC_STATUS_PERMISSION_DENIED: return 403;
    case GRPC_STATUS_UNAUTHENTICATED: return 401;
    case GRPC_STATUS_RESOURCE_EXHAUSTED: return 429;
    default: return 500;
    }
}

/* ------------------------------------------------------------- requests */

void gw_req_finish(gw_req_t *r, int status, const char *ctype, const char *body, size_t blen,
                   const char *extra)
{
    gw_conn_t *c = gw_loop_done ? NULL : r->conn;
    gw_t *gw = NULL;
    trace_span_set_int(&r->span, "http.response.status_code", status);
    if (status >= 500) {
        char et[16]; /* an int: 11 bytes and the NUL at most */
        snprintf(et, sizeof et, "%d", status);
        trace_span_set_str(&r->span, "error.type", et);
        trace_span_set_status(&r->span, TRACE_STATUS_ERROR, NULL, 0);
    }
    if (c != NULL) {
        gw = c->gw;
        gw_respond_raw(c, r->route, &r->span.ctx, r->t0, r->conn_close, status, ctype, body, blen,
                       extra);
        c->req = NULL;
        gw->inflight--;
    }
    trace_span_end(&r->span);
    /* reused while the loop runs: malloc of a 4.5 KiB block per request
     * (past glibc's per-thread cache) showed in profiles */
    if (!gw_loop_done && r->gw->req_free_n < GW_REQ_FREE_MAX) {
        r->next_free = r->gw->req_free;
        r->gw->req_free = r;
        r->gw->req_free_n++;
    } else {
        free(r);
    }
    if (c != NULL && !c->closing && !c->close_after && !c->in_handle)
        gw_conn_process(c);
}

void gw_req_free_all(gw_t *gw)
{
    while (gw->req_free != NULL) {
        gw_req_t *r = gw->req_free;
        gw->req_free = r->next_free;
        free(r);
    }
    gw->req_free_n = 0;
}

void gw_req_error(gw_req_t *r, int status, const char *msg)
{
    size_t len;
    char *b = gw_error_json(msg, &len);
    gw_req_finish(r, status, "application/json", b, len, NULL);
    free(b);
}

void gw_req_json(gw_req_t *r, int status, json_t *o, const char *amount_member, int64_t cents)
{
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (s == NULL) {
        gw_req_error(r, 500, "cannot encode the response");
        return;
    }
    if (amount_member == NULL) {
        gw_req_finish(r, status, "application/json", s, strlen(s), NULL);
        free(s);
        return;
    }
    /* amount is emitted as an exact decimal number, not through a double */
    size_t n = strlen(s);
    char *t = GW_MALLOC(n + 64);
    memcpy(t, s, n - 1);
    int k = snprintf(t + n - 1, 64, "%s\"amount\":%" PRId64 ".%02" PRId64 "}", n > 2 ? "," : "",
                     cents / 100, cents % 100);
    gw_req_finish(r, status, "application/json", t, n - 1 + (size_t)k, NULL);
    free(t);
    free(s);
}

static const char *gw_order_status(int st)
{
    switch (st) {
    case SHOP__V1__ORDER_STATUS__ORDER_STATUS_PENDING: return "pending";
    case SHOP__V1__ORDER_STATUS__ORDER_STATUS_COMPLETED: return "completed";
    case SHOP__V1__ORDER_STATUS__ORDER_STATUS_FAILED: return "failed";
    default: return "unspecified";
    }
}

/* Bytes gw_order_put may write for o (strings escaped at most 6x). */
static size_t gw_order_need(const Shop__V1__Order *o)
{
    const char *fr = o->failure_reason != NULL ? o->failure_reason : "";
    return 6 * (strlen(o->id) + strlen(o->user_id) + strlen(o->product_id) + strlen(fr)) + 320;
}

/* Writes order o as a JSON object at p (no jansson tree: the hot read path),
 * "replayed" when replayed >= 0, then "amount" as an exact decimal number,
 * never through a double.  Returns the bytes written. */
static size_t gw_order_put(char *p, const Shop__V1__Order *o, int replayed)
{
    char *start = p;
    const char *fr = o->failure_reason != NULL ? o->failure_reason : "";
#define GW_LIT(lit) (memcpy(p, lit, sizeof(lit) - 1), p += sizeof(lit) - 1)
    GW_LIT("{\"id\":");
    p += gw_json_put_str(p, o->id);
    GW_LIT(",\"user_id\":");
    p += gw_json_put_str(p, o->user_id);
    GW_LIT(",\"product_id\":");
    p += gw_json_put_str(p, o->product_id);
    p += sprintf(p, ",\"quantity\":%d,\"amount_cents\":%" PRId64 ",\"status\":\"%s\","
                    "\"created_at_ms\":%" PRId64 ",\"updated_at_ms\":%" PRId64,
                 (int)o->quantity, o->amount_cents, gw_order_status(o->status), o->created_at_ms,
                 o->updated_at_ms);
    if (fr[0]) {
        GW_LIT(",\"failure_reason\":");
        p += gw_json_put_str(p, fr);
    }
    if (replayed >= 0)
        p += sprintf(p, ",\"replayed\":%s", replayed ? "true" : "false");
    p += sprintf(p, ",\"amount\":%" PRId64 ".%02" PRId64 "}", o->amount_cents / 100,
                 o->amount_cents % 100); /* >= 0: order-svc refuses other amounts */
#undef GW_LIT
    return (size_t)(p - start);
}

/* Answers r with order o as JSON. */
static void gw_req_order(gw_req_t *r, int status, const Shop__V1__Order *o, int replayed)
{
    size_t need = gw_order_need(o);
    char stackbuf[1024];
    char *b = need <= sizeof stackbuf ? stackbuf : GW_MALLOC(need);
    size_t n = gw_order_put(b, o, replayed);
    gw_req_finish(r, status, "application/json", b, n, NULL);
    if (b != stackbuf)
        free(b);
}

/* Non-OK gRPC result -> HTTP error, keeping the message. */
static void gw_req_grpc_error(gw_req_t *r, const char *what, const grpc_result_t *res)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s: %s%s%s", what, grpc_status_name((int)res->status),
             res->message[0] ? ": " : "", res->message);
    gw_req_error(r, gw_http_from_grpc((int)res->status), msg);
}

/* Packs msg and starts a traced unary call; on a local failure answers 500. */
static bool gw_call(gw_req_t *r, grpc_channel_t *ch, const char *path, const ProtobufCMessage *msg,
                    const grpc_md_t *md, size_t n_md, grpc_unary_cb cb)
{
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t stackbuf[1024];
    uint8_t *buf = n <= sizeof stackbuf ? stackbuf : GW_MALLOC(n);
    protobuf_c_message_pack(msg, buf);
    int rc = grpc_call_unary_traced(ch, path, buf, n, false, r->conn->gw->upstream_ns, md, n_md,
                                    &r->span.ctx, cb, r);
    if (buf != stackbuf)
        free(buf);
    if (rc < 0) {
        gw_req_error(r, 500, "cannot start the upstream call");
        return false;
    }
    r->pending++;
    return true;
}

static void gw_on_create(const grpc_result_t *res, void *arg)
{
    gw_req_t *r = arg;
    r->pending--;
    if (res->status != GRPC_STATUS_OK) {
        gw_req_grpc_error(r, "order-svc CreateOrder", res);
        return;
    }
    Shop__V1__CreateOrderResponse *rsp =
        shop__v1__create_order_response__unpack(NULL, res->response_len, res->response);
    if (rsp == NULL || rsp->order == NULL) {
        if (rsp)
            shop__v1__create_order_response__free_unpacked(rsp, NULL);
        gw_req_error(r, 500, "order-svc CreateOrder: bad response");
        return;
    }
    trace_span_set_str(&r->span, "shop.order.id", rsp->order->id);
    gw_req_order(r, 201, rsp->order, rsp->replayed ? 1 : 0);
    shop__v1__create_order_response__free_unpacked(rsp, NULL);
}

static void gw_on_check_user(const grpc_result_t *res, void *arg)
{
    gw_req_t *r = arg;
    r->pending--;
    if (r->conn == NULL) { /* client gone: do not create the order */
        gw_req_error(r, 503, "client closed the connection");
        return;
    }
    if (res->status != GRPC_STATUS_OK) {
        gw_req_grpc_error(r, "user-svc GetUser", res);
        return;
    }
    grpc_md_t md = {"idempotency-key", (const uint8_t *)r->idem, strlen(r->idem)};
    gw_call(r, r->conn->gw->order_ch, "/shop.v1.OrderService/CreateOrder",
            &r->create.base, &md, r->idem[0] ? 1 : 0, gw_on_create);
}

static void gw_on_get_order(const grpc_result_t *res, void *arg)
{
    gw_req_t *r = arg;
    r->pending--;
    if (res->status != GRPC_STATUS_OK) {
        gw_req_grpc_error(r, "order-svc GetOrder", res);
        return;
    }
    Shop__V1__GetOrderResponse *rsp =
        shop__v1__get_order_response__unpack(NULL, res->response_len, res->response);
    if (rsp == NULL || rsp->order == NULL) {
        if (rsp)
            shop__v1__get_order_response__free_unpacked(rsp, NULL);
        gw_req_error(r, 500, "order-svc GetOrder: bad response");
        return;
    }
    if (strcmp(rsp->order->user_id, r->user) != 0) {
        shop__v1__get_order_response__free_unpacked(rsp, NULL);
        gw_req_error(r, 403, "order belongs to another user");
        return;
    }
    gw_req_order(r, 200, rsp->order, -1);
    shop__v1__get_order_response__free_unpacked(rsp, NULL);
}

static void gw_on_list(const grpc_result_t *res, void *arg)
{
    gw_req_t *r = arg;
    r->pending--;
    if (res->status != GRPC_STATUS_OK) {
        gw_req_grpc_error(r, "order-svc ListOrders", res);
        return;
    }
    Shop__V1__ListOrdersResponse *rsp =
        shop__v1__list_orders_response__unpack(NULL, res->response_len, res->response);
    if (rsp == NULL) {
        gw_req_error(r, 500, "order-svc ListOrders: bad response");
        return;
    }
    /* The same order objects as GET /api/orders/{id}, written directly so
     * "amount" is a number here too. */
    const char *tok = rsp->next_page_token ? rsp->next_page_token : "";
    size_t need = 64 + 6 * strlen(tok);
    for (size_t i = 0; i < rsp->n_orders; i++)
        need += gw_order_need(rsp->orders[i]) + 1;
    char *b = GW_MALLOC(need), *p = b;
    p += sprintf(p, "{\"orders\":[");
    for (size_t i = 0; i < rsp->n_orders; i++) {
        if (i)
            *p++ = ',';
        p += gw_order_put(p, rsp->orders[i], -1);
    }
    p += sprintf(p, "],\"next_page_token\":");
    p += gw_json_put_str(p, tok);
    *p++ = '}';
    shop__v1__list_orders_response__free_unpacked(rsp, NULL);
    gw_req_finish(r, 200, "application/json", b, (size_t)(p - b), NULL);
    free(b);
}

static void gw_on_get_user(const grpc_result_t *res, void *arg)
{
    gw_req_t *r = arg;
    r->pending--;
    if (res->status != GRPC_STATUS_OK) {
        gw_req_grpc_error(r, "user-svc GetUser", res);
        return;
    }
    Shop__V1__GetUserResponse *rsp =
        shop__v1__get_user_response__unpack(NULL, res->response_len, res->response);
    if (rsp == NULL || rsp->user == NULL) {
        if (rsp)
            shop__v1__get_user_response__free_unpacked(rsp, NULL);
        gw_req_error(r, 500, "user-svc GetUser: bad response");
        return;
    }
    json_t *o = json_pack("{s:s,s:s,s:s,s:I}", "id", rsp->user->id, "name", rsp->user->name,
                          "email", rsp->user->email, "created_at_ms",
                          (json_int_t)rsp->user->created_at_ms);
    shop__v1__get_user_response__free_unpacked(rsp, NULL);
    gw_req_json(r, 200, o, NULL, 0);
}

static void gw_health_done(gw_req_t *r)
{
    if (r->pending > 0)
        return;
    bool ok = r->health[0] == 1 && r->health[1] == 1;
    json_t *o = json_pack("{s:s,s:s,s:s}", "status", ok ? "ok" : "degraded", "user_svc",
                          r->health[0] == 1 ? "serving" : "unavailable", "order_svc",
                          r->health[1] == 1 ? "serving" : "unavailable");
    gw_req_json(r, ok ? 200 : 503, o, NULL, 0);
}

static void gw_on_health(const grpc_result_t *res, void *arg, int which)
{
    gw_req_t *r = arg;
    r->pending--;
    r->health[which] = 0;
    if (res->status == GRPC_STATUS_OK) {
        Grpc__Health__V1__HealthCheckResponse *h =
            grpc__health__v1__health_check_response__unpack(NULL, res->response_len, res->response);
        if (h != NULL) {
            r->health[which] =
                h->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
            grpc__health__v1__health_check_response__free_unpacked(h, NULL);
        }
    }
    gw_health_done(r);
}
static void gw_on_health_user(const grpc_result_t *res, void *arg) { gw_on_health(res, arg, 0); }
static void gw_on_health_order(const grpc_result_t *res, void *arg) { gw_on_health(res, arg, 1); }

/* POST /api/orders body: validation naming the field. */
static int gw_parse_order(gw_req_t *r, const char *body, size_t len, const char **why)
{
    json_error_t je;
    json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (j == NULL) {
        *why = "body must be a JSON object";
        return -1;
    }
    int rc = -1;
    if (!json_is_object(j)) {
        *why = "body must be a JSON object";
        goto out;
    }
    json_t *u = json_object_get(j, "user_id"), *p = json_object_get(j, "product_id"),
           *q = json_object_get(j, "quantity"), *a = json_object_get(j, "amount");
    if (!json_is_string(u) || !gw_id_ok(json_string_value(u), json_string_length(u))) {
        *why = "user_id must be a string id of 1..64 characters [A-Za-z0-9._-]";
        goto out;
    }
    if (!json_is_string(p) || !gw_id_ok(json_string_value(p), json_string_length(p))) {
        *why = "product_id must be a string id of 1..64 characters [A-Za-z0-9._-]";
        goto out;
    }
    if (!json_is_integer(q)) {
        *why = "quantity must be an integer";
        goto out;
    }
    if (json_integer_value(q) <= 0 || json_integer_value(q) > 1000000) {
        *why = json_integer_value(q) <= 0 ? "quantity must be > 0" : "quantity must be <= 1000000";
        goto out;
    }
    if (!json_is_number(a)) {
        *why = "amount must be a number";
        goto out;
    }
    size_t rawlen = 0;
    const char *raw = gw_json_member_raw(body, len, "amount", &rawlen);
    int64_t cents;
    if (raw == NULL) {
        *why = "amount must be a number";
        goto out;
    }
    if (gw_parse_cents(raw, rawlen, &cents, why) < 0)
        goto out;
    snprintf(r->c_user, sizeof r->c_user, "%s", json_string_value(u));
    snprintf(r->c_product, sizeof r->c_product, "%s", json_string_value(p));
    shop__v1__create_order_request__init(&r->create);
    r->create.user_id = r->c_user;
    r->create.product_id = r->c_product;
    r->create.quantity = (int32_t)json_integer_value(q);
    r->create.amount_cents = cents;
    r->create.idempotency_key = r->idem;
    rc = 0;
out:
    json_decref(j);
    return rc;
}

/* The W3C carrier over the request's headers: a second traceparent line
 * makes it invalid (a new trace, as the W3C test harness expects); several
 * tracestate lines are one list (RFC 9110 5.3), joined in order. */
typedef struct {
    const http1c_header_t *h;
    size_t n;
    char joined[TRACE_TRACESTATE_MAX * 2];
} gw_carrier_t;

static const char *gw_carrier_get(void *carrier, const char *name, size_t *vlen)
{
    gw_carrier_t *c = carrier;
    const http1c_header_t *h = http1c_find_header(c->h, c->n, name);
    if (h == NULL)
        return NULL;
    const http1c_header_t *end = c->h + c->n, *more = http1c_find_header(h + 1, (size_t)(end - h - 1), name);
    if (more == NULL) {
        *vlen = h->value_len;
        return h->value;
    }
    if (strcmp(name, "tracestate") != 0) {
        *vlen = 1;
        return "-"; /* two traceparent lines: invalid */
    }
    size_t len = 0;
    for (; h != NULL; h = h + 1 < end ? http1c_find_header(h + 1, (size_t)(end - h - 1), name) : NULL) {
        if (h->value_len == 0)
            continue;
        if (len + 1 + h->value_len > sizeof c->joined) {
            *vlen = 1;
            return "="; /* longer than passed on: invalid, dropped whole */
        }
        if (len)
            c->joined[len++] = ',';
        memcpy(c->joined + len, h->value, h->value_len);
        len += h->value_len;
    }
    *vlen = len;
    return c->joined;
}

/* Matches the route.  id gets {id} (raw). */
static gw_route_t gw_match(const char *m, size_t ml, const char *path, size_t pl, const char **id,
                           size_t *idl, bool *method_ok)
{
    *method_ok = true;
    bool get = ml == 3 && memcmp(m, "GET", 3) == 0, post = ml == 4 && memcmp(m, "POST", 4) == 0;
    gw_route_t r = GW_R_NONE;
#define GW_IS(lit) (pl == sizeof(lit) - 1 && memcmp(path, lit, pl) == 0)
#define GW_PFX(lit) (pl > sizeof(lit) - 1 && memcmp(path, lit, sizeof(lit) - 1) == 0)
    if (GW_IS("/api/orders")) {
        if (post)
            return GW_R_ORDER_CREATE;
        r = GW_R_ORDER_LIST;
    } else if (GW_PFX("/api/orders/")) {
        *id = path + 12;
        *idl = pl - 12;
        r = GW_R_ORDER_GET;
    } else if (GW_PFX("/api/users/")) {
        *id = path + 11;
        *idl = pl - 11;
        r = GW_R_USER_GET;
    } else if (GW_IS("/api/health")) {
        r = GW_R_HEALTH;
    } else if (GW_IS("/metrics")) {
        r = GW_R_METRICS;
    }
#undef GW_IS
#undef GW_PFX
    if (r != GW_R_NONE && !get)
        *method_ok = false;
    return r;
}

/* Query parameter value (raw, not percent-decoded: ids never need it). */
static bool gw_query_get(const char *q, size_t ql, const char *key, const char **v, size_t *vl)
{
    size_t kl = strlen(key);
    const char *p = q, *e = q + ql;
    while (p < e) {
        const char *amp = memchr(p, '&', (size_t)(e - p));
        const char *end = amp ? amp : e;
        if ((size_t)(end - p) > kl && memcmp(p, key, kl) == 0 && p[kl] == '=') {
            *v = p + kl + 1;
            *vl = (size_t)(end - *v);
            return true;
        }
        p = amp ? amp + 1 : e;
    }
    return false;
}

/* Handles one complete request (head parsed, body in buffer).  The request
 * takes c->req until it is answered. */
void gw_route_handle(gw_conn_t *c, const http1c_head_t *h, const http1c_header_t *hd,
                            const char *body, size_t blen)
{
    gw_t *gw = c->gw;
    uint64_t now = loop_now_ns();
    gw_req_t *r = gw->req_free;
    if (r != NULL) {
        gw->req_free = r->next_free;
        gw->req_free_n--;
    } else {
        r = GW_MALLOC(sizeof *r);
    }
    memset(r, 0, offsetof(gw_req_t, span));
    r->gw = gw;
    r->conn = c;
    r->t0 = now;
    r->conn_close = h->conn_close;
    r->health[0] = r->health[1] = -1;
    c->req = r;
    gw->inflight++;

    const char *path = h->target, *query = NULL;
    size_t pl = h->target_len, ql = 0;
    const char *qm = memchr(path, '?', pl);
    if (qm != NULL) {
        query = qm + 1;
        ql = pl - (size_t)(qm + 1 - path);
        pl = (size_t)(qm - path);
    }
    const char *id = NULL;
    size_t idl = 0;
    bool method_ok;
    r->route = gw_match(h->method, h->method_len, path, pl, &id, &idl, &method_ok);

    /* the SERVER span: "{method} {route}", or "{method}" when nothing matched */
    char name[96];
    int nl;
    bool known_method = false;
    static const char *const methods[] = {"GET", "POST", "PUT", "DELETE", "HEAD", "PATCH",
                                          "OPTIONS", "CONNECT", "TRACE"};
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (h->method_len == strlen(methods[i]) && memcmp(h->method, methods[i], h->method_len) == 0)
            known_method = true;
    const char *mname = known_method ? NULL : "_OTHER";
    if (r->route != GW_R_NONE)
        nl = snprintf(name, sizeof name, "%.*s %s", mname ? 6 : (int)h->method_len,
                      mname ? mname : h->method, gw_route_tmpl[r->route]);
    else
        nl = snprintf(name, sizeof name, "%.*s", mname ? 6 : (int)h->method_len,
                      mname ? mname : h->method);
    gw_carrier_t car;
    car.h = hd;
    car.n = h->num_headers;
    trace_context_t parent;
    int prc = trace_extract(gw_carrier_get, &car, &parent, r->tracestate, sizeof r->tracestate, NULL);
    trace_span_start(&r->span, &gw_scope, name, (size_t)nl, TRACE_KIND_SERVER,
                     prc == 0 ? &parent : NULL);
    trace_span_set_str_n(&r->span, "http.request.method", 19, mname ? mname : h->method,
                         mname ? 6 : h->method_len);
    if (mname)
        trace_span_set_str_n(&r->span, "http.request.method_original", 28, h->method, h->method_len);
    if (r->route != GW_R_NONE)
        trace_span_set_str(&r->span, "http.route", gw_route_tmpl[r->route]);
    trace_span_set_str_n(&r->span, "url.path", 8, path, pl);
    if (query != NULL)
        trace_span_set_str_n(&r->span, "url.query", 9, query, ql);
    trace_span_set_str(&r->span, "url.scheme", "http");
    trace_span_set_str(&r->span, "network.protocol.version", h->minor_version ? "1.1" : "1.0");
    trace_span_set_str(&r->span, "client.address", c->addr);
    const http1c_header_t *ua = http1c_find_header(hd, h->num_headers, "user-agent");
    if (ua != NULL)
        trace_span_set_str_n(&r->span, "user_agent.original", 19, ua->value, ua->value_len);
    /* Authorization is never recorded. */

    if (r->route == GW_R_NONE) {
        gw_req_error(r, 404, "no such route");
        return;
    }
    if (!method_ok) {
        static const char e405[] = "{\"error\":\"method not allowed\"}";
        gw_req_finish(r, 405, "application/json", e405, sizeof e405 - 1,
                      r->route == GW_R_ORDER_LIST ? "Allow: GET, POST\r\n" : "Allow: GET\r\n");
        return;
    }
    if (r->route == GW_R_METRICS) {
        gw_metrics_serve(r);
        return;
    }
    char retry[48];
    unsigned wait = gw_limiter_take(&gw->rl_addr, c->addr, strlen(c->addr), now);
    if (wait) {
        gw->rate_limited++;
        snprintf(retry, sizeof retry, "Retry-After: %u\r\n", wait);
        static const char e429a[] = "{\"error\":\"rate limit exceeded for this client address\"}";
        gw_req_finish(r, 429, "application/json", e429a, sizeof e429a - 1, retry);
        return;
    }
    if (r->route == GW_R_HEALTH && !gw->health_upstreams) {
        static const char ok[] = "{\"status\":\"ok\"}";
        gw_req_finish(r, 200, "application/json", ok, sizeof ok - 1, NULL);
        return;
    }
    if (r->route == GW_R_HEALTH) {
        Grpc__Health__V1__HealthCheckRequest hq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
        hq.service = (char *)""; /* protobuf-c's field is char *, never written */
        uint8_t buf[16];
        size_t n = grpc__health__v1__health_check_request__pack(&hq, buf);
        if (grpc_call_unary(gw->user_ch, "/grpc.health.v1.Health/Check", buf, n, false,
                            gw->upstream_ns, NULL, 0, gw_on_health_user, r) == 0)
            r->pending++;
        else
            r->health[0] = 0;
        if (grpc_call_unary(gw->order_ch, "/grpc.health.v1.Health/Check", buf, n, false,
                            gw->upstream_ns, NULL, 0, gw_on_health_order, r) == 0)
            r->pending++;
        else
            r->health[1] = 0;
        gw_health_done(r);
        return;
    }
    const char *why = NULL;
    if (gw_auth(gw, http1c_find_header(hd, h->num_headers, "authorization"), r->user, &why) < 0) {
        size_t len;
        char *b = gw_error_json(why, &len);
        gw_req_finish(r, 401, "application/json", b, len, "WWW-Authenticate: Bearer\r\n");
        free(b);
        return;
    }
    trace_span_set_str(&r->span, "enduser.id", r->user);
    wait = gw_limiter_take(&gw->rl_user, r->user, strlen(r->user), now);
    if (wait) {
        gw->rate_limited++;
        snprintf(retry, sizeof retry, "Retry-After: %u\r\n", wait);
        /* the length from the literal: a hand count (44) once cut the closing brace */
        static const char e429u[] = "{\"error\":\"rate limit exceeded for this user\"}";
        gw_req_finish(r, 429, "application/json", e429u, sizeof e429u - 1, retry);
        return;
    }
    switch (r->route) {
    case GW_R_ORDER_CREATE: {
        const http1c_header_t *ik = http1c_find_header(hd, h->num_headers, "idempotency-key");
        if (ik != NULL) {
            if (ik->value_len == 0 || ik->value_len >= sizeof r->idem) {
                gw_req_error(r, 400, "Idempotency-Key must be 1..128 characters");
                return;
            }
            memcpy(r->idem, ik->value, ik->value_len);
            r->idem[ik->value_len] = '\0';
        }
        if (gw_parse_order(r, body, blen, &why) < 0) {
            gw_req_error(r, 400, why);
            return;
        }
        if (strcmp(r->c_user, r->user) != 0) {
            gw_req_error(r, 403, "user_id must be the authenticated user");
            return;
        }
        Shop__V1__GetUserRequest uq = SHOP__V1__GET_USER_REQUEST__INIT;
        uq.user_id = r->c_user;
        gw_call(r, gw->user_ch, "/shop.v1.UserService/GetUser", &uq.base, NULL, 0,
                gw_on_check_user);
        return;
    }
    case GW_R_ORDER_GET: {
        if (!gw_id_ok(id, idl)) {
            gw_req_error(r, 400, "order id must be 1..64 characters [A-Za-z0-9._-]");
            return;
        }
        memcpy(r->path_id, id, idl);
        r->path_id[idl] = '\0';
        Shop__V1__GetOrderRequest q = SHOP__V1__GET_ORDER_REQUEST__INIT;
        q.id = r->path_id;
        gw_call(r, gw->order_ch, "/shop.v1.OrderService/GetOrder", &q.base, NULL, 0,
                gw_on_get_order);
        return;
    }
    case GW_R_ORDER_LIST: {
        const char *v = NULL;
        size_t vl = 0;
        if (query == NULL || !gw_query_get(query, ql, "user_id", &v, &vl)) {
            gw_req_error(r, 400, "user_id query parameter is required");
            return;
        }
        if (!gw_id_ok(v, vl)) {
            gw_req_error(r, 400, "user_id must be 1..64 characters [A-Za-z0-9._-]");
            return;
        }
        if (vl != strlen(r->user) || memcmp(v, r->user, vl) != 0) {
            gw_req_error(r, 403, "user_id must be the authenticated user");
            return;
        }
        memcpy(r->path_id, v, vl);
        r->path_id[vl] = '\0';
        char tok[GW_ID_MAX * 4 + 1] = "";
        const char *pt = NULL;
        size_t ptl = 0;
        if (gw_query_get(query, ql, "page_token", &pt, &ptl)) {
            if (ptl >= sizeof tok) {
                gw_req_error(r, 400, "page_token is too long");
                return;
            }
            memcpy(tok, pt, ptl);
            tok[ptl] = '\0';
        }
        Shop__V1__ListOrdersRequest q = SHOP__V1__LIST_ORDERS_REQUEST__INIT;
        q.user_id = r->path_id;
        q.page_token = tok;
        gw_call(r, gw->order_ch, "/shop.v1.OrderService/ListOrders", &q.base, NULL, 0, gw_on_list);
        return;
    }
    case GW_R_USER_GET: {
        if (!gw_id_ok(id, idl)) {
            gw_req_error(r, 400, "user id must be 1..64 characters [A-Za-z0-9._-]");
            return;
        }
        if (idl != strlen(r->user) || memcmp(id, r->user, idl) != 0) {
            gw_req_error(r, 403, "a user may read only their own record");
            return;
        }
        memcpy(r->path_id, id, idl);
        r->path_id[idl] = '\0';
        Shop__V1__GetUserRequest q = SHOP__V1__GET_USER_REQUEST__INIT;
        q.user_id = r->path_id;
        gw_call(r, gw->user_ch, "/shop.v1.UserService/GetUser", &q.base, NULL, 0, gw_on_get_user);
        return;
    }
    default:
        fprintf(stderr, GW_NAME ": unknown route %d\n", (int)r->route);
        abort();
    }
}
