/*
 * services/gateway/gateway.c - the API gateway: HTTP/1.1 JSON API on the
 * core io_uring loop, JWT (HS256) authentication, token-bucket rate limits,
 * a SERVER span per request, gRPC calls to user-svc and order-svc.
 *
 * Usage:
 *   gateway [--config FILE]            serve (prints "gateway listening on ADDR:PORT")
 *   gateway --check-config [--config FILE]
 *   gateway --token USER_ID [--config FILE]   print a bearer token for USER_ID
 *   curl -H "Authorization: Bearer $(gateway --token user123)" \
 *        -d '{"user_id":"user123","product_id":"prod456","quantity":2,"amount":99.99}' \
 *        http://127.0.0.1:8080/api/orders
 *
 * HTTP/1.1 (RFC 9112): keep-alive and pipelining (requests are answered one
 * at a time, in order; bytes of later requests wait in the connection's
 * buffer), Content-Length bodies only (Transfer-Encoding: chunked is 411,
 * any other coding 501), Expect: 100-continue (100 sent once the head is
 * accepted, or the final status at once when it is not).  Limits from
 * [gateway]: head size and header count (431), body (413), read timeout from
 * a request's first byte (408), idle keep-alive timeout, connections (503).
 * Every error is a JSON {"error": "..."} and every response carries a
 * traceparent header.  The request head parser is core/http1_client.h's
 * http1c_parse_request (pure, fuzzed by tests/fuzz/fuzz_http1_request.c).
 *
 * Limits, admitted: one loop thread; the loop has no read pause, so a
 * pipelining client that never reads its answers is cut off when its
 * unanswered bytes pass the buffer (head + body limit + 4 KiB), not slowed.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <time.h>

#include <jansson.h>
#include <jwt.h>

#include "config.h"
#include "core.h"
#include "grpc.h"
#include "http1_client.h"
#include "loop.h"
#include "shop_proto.h"

#define GW_NAME "gateway"
#define GW_ID_MAX 64u
#define GW_INBUF_SLACK 4096u

/* Set when loop_run returned: calls failed by grpc_channel_free then must
 * not touch connections (the loop freed them). */
static bool gw_loop_done;

static const trace_scope_t gw_scope = TRACE_SCOPE("shop-trace/gateway", "0.1.0");

/* ------------------------------------------------------------- routes */

/* X(id, method, route template) - the span name is "{method} {route}"
 * (the method column documents the route; gw_match decides). */
#define GW_ROUTE_MAP(X)                                                                        \
    X(ORDER_CREATE, "POST", "/api/orders")                                                     \
    X(ORDER_GET, "GET", "/api/orders/{id}")                                                    \
    X(ORDER_LIST, "GET", "/api/orders")                                                        \
    X(USER_GET, "GET", "/api/users/{id}")                                                      \
    X(HEALTH, "GET", "/api/health")                                                            \
    X(METRICS, "GET", "/metrics")                                                              \
    X(NONE, "", "")

typedef enum {
#define GW__ROUTE_ENUM(id, m, r) GW_R_##id,
    GW_ROUTE_MAP(GW__ROUTE_ENUM)
#undef GW__ROUTE_ENUM
    GW_R__COUNT
} gw_route_t;

static const char *const gw_route_tmpl[] = {
#define GW__ROUTE_T(id, m, r) r,
    GW_ROUTE_MAP(GW__ROUTE_T)
#undef GW__ROUTE_T
};

/* Status codes counted in /metrics; others fall into "other". */
static const int gw_codes[] = {100, 200, 201, 400, 401, 403, 404, 405, 408, 409, 411, 413, 417,
                               429, 431, 500, 501, 503, 504, 505, 0};
#define GW_NCODES (sizeof gw_codes / sizeof gw_codes[0])
static const double gw_buckets_ms[] = {1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000};
#define GW_NBUCKETS (sizeof gw_buckets_ms / sizeof gw_buckets_ms[0])

/* -------------------------------------------------------------- structs */

typedef struct st_gw_bucket_t {
    uint64_t hash;     /* key hash; 0 = empty slot */
    uint64_t last_ns;  /* last refill (monotonic) */
    double tokens;     /* 0..burst */
} gw_bucket_t;

/* Token buckets in a 4-way set-associative table: bounded memory, the least
 * recently refilled entry of a full set is evicted (it then starts full, a
 * lenience admitted for keys that collide on 64 bits or get evicted). */
typedef struct st_gw_limiter_t {
    gw_bucket_t *slots;
    uint64_t mask;      /* sets - 1 */
    double rate;        /* tokens per second; 0 = off */
    double burst;
} gw_limiter_t;

typedef struct st_gw_t gw_t;
typedef struct st_gw_conn_t gw_conn_t;
typedef struct st_gw_req_t gw_req_t;

struct st_gw_conn_t {
    gw_t *gw;
    gw_conn_t *prev, *next; /* gw->conn_list: every connection not yet closing */
    loop_conn_t *lc;
    char *in;            /* received, unanswered bytes */
    size_t in_len;       /* in_len <= in_cap */
    size_t in_cap;
    gw_req_t *req;       /* request being answered (upstream call in flight), or NULL */
    loop_timer_t timer;  /* read timeout while a request arrives, idle timeout between */
    unsigned writes;     /* writes not yet completed */
    bool reading_req;    /* timer is the read timeout of a started request */
    bool sent_continue;  /* 100 Continue sent for the current request */
    bool close_after;    /* close once the queued writes are sent */
    bool closing;        /* loop_conn_close called */
    bool peer_eof;
    bool in_handle;      /* inside gw_handle: a synchronous answer must not re-enter parsing */
    char addr[INET6_ADDRSTRLEN];
};

/* One request: lives from its head parsed to its response written (or its
 * connection gone while an upstream call was out: conn == NULL then). */
struct st_gw_req_t {
    gw_conn_t *conn;
    gw_route_t route;
    uint64_t t0;
    int pending;         /* upstream calls in flight */
    bool conn_close;     /* answer with Connection: close */
    char user[GW_ID_MAX + 1];  /* authenticated subject */
    char idem[129];      /* Idempotency-Key */
    char path_id[GW_ID_MAX + 1];
    Shop__V1__CreateOrderRequest create; /* kept for the CreateOrder after GetUser */
    char c_user[GW_ID_MAX + 1], c_product[GW_ID_MAX + 1];
    int health[2];       /* health: status per upstream, -1 = not answered */
    trace_span_t span;
};

struct st_gw_t {
    config_t *cfg;
    loop_t *loop;
    loop_listener_t *listener;
    grpc_channel_t *user_ch, *order_ch;
    gw_limiter_t rl_user, rl_addr;
    uint64_t upstream_ns;
    size_t max_head, max_body;
    unsigned max_headers;
    uint64_t read_ns, idle_ns;
    uint64_t max_conns, conns;
    const char *secret;
    gw_conn_t *conn_list; /* for shutdown: idle connections close at once */
    bool stopping;
    /* metrics */
    uint64_t req_count[GW_R__COUNT][GW_NCODES];
    uint64_t lat[GW_R__COUNT][GW_NBUCKETS + 1];
    double lat_sum[GW_R__COUNT];
    uint64_t inflight, rate_limited, conns_total, conns_refused, timeouts_408;
};

/* -------------------------------------------------------------- helpers */

static void gw_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void gw_log(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs(GW_NAME ": ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void *gw_xmalloc(size_t n, const char *file, int line)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL) {
        fprintf(stderr, GW_NAME ": out of memory (%zu bytes) at %s:%d\n", n, file, line);
        abort();
    }
    return p;
}
#define GW_MALLOC(n) gw_xmalloc((n), __FILE__, __LINE__)

static const char *gw_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 417: return "Expectation Failed";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

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

static bool gw_streq_ci(const char *a, size_t alen, const char *b)
{
    size_t bl = strlen(b);
    if (alen != bl)
        return false;
    for (size_t i = 0; i < alen; i++) {
        char x = a[i], y = b[i];
        if (x >= 'A' && x <= 'Z')
            x = (char)(x + 32);
        if (y >= 'A' && y <= 'Z')
            y = (char)(y + 32);
        if (x != y)
            return false;
    }
    return true;
}

/* An id in a path or query: 1..64 bytes of [A-Za-z0-9._-]. */
static bool gw_id_ok(const char *s, size_t n)
{
    if (n == 0 || n > GW_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

static uint64_t gw_hash(const char *p, size_t n, uint64_t seed)
{
    uint64_t h = 1469598103934665603ull ^ seed; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 1099511628211ull;
    }
    return h ? h : 1;
}

/* ---------------------------------------------------------- rate limits */

static int gw_limiter_init(gw_limiter_t *l, uint64_t entries, int64_t rate, int64_t burst)
{
    l->slots = calloc(entries, sizeof *l->slots);
    if (l->slots == NULL)
        return -ENOMEM;
    l->mask = entries / 4 - 1;
    l->rate = (double)rate;
    l->burst = (double)burst;
    return 0;
}

/* Takes one token for key.  Returns 0, or the seconds to wait (>= 1). */
static unsigned gw_limiter_take(gw_limiter_t *l, const char *key, size_t klen, uint64_t now)
{
    if (l->rate <= 0)
        return 0;
    uint64_t h = gw_hash(key, klen, 0);
    gw_bucket_t *set = &l->slots[(h & l->mask) * 4], *b = NULL, *old = &set[0];
    for (int i = 0; i < 4; i++) {
        if (set[i].hash == h) {
            b = &set[i];
            break;
        }
        if (set[i].last_ns < old->last_ns)
            old = &set[i];
    }
    if (b == NULL) {
        b = old; /* an empty slot has last_ns 0, so it is chosen first */
        b->hash = h;
        b->tokens = l->burst;
        b->last_ns = now;
    }
    double t = b->tokens + (double)(now - b->last_ns) / 1e9 * l->rate;
    b->tokens = t > l->burst ? l->burst : t;
    b->last_ns = now;
    if (b->tokens >= 1.0) {
        b->tokens -= 1.0;
        return 0;
    }
    double wait = (1.0 - b->tokens) / l->rate;
    unsigned s = (unsigned)wait;
    return s < (double)wait ? s + 1 : (s ? s : 1);
}

/* ------------------------------------------------------------------ JWT */

/* Verifies "Bearer <jwt>" (HS256 with the configured key, exp required and
 * in the future, sub an id).  Returns 0 and the subject, or -1 with why. */
static int gw_auth(gw_t *gw, const http1c_header_t *hdr, char *sub, const char **why)
{
    if (hdr == NULL) {
        *why = "missing bearer token";
        return -1;
    }
    if (hdr->value_len < 8 || !gw_streq_ci(hdr->value, 7, "bearer ") || hdr->value_len > 4096) {
        *why = "authorization must be a bearer token";
        return -1;
    }
    char tok[4097];
    memcpy(tok, hdr->value + 7, hdr->value_len - 7);
    tok[hdr->value_len - 7] = '\0';
    jwt_t *j = NULL;
    if (jwt_decode(&j, tok, (const unsigned char *)gw->secret, (int)strlen(gw->secret)) != 0 ||
        j == NULL) {
        *why = "invalid token";
        return -1;
    }
    int rc = -1;
    if (jwt_get_alg(j) != JWT_ALG_HS256) {
        *why = "token algorithm must be HS256";
        goto out;
    }
    errno = 0;
    long exp = jwt_get_grant_int(j, "exp");
    if (errno != 0) {
        *why = "token has no exp";
        goto out;
    }
    if ((long long)exp <= (long long)time(NULL)) {
        *why = "token expired";
        goto out;
    }
    const char *s = jwt_get_grant(j, "sub");
    if (s == NULL || !gw_id_ok(s, strlen(s))) {
        *why = "token has no valid sub";
        goto out;
    }
    strcpy(sub, s);
    rc = 0;
out:
    jwt_free(j);
    return rc;
}

static int gw_print_token(const config_t *cfg, const char *user)
{
    if (!gw_id_ok(user, strlen(user))) {
        gw_log("--token: user id must be 1..64 of [A-Za-z0-9._-]");
        return 2;
    }
    const char *key = config_str(cfg, CONFIG_GATEWAY_JWT_SECRET);
    jwt_t *j = NULL;
    char *s = NULL;
    long now = (long)time(NULL);
    if (jwt_new(&j) != 0 || jwt_add_grant(j, "sub", user) != 0 ||
        jwt_add_grant_int(j, "iat", now) != 0 ||
        jwt_add_grant_int(j, "exp", now + (long)config_int(cfg, CONFIG_GATEWAY_TOKEN_TTL)) != 0 ||
        jwt_set_alg(j, JWT_ALG_HS256, (const unsigned char *)key, (int)strlen(key)) != 0 ||
        (s = jwt_encode_str(j)) == NULL) {
        gw_log("jwt: cannot make a token");
        jwt_free(j);
        return 1;
    }
    printf("%s\n", s);
    free(s);
    jwt_free(j);
    return 0;
}

/* -------------------------------------------------------- amount parsing */

/* Finds the raw text of top-level member `key` in a JSON object that
 * jansson already accepted (so the syntax is known good; only escapes in
 * member names need care).  Returns the value's start and length, or NULL. */
static const char *gw_json_skip_ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}
static const char *gw_json_skip_string(const char *p, const char *e)
{
    p++; /* opening quote */
    while (p < e && *p != '"')
        p += (*p == '\\') ? 2 : 1;
    return p < e ? p + 1 : e;
}
static const char *gw_json_skip_value(const char *p, const char *e)
{
    if (p < e && *p == '"')
        return gw_json_skip_string(p, e);
    int depth = 0;
    while (p < e) {
        char c = *p;
        if (c == '"') {
            p = gw_json_skip_string(p, e);
            continue;
        }
        if (c == '{' || c == '[')
            depth++;
        else if (c == '}' || c == ']') {
            if (depth == 0)
                return p;
            depth--;
            if (depth == 0)
                return p + 1;
        } else if (c == ',' && depth == 0)
            return p;
        p++;
    }
    return p;
}
static const char *gw_json_member_raw(const char *body, size_t len, const char *key, size_t *vlen)
{
    const char *p = body, *e = body + len;
    p = gw_json_skip_ws(p, e);
    if (p >= e || *p != '{')
        return NULL;
    p++;
    size_t klen = strlen(key);
    for (;;) {
        p = gw_json_skip_ws(p, e);
        if (p >= e || *p != '"')
            return NULL;
        /* decode the member name (escapes: \uXXXX below 0x80 and the simple ones) */
        char name[72];
        size_t n = 0;
        bool fits = true;
        const char *q = p + 1;
        while (q < e && *q != '"') {
            char c = *q++;
            if (c == '\\' && q < e) {
                char x = *q++;
                if (x == 'u' && e - q >= 4) {
                    char hex[5] = {q[0], q[1], q[2], q[3], 0};
                    long v = strtol(hex, NULL, 16);
                    q += 4;
                    c = v < 0x80 ? (char)v : '\x01';
                } else {
                    c = x == 'n' ? '\n' : x == 't' ? '\t' : x == 'r' ? '\r' : x == 'b' ? '\b'
                        : x == 'f' ? '\f' : x;
                }
            }
            if (n < sizeof name)
                name[n++] = c;
            else
                fits = false;
        }
        p = q < e ? q + 1 : e;
        p = gw_json_skip_ws(p, e);
        if (p >= e || *p != ':')
            return NULL;
        p = gw_json_skip_ws(p + 1, e);
        const char *v = p;
        p = gw_json_skip_value(p, e);
        if (fits && n == klen && memcmp(name, key, klen) == 0) {
            const char *ve = p;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t' || ve[-1] == '\n' || ve[-1] == '\r'))
                ve--;
            *vlen = (size_t)(ve - v);
            return v;
        }
        p = gw_json_skip_ws(p, e);
        if (p >= e || *p != ',')
            return NULL;
        p++;
    }
}

/* "99.99" -> 9999: a JSON number with at most two decimals, > 0, no
 * exponent, integer part of at most 13 digits.  Exact: no floating point.
 * Returns 0, or -1 with the reason. */
static int gw_parse_cents(const char *s, size_t n, int64_t *out, const char **why)
{
    size_t i = 0;
    if (n > 0 && s[0] == '-') {
        *why = "amount must be > 0";
        return -1;
    }
    int64_t v = 0;
    size_t ip = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9') {
        v = v * 10 + (s[i] - '0');
        i++;
        if (++ip > 13) {
            *why = "amount is too large";
            return -1;
        }
    }
    if (ip == 0) {
        *why = "amount must be a number";
        return -1;
    }
    int fd = 0;
    if (i < n && s[i] == '.') {
        i++;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            if (++fd > 2) {
                *why = "amount must have at most two decimal places";
                return -1;
            }
            v = v * 10 + (s[i] - '0');
            i++;
        }
    }
    if (i != n) {
        *why = "amount must be a plain decimal number (no exponent)";
        return -1;
    }
    for (; fd < 2; fd++)
        v *= 10;
    if (v <= 0) {
        *why = "amount must be > 0";
        return -1;
    }
    *out = v;
    return 0;
}

/* ------------------------------------------------------------ responses */

static void gw_conn_close(gw_conn_t *c);
static void gw_conn_process(gw_conn_t *c);

static void gw_on_write(loop_conn_t *lc, int status, void *arg)
{
    (void)status;
    free(arg);
    gw_conn_t *c = loop_conn_data(lc);
    if (c == NULL)
        return;
    c->writes--;
    if (c->writes == 0 && c->close_after && !c->closing)
        gw_conn_close(c);
}

/* Queues raw bytes (copied into one allocation freed by the write callback). */
static void gw_write(gw_conn_t *c, const char *a, size_t alen, const char *b, size_t blen)
{
    if (c->closing)
        return;
    char *buf = GW_MALLOC(alen + blen);
    memcpy(buf, a, alen);
    if (blen)
        memcpy(buf + alen, b, blen);
    struct iovec iov = {buf, alen + blen};
    if (loop_conn_write(c->lc, &iov, 1, gw_on_write, buf) < 0) {
        free(buf);
        c->close_after = true;
        if (c->writes == 0)
            gw_conn_close(c);
        return;
    }
    c->writes++;
}

static int gw_code_idx(int status)
{
    for (size_t i = 0; i + 1 < GW_NCODES; i++)
        if (gw_codes[i] == status)
            return (int)i;
    return (int)GW_NCODES - 1;
}

/* Writes a response with a traceparent of ctx (NULL: none known) and
 * records the metrics.  body is JSON (or Prometheus text for /metrics). */
static void gw_respond_raw(gw_conn_t *c, gw_route_t route, const trace_context_t *ctx,
                           uint64_t t0, bool close, int status, const char *ctype,
                           const char *body, size_t blen, const char *extra)
{
    gw_t *gw = c->gw;
    char tp[64] = "";
    char tph[96] = "";
    if (ctx != NULL && trace_w3c_traceparent_format(ctx, tp) > 0)
        snprintf(tph, sizeof tph, "traceparent: %s\r\n", tp);
    if (close)
        c->close_after = true;
    char head[512];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s%s%s\r\n",
                     status, gw_reason(status), ctype, blen, tph, extra ? extra : "",
                     c->close_after ? "Connection: close\r\n" : "");
    gw_write(c, head, (size_t)n, body, blen);
    gw->req_count[route][gw_code_idx(status)]++;
    double ms = (double)(loop_now_ns() - t0) / 1e6;
    size_t b = 0;
    while (b < GW_NBUCKETS && ms > gw_buckets_ms[b])
        b++;
    gw->lat[route][b]++;
    gw->lat_sum[route] += ms;
}

/* {"error": msg} with proper escaping. */
static char *gw_error_json(const char *msg, size_t *len)
{
    json_t *o = json_pack("{s:s}", "error", msg);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (s == NULL) {
        s = strdup("{\"error\":\"internal error\"}");
        if (s == NULL)
            abort();
    }
    *len = strlen(s);
    return s;
}

/* An error for a request that never got a span: a fresh trace id is still
 * returned, so every response carries one. */
static void gw_error_nospan(gw_conn_t *c, int status, const char *msg, bool close)
{
    trace_context_t ctx;
    memset(&ctx, 0, sizeof ctx);
    trace_id_new(ctx.trace_id);
    trace_id_new_span(ctx.span_id);
    size_t len;
    char *b = gw_error_json(msg, &len);
    gw_respond_raw(c, GW_R_NONE, &ctx, loop_now_ns(), close, status, "application/json", b, len,
                   NULL);
    free(b);
}

/* ------------------------------------------------------------- requests */

static void gw_req_finish(gw_req_t *r, int status, const char *ctype, const char *body, size_t blen,
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
    free(r);
    if (c != NULL && !c->closing && !c->close_after && !c->in_handle)
        gw_conn_process(c);
}

static void gw_req_error(gw_req_t *r, int status, const char *msg)
{
    size_t len;
    char *b = gw_error_json(msg, &len);
    gw_req_finish(r, status, "application/json", b, len, NULL);
    free(b);
}

static void gw_req_json(gw_req_t *r, int status, json_t *o, const char *amount_member, int64_t cents)
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

static json_t *gw_order_json(const Shop__V1__Order *o)
{
    json_t *j = json_pack("{s:s,s:s,s:s,s:i,s:I,s:s,s:I,s:I}", "id", o->id, "user_id", o->user_id,
                          "product_id", o->product_id, "quantity", (int)o->quantity, "amount_cents",
                          (json_int_t)o->amount_cents, "status", gw_order_status(o->status),
                          "created_at_ms", (json_int_t)o->created_at_ms, "updated_at_ms",
                          (json_int_t)o->updated_at_ms);
    if (j != NULL && o->failure_reason != NULL && o->failure_reason[0])
        json_object_set_new(j, "failure_reason", json_string(o->failure_reason));
    return j;
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
    json_t *o = gw_order_json(rsp->order);
    json_object_set_new(o, "replayed", json_boolean(rsp->replayed));
    int64_t cents = rsp->order->amount_cents;
    trace_span_set_str(&r->span, "shop.order.id", rsp->order->id);
    shop__v1__create_order_response__free_unpacked(rsp, NULL);
    gw_req_json(r, 201, o, "amount", cents);
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
    json_t *o = gw_order_json(rsp->order);
    int64_t cents = rsp->order->amount_cents;
    shop__v1__get_order_response__free_unpacked(rsp, NULL);
    gw_req_json(r, 200, o, "amount", cents);
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
    json_t *arr = json_array();
    for (size_t i = 0; i < rsp->n_orders; i++) {
        json_t *o = gw_order_json(rsp->orders[i]);
        /* an exact decimal string here: jansson can only emit numbers via double */
        char a[32];
        snprintf(a, sizeof a, "%" PRId64 ".%02" PRId64, rsp->orders[i]->amount_cents / 100,
                 rsp->orders[i]->amount_cents % 100);
        json_object_set_new(o, "amount", json_string(a));
        json_array_append_new(arr, o);
    }
    json_t *o = json_pack("{s:o,s:s}", "orders", arr, "next_page_token",
                          rsp->next_page_token ? rsp->next_page_token : "");
    shop__v1__list_orders_response__free_unpacked(rsp, NULL);
    gw_req_json(r, 200, o, NULL, 0);
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

static void gw_metrics(gw_req_t *r)
{
    gw_t *gw = r->conn->gw;
    size_t cap = 65536, n = 0;
    char *b = GW_MALLOC(cap);
#define GW_P(...)                                                                                  \
    do {                                                                                           \
        int k_ = snprintf(b + n, cap - n, __VA_ARGS__);                                            \
        if (k_ > 0 && (size_t)k_ < cap - n)                                                        \
            n += (size_t)k_;                                                                       \
    } while (0)
    GW_P("# HELP gateway_requests_total HTTP requests answered, by route and status.\n"
         "# TYPE gateway_requests_total counter\n");
    for (int rt = 0; rt < GW_R__COUNT; rt++)
        for (size_t i = 0; i < GW_NCODES; i++) {
            if (gw->req_count[rt][i] == 0)
                continue;
            char code[8];
            if (gw_codes[i])
                snprintf(code, sizeof code, "%d", gw_codes[i]);
            else
                strcpy(code, "other");
            GW_P("gateway_requests_total{route=\"%s\",code=\"%s\"} %" PRIu64 "\n",
                 rt == GW_R_NONE ? "unmatched" : gw_route_tmpl[rt], code, gw->req_count[rt][i]);
        }
    GW_P("# HELP gateway_request_duration_ms Time from a request's head to its response.\n"
         "# TYPE gateway_request_duration_ms histogram\n");
    for (int rt = 0; rt < GW_R__COUNT; rt++) {
        uint64_t cum = 0;
        const char *name = rt == GW_R_NONE ? "unmatched" : gw_route_tmpl[rt];
        for (size_t i = 0; i <= GW_NBUCKETS; i++) {
            cum += gw->lat[rt][i];
            if (i < GW_NBUCKETS)
                GW_P("gateway_request_duration_ms_bucket{route=\"%s\",le=\"%g\"} %" PRIu64 "\n",
                     name, gw_buckets_ms[i], cum);
            else
                GW_P("gateway_request_duration_ms_bucket{route=\"%s\",le=\"+Inf\"} %" PRIu64 "\n",
                     name, cum);
        }
        GW_P("gateway_request_duration_ms_sum{route=\"%s\"} %.3f\n", name, gw->lat_sum[rt]);
        GW_P("gateway_request_duration_ms_count{route=\"%s\"} %" PRIu64 "\n", name, cum);
    }
    GW_P("# TYPE gateway_requests_in_flight gauge\ngateway_requests_in_flight %" PRIu64 "\n",
         gw->inflight);
    GW_P("# TYPE gateway_rate_limited_total counter\ngateway_rate_limited_total %" PRIu64 "\n",
         gw->rate_limited);
    GW_P("# TYPE gateway_connections_open gauge\ngateway_connections_open %" PRIu64 "\n",
         gw->conns);
    GW_P("# TYPE gateway_connections_total counter\ngateway_connections_total %" PRIu64 "\n",
         gw->conns_total);
    GW_P("# TYPE gateway_connections_refused_total counter\n"
         "gateway_connections_refused_total %" PRIu64 "\n", gw->conns_refused);
#undef GW_P
    gw_req_finish(r, 200, "text/plain; version=0.0.4", b, n, NULL);
    free(b);
}

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

typedef struct {
    const http1c_header_t *h;
    size_t n;
} gw_carrier_t;

static const char *gw_carrier_get(void *carrier, const char *name, size_t *vlen)
{
    gw_carrier_t *c = carrier;
    const http1c_header_t *h = http1c_find_header(c->h, c->n, name);
    if (h == NULL)
        return NULL;
    *vlen = h->value_len;
    return h->value;
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
static void gw_handle(gw_conn_t *c, const http1c_head_t *h, const http1c_header_t *hd,
                      const char *body, size_t blen)
{
    gw_t *gw = c->gw;
    uint64_t now = loop_now_ns();
    gw_req_t *r = GW_MALLOC(sizeof *r);
    memset(r, 0, offsetof(gw_req_t, span));
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
    gw_carrier_t car = {hd, h->num_headers};
    trace_context_t parent;
    char ts[512];
    int prc = trace_extract(gw_carrier_get, &car, &parent, ts, sizeof ts, NULL);
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
        gw_req_finish(r, 405, "application/json", "{\"error\":\"method not allowed\"}", 30,
                      r->route == GW_R_ORDER_LIST ? "Allow: GET, POST\r\n" : "Allow: GET\r\n");
        return;
    }
    if (r->route == GW_R_METRICS) {
        gw_metrics(r);
        return;
    }
    char retry[48];
    unsigned wait = gw_limiter_take(&gw->rl_addr, c->addr, strlen(c->addr), now);
    if (wait) {
        gw->rate_limited++;
        snprintf(retry, sizeof retry, "Retry-After: %u\r\n", wait);
        gw_req_finish(r, 429, "application/json",
                      "{\"error\":\"rate limit exceeded for this client address\"}", 55, retry);
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
        gw_req_finish(r, 429, "application/json",
                      "{\"error\":\"rate limit exceeded for this user\"}", 44, retry);
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

/* ----------------------------------------------------------- connections */

static void gw_on_timer(loop_t *loop, loop_timer_t *t, void *arg);

static void gw_arm(gw_conn_t *c, bool reading)
{
    gw_t *gw = c->gw;
    c->reading_req = reading;
    loop_timer_start(gw->loop, &c->timer, reading ? gw->read_ns : gw->idle_ns, 0, gw_on_timer, c);
}

static void gw_on_close(loop_conn_t *lc, void *data)
{
    (void)lc;
    gw_conn_t *c = data;
    c->gw->conns--;
    free(c->in);
    free(c);
}

static void gw_conn_close(gw_conn_t *c)
{
    if (c->closing)
        return;
    c->closing = true;
    if (c->prev)
        c->prev->next = c->next;
    else
        c->gw->conn_list = c->next;
    if (c->next)
        c->next->prev = c->prev;
    loop_timer_stop(c->gw->loop, &c->timer);
    if (c->req != NULL) { /* an upstream call is out: the request lives on alone */
        c->req->conn = NULL;
        c->req = NULL;
        c->gw->inflight--;
    }
    loop_conn_close(c->lc, gw_on_close); /* pending writes end -ECANCELED first */
}

static void gw_on_timer(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    gw_conn_t *c = arg;
    if (c->closing || c->req != NULL)
        return;
    if (c->reading_req && c->in_len > 0) {
        c->gw->timeouts_408++;
        gw_error_nospan(c, 408, "request not received in time", true);
        c->in_len = 0;
        return;
    }
    gw_conn_close(c); /* idle keep-alive connection */
}

/* Parses and answers requests from the buffer while no upstream call is
 * out.  Each answered request's bytes are dropped from the buffer. */
static void gw_conn_process(gw_conn_t *c)
{
    gw_t *gw = c->gw;
    while (!c->closing && !c->close_after && c->req == NULL) {
        if (c->in_len == 0) {
            if (c->peer_eof) {
                gw_conn_close(c);
                return;
            }
            gw_arm(c, false);
            return;
        }
        if (!c->reading_req)
            gw_arm(c, true);
        http1c_head_t h;
        http1c_header_t hd[257];
        size_t lim = c->in_len < gw->max_head ? c->in_len : gw->max_head;
        int n = http1c_parse_request(c->in, lim, &h, hd, gw->max_headers);
        if (n == -2) {
            if (c->in_len >= gw->max_head) {
                gw_error_nospan(c, 431, "request line and headers too large", true);
                return;
            }
            if (c->peer_eof) {
                gw_conn_close(c);
                return;
            }
            return; /* wait for more */
        }
        if (n == -1) {
            /* too many headers, or a bad message? */
            http1c_head_t h2;
            if (gw->max_headers < 256 && http1c_parse_request(c->in, lim, &h2, hd, 256) > 0)
                gw_error_nospan(c, 431, "too many header fields", true);
            else
                gw_error_nospan(c, 400, "malformed request", true);
            return;
        }
        if (h.minor_version != 0 && h.minor_version != 1) {
            gw_error_nospan(c, 505, "only HTTP/1.0 and HTTP/1.1 are served", true);
            return;
        }
        if (h.minor_version == 1 && http1c_find_header(hd, h.num_headers, "host") == NULL) {
            gw_error_nospan(c, 400, "Host header is required in HTTP/1.1", true);
            return;
        }
        if (h.chunked) {
            gw_error_nospan(c, 411, "chunked request bodies are not accepted: send Content-Length",
                            true);
            return;
        }
        if (http1c_find_header(hd, h.num_headers, "transfer-encoding") != NULL) {
            gw_error_nospan(c, 501, "transfer codings are not supported", true);
            return;
        }
        size_t body = h.content_length > 0 ? (size_t)h.content_length : 0;
        if (h.content_length > (int64_t)gw->max_body) {
            gw_error_nospan(c, 413, "request body too large", true);
            return;
        }
        if (c->in_len < (size_t)n + body) {
            const http1c_header_t *ex = http1c_find_header(hd, h.num_headers, "expect");
            if (ex != NULL && !c->sent_continue) {
                if (!gw_streq_ci(ex->value, ex->value_len, "100-continue")) {
                    gw_error_nospan(c, 417, "unsupported Expect", true);
                    return;
                }
                static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                gw_write(c, cont, sizeof cont - 1, NULL, 0);
                c->sent_continue = true;
            }
            if (c->peer_eof) {
                gw_conn_close(c);
                return;
            }
            return; /* the body is still coming */
        }
        loop_timer_stop(gw->loop, &c->timer);
        c->reading_req = false;
        c->sent_continue = false;
        size_t total = (size_t)n + body;
        /* handle with views into c->in; the request's bytes are dropped
         * after it (gw_handle copies what outlives it) */
        c->in_handle = true;
        gw_handle(c, &h, hd, c->in + n, body);
        c->in_handle = false;
        if (c->closing)
            return;
        memmove(c->in, c->in + total, c->in_len - total);
        c->in_len -= total;
    }
}

static void gw_on_read(loop_conn_t *lc, ssize_t n, const void *buf, void *data)
{
    gw_conn_t *c = data;
    if (c == NULL || c->closing)
        return;
    if (n <= 0) {
        c->peer_eof = true;
        if (c->req == NULL && c->writes == 0)
            gw_conn_close(c);
        else if (c->req == NULL)
            c->close_after = true;
        return;
    }
    (void)lc;
    if (c->close_after)
        return; /* answering with close: further bytes are ignored */
    if (c->in_len + (size_t)n > c->in_cap) {
        if (c->req != NULL || c->in_len >= c->gw->max_head + c->gw->max_body) {
            /* pipelined bytes past the buffer while an answer is pending */
            gw_conn_close(c);
            return;
        }
        /* keep what fits: the parser answers 431/413 from it */
        n = (ssize_t)(c->in_cap - c->in_len);
    }
    memcpy(c->in + c->in_len, buf, (size_t)n);
    c->in_len += (size_t)n;
    if (c->req == NULL)
        gw_conn_process(c);
}

static void gw_on_accept(loop_listener_t *l, loop_conn_t *lc, void *arg)
{
    (void)l;
    gw_t *gw = arg;
    gw_conn_t *c = GW_MALLOC(sizeof *c);
    memset(c, 0, sizeof *c);
    c->gw = gw;
    c->lc = lc;
    c->in_cap = gw->max_head + gw->max_body + GW_INBUF_SLACK;
    c->in = GW_MALLOC(c->in_cap);
    loop_timer_init(&c->timer);
    loop_conn_set_data(lc, c);
    c->next = gw->conn_list;
    if (c->next)
        c->next->prev = c;
    gw->conn_list = c;
    gw->conns++;
    gw->conns_total++;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    strcpy(c->addr, "unknown");
    if (getpeername(loop_conn_fd(lc), (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, c->addr, sizeof c->addr);
        else if (ss.ss_family == AF_INET6)
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, c->addr, sizeof c->addr);
    }
    int one = 1;
    setsockopt(loop_conn_fd(lc), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (gw->conns > gw->max_conns || gw->stopping) {
        gw->conns_refused++;
        gw_error_nospan(c, 503, gw->stopping ? "shutting down" : "too many connections", true);
        return;
    }
    if (loop_conn_read_start(lc, gw_on_read) < 0) {
        gw_conn_close(c);
        return;
    }
    gw_arm(c, false);
}

/* ------------------------------------------------------------------ main */

static int gw_split_addr(const char *s, char *ip, size_t cap, uint16_t *port)
{
    const char *colon = strrchr(s, ':');
    if (colon == NULL || (size_t)(colon - s) >= cap || colon == s)
        return -EINVAL;
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end != '\0' || p < 1 || p > 65535)
        return -EINVAL;
    size_t n = (size_t)(colon - s);
    if (s[0] == '[' && n >= 2 && s[n - 1] == ']') { /* [v6]:port */
        memcpy(ip, s + 1, n - 2);
        ip[n - 2] = '\0';
    } else {
        memcpy(ip, s, n);
        ip[n] = '\0';
    }
    *port = (uint16_t)p;
    return 0;
}

static void gw_on_signal(loop_t *loop, int signo, void *arg)
{
    gw_t *gw = arg;
    if (gw->stopping) {
        gw_log("second signal %d: stopping now", signo);
        loop_stop(loop);
        return;
    }
    gw_log("signal %d: graceful shutdown", signo);
    gw->stopping = true;
    gw->listener = NULL;
    loop_shutdown(loop, loop_now_ns() + 10ull * 1000000000ull, NULL);
    /* idle keep-alive connections go now; busy ones answer with
     * Connection: close and go after their answer */
    for (gw_conn_t *c = gw->conn_list, *next; c != NULL; c = next) {
        next = c->next;
        if (c->req == NULL && c->in_len == 0 && c->writes == 0)
            gw_conn_close(c);
        else if (c->req != NULL)
            c->req->conn_close = true;
    }
}

static void gw_log_line(void *u, const char *s)
{
    (void)u;
    gw_log("config: %s", s);
}

static void gw_usage(void)
{
    fprintf(stderr, "usage: gateway [--config FILE] [--check-config] [--token USER_ID]\n");
}

int main(int argc, char **argv)
{
    const char *cfg_path = NULL, *token_user = NULL;
    bool check = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            cfg_path = argv[++i];
        else if (strcmp(argv[i], "--check-config") == 0)
            check = true;
        else if (strcmp(argv[i], "--token") == 0 && i + 1 < argc)
            token_user = argv[++i];
        else if (strcmp(argv[i], "--help") == 0) {
            gw_usage();
            return 0;
        } else {
            gw_usage();
            return 2;
        }
    }
    gw_t *gw = calloc(1, sizeof *gw);
    if (gw == NULL)
        return 1;
    char err[512];
    int rc = config_load(cfg_path, &gw->cfg, err, sizeof err);
    if (rc < 0) {
        gw_log("%s", err);
        free(gw);
        return 2;
    }
    const config_t *cfg = gw->cfg;
    char uip[64], oip[64];
    uint16_t uport, oport;
    if (gw_split_addr(config_str(cfg, CONFIG_GATEWAY_USER_SVC), uip, sizeof uip, &uport) < 0 ||
        gw_split_addr(config_str(cfg, CONFIG_GATEWAY_ORDER_SVC), oip, sizeof oip, &oport) < 0) {
        gw_log("[gateway] user_svc/order_svc must be IP:PORT (got %s, %s)",
               config_str(cfg, CONFIG_GATEWAY_USER_SVC), config_str(cfg, CONFIG_GATEWAY_ORDER_SVC));
        config_free(gw->cfg);
        free(gw);
        return 2;
    }
    if (check) {
        printf("ok\n");
        config_free(gw->cfg);
        free(gw);
        return 0;
    }
    if (token_user != NULL) {
        rc = gw_print_token(cfg, token_user);
        config_free(gw->cfg);
        free(gw);
        return rc;
    }
    signal(SIGPIPE, SIG_IGN);
    config_dump(cfg, gw_log_line, NULL);
    gw->secret = config_str(cfg, CONFIG_GATEWAY_JWT_SECRET);
    gw->upstream_ns = (uint64_t)config_int(cfg, CONFIG_GATEWAY_UPSTREAM_TIMEOUT) * 1000000ull;
    gw->max_head = (size_t)config_int(cfg, CONFIG_GATEWAY_MAX_HEADER_BYTES);
    gw->max_body = (size_t)config_int(cfg, CONFIG_GATEWAY_MAX_BODY);
    gw->max_headers = (unsigned)config_int(cfg, CONFIG_GATEWAY_MAX_HEADERS);
    gw->read_ns = (uint64_t)config_int(cfg, CONFIG_GATEWAY_READ_TIMEOUT) * 1000000ull;
    gw->idle_ns = (uint64_t)config_int(cfg, CONFIG_GATEWAY_IDLE_TIMEOUT) * 1000000ull;
    gw->max_conns = (uint64_t)config_int(cfg, CONFIG_GATEWAY_MAX_CONNS);
    uint64_t entries = (uint64_t)config_int(cfg, CONFIG_GATEWAY_RATE_ENTRIES);
    if (gw_limiter_init(&gw->rl_user, entries, config_int(cfg, CONFIG_GATEWAY_RATE_USER),
                        config_int(cfg, CONFIG_GATEWAY_BURST_USER)) < 0 ||
        gw_limiter_init(&gw->rl_addr, entries, config_int(cfg, CONFIG_GATEWAY_RATE_ADDR),
                        config_int(cfg, CONFIG_GATEWAY_BURST_ADDR)) < 0) {
        gw_log("rate limiter tables: out of memory");
        return 1;
    }

    config_trace_t store;
    trace_options_t to;
    memset(&to, 0, sizeof to); /* config_trace_options sets only its own fields */
    if (config_trace_options(cfg, &store, &to, err, sizeof err) < 0) {
        gw_log("tracing: %s", err);
        return 2;
    }
    to.service_name = GW_NAME;
    to.service_version = "0.1.0";
    to.create_ring = true;
    if ((rc = trace_init(&to, err, sizeof err)) < 0) {
        gw_log("trace_init: %s", err);
        return 1;
    }
    rc = 1;
    if (loop_create(&gw->loop, NULL) < 0) {
        gw_log("loop_create failed");
        goto out_trace;
    }
    if (grpc_channel_new(gw->loop, uip, uport, NULL, &gw->user_ch, err, sizeof err) < 0 ||
        grpc_channel_new(gw->loop, oip, oport, NULL, &gw->order_ch, err, sizeof err) < 0) {
        gw_log("grpc_channel_new: %s", err);
        goto out_loop;
    }
    loop_signal(gw->loop, SIGTERM, gw_on_signal, gw);
    loop_signal(gw->loop, SIGINT, gw_on_signal, gw);
    const char *addr = config_str(cfg, CONFIG_GATEWAY_ADDRESS);
    int lrc = loop_listen(gw->loop, addr, (uint16_t)config_int(cfg, CONFIG_GATEWAY_PORT), 4096,
                          gw_on_accept, gw, &gw->listener);
    if (lrc < 0) {
        gw_log("listen %s:%" PRId64 ": %s", addr, config_int(cfg, CONFIG_GATEWAY_PORT),
               strerror(-lrc));
        goto out_ch;
    }
    printf(GW_NAME " listening on %s:%u\n", addr, (unsigned)loop_listener_port(gw->listener));
    fflush(stdout);
    int lr = loop_run(gw->loop);
    gw_loop_done = true;
    gw_log("stopped (loop_run %d): %" PRIu64 " connections, %" PRIu64 " refused, %" PRIu64
           " rate-limited, %" PRIu64 " read timeouts",
           lr, gw->conns_total, gw->conns_refused, gw->rate_limited, gw->timeouts_408);
    rc = 0;
out_ch:
    if (gw->user_ch)
        grpc_channel_free(gw->user_ch);
    if (gw->order_ch)
        grpc_channel_free(gw->order_ch);
out_loop:
    loop_destroy(gw->loop);
out_trace:
    trace_shutdown();
    free(gw->rl_user.slots);
    free(gw->rl_addr.slots);
    config_free(gw->cfg);
    free(gw);
    return rc;
}
