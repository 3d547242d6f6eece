/*
 * services/gateway/gateway.h - internal header of the API gateway binary:
 * the shared state (gw_t), a connection (gw_conn_t), a request (gw_req_t)
 * and the functions the gateway's modules call across files.
 *
 *   gateway.c     main: options, config, tracing, loop, listener, signals
 *   gw_http.c     HTTP/1.1 connections: buffer, parse, limits, responses
 *   gw_route.c    routes and handlers: span, auth, validation, gRPC calls
 *   gw_auth.c     JWT HS256 bearer tokens (libjwt)
 *   gw_limit.c    token-bucket rate limiter
 *   gw_metrics.c  counters and /metrics
 *   gw_json.c     exact decimal amounts, JSON error bodies
 *
 * Everything runs on the one loop thread: no locks, plain counters.
 */
#ifndef SHOP_GATEWAY_H
#define SHOP_GATEWAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <arpa/inet.h>

#include <jansson.h>

#include "config.h"
#include "core.h"
#include "grpc.h"
#include "http1_client.h"
#include "loop.h"
#include "shop_proto.h"

#define GW_NAME "gateway"
#define GW_ID_MAX 64u        /* ids (users, orders, products): 1..64 of [A-Za-z0-9._-] */
#define GW_INBUF_SLACK 4096u /* connection buffer = max head + max body + this */
#define GW_NCODES 21u        /* statuses counted in /metrics (gw_codes[], gw_metrics.c) */
#define GW_NBUCKETS 12u      /* latency histogram bounds (gw_buckets_ms[], gw_metrics.c) */
#define GW_REQ_FREE_MAX 256u /* requests kept for reuse (gw_t.req_free) */

/* X(id, method, route template) - the span name is "{method} {route}"
 * (the method column documents the route; gw_route.c's matcher decides). */
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

/* Route templates by gw_route_t ("" for GW_R_NONE). */
extern const char *const gw_route_tmpl[];

/* Set when loop_run returned: calls failed by grpc_channel_free then must
 * not touch connections (the loop freed them). */
extern bool gw_loop_done;

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
    bool in_handle;      /* inside gw_route_handle: a synchronous answer must not re-enter parsing */
    char addr[INET6_ADDRSTRLEN];
};

/* One request: lives from its head parsed to its response written (or its
 * connection gone while an upstream call was out: conn == NULL then). */
struct st_gw_req_t {
    gw_t *gw;
    gw_req_t *next_free; /* link of gw->req_free while kept for reuse */
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
    /* the incoming tracestate: an unsampled span's context points here (a
     * recording one copies it), so it must live as long as the request */
    char tracestate[TRACE_TRACESTATE_MAX];
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
    bool health_upstreams; /* /api/health asks user-svc and order-svc */
    gw_req_t *req_free;    /* finished requests kept for reuse (each ~4.5 KiB: a
                            * span buffer), linked by next_free; req_free_n <= GW_REQ_FREE_MAX */
    unsigned req_free_n;
    /* metrics (gw_metrics.c) */
    uint64_t req_count[GW_R__COUNT][GW_NCODES];
    uint64_t lat[GW_R__COUNT][GW_NBUCKETS + 1];
    double lat_sum[GW_R__COUNT];
    uint64_t inflight, rate_limited, conns_total, conns_refused, timeouts_408;
};

/* ---- gateway.c: helpers */

/* "gateway: ..." and a newline on stderr. */
void gw_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* malloc that aborts with file:line when out of memory; free() frees. */
void *gw_xmalloc(size_t n, const char *file, int line);
#define GW_MALLOC(n) gw_xmalloc((n), __FILE__, __LINE__)
/* a (alen bytes) equals the C string b, ASCII case-insensitively. */
bool gw_streq_ci(const char *a, size_t alen, const char *b);
/* An id in a path, query or token: 1..64 bytes of [A-Za-z0-9._-]. */
bool gw_id_ok(const char *s, size_t n);

/* ---- gw_http.c: connections */

/* Listener callback (loop_listen): sets up the connection, or answers 503
 * and closes when over [gateway] max_connections or shutting down. */
void gw_on_accept(loop_listener_t *l, loop_conn_t *lc, void *arg);
/* Parses and answers the buffered requests while no upstream call is out. */
void gw_conn_process(gw_conn_t *c);
/* Starts the asynchronous close (idempotent); a request still waiting for
 * an upstream answer is detached (req->conn = NULL). */
void gw_conn_close(gw_conn_t *c);
/* Queues a||b as one write (copied; the copy is freed when written). */
void gw_write(gw_conn_t *c, const char *a, size_t alen, const char *b, size_t blen);
/* Writes a response (status line, Content-Type, Content-Length, a
 * traceparent of ctx when not NULL, the extra header lines, Connection:
 * close when close or the connection is closing after this) and records
 * the metrics of route.  body is copied. */
void gw_respond_raw(gw_conn_t *c, gw_route_t route, const trace_context_t *ctx, uint64_t t0,
                    bool close, int status, const char *ctype, const char *body, size_t blen,
                    const char *extra);
/* A JSON error for a request that never got a span (bad head, limits,
 * timeouts): a fresh trace id is still returned. */
void gw_error_nospan(gw_conn_t *c, int status, const char *msg, bool close);

/* ---- gw_route.c: requests */

/* Handles one complete request (head parsed, body in the connection's
 * buffer, both valid only during the call).  The request takes c->req
 * until it is answered; it may be answered before this returns. */
void gw_route_handle(gw_conn_t *c, const http1c_head_t *h, const http1c_header_t *hd,
                     const char *body, size_t blen);
/* Answers r (if its connection is still there), ends its span and frees
 * it; then resumes parsing the connection's pipelined requests. */
void gw_req_finish(gw_req_t *r, int status, const char *ctype, const char *body, size_t blen,
                   const char *extra);
/* Frees the requests kept for reuse (at exit). */
void gw_req_free_all(gw_t *gw);
/* gw_req_finish with {"error": msg}. */
void gw_req_error(gw_req_t *r, int status, const char *msg);
/* gw_req_finish with o encoded (o is consumed); amount_member non-NULL
 * appends "amount": cents as an exact decimal. */
void gw_req_json(gw_req_t *r, int status, json_t *o, const char *amount_member, int64_t cents);

/* ---- gw_auth.c */

/* Verifies hdr, "Authorization: Bearer <jwt>" (HS256 with gw->secret, exp
 * required and in the future, sub an id).  Returns 0 with the subject in
 * sub (GW_ID_MAX + 1 bytes), or -1 with why (a static string). */
int gw_auth(gw_t *gw, const http1c_header_t *hdr, char *sub, const char **why);
/* Prints a token for user valid for [gateway] token_ttl seconds.
 * Returns the process exit status (0, 1 libjwt failed, 2 bad user id). */
int gw_auth_print_token(const config_t *cfg, const char *user);

/* ---- gw_limit.c */

/* entries: a power of two >= 4.  rate 0 switches the limiter off.
 * Returns 0 or -ENOMEM; gw_limiter_free releases. */
int gw_limiter_init(gw_limiter_t *l, uint64_t entries, int64_t rate, int64_t burst);
/* Takes one token for key.  Returns 0, or the seconds to wait (>= 1). */
unsigned gw_limiter_take(gw_limiter_t *l, const char *key, size_t klen, uint64_t now);
void gw_limiter_free(gw_limiter_t *l);

/* ---- gw_metrics.c */

/* Counts one answered request of route with status, t0 its start (ns). */
void gw_metrics_record(gw_t *gw, gw_route_t route, int status, uint64_t t0);
/* Answers r with the Prometheus text of every counter. */
void gw_metrics_serve(gw_req_t *r);

/* ---- gw_json.c (pure) */

/* Raw text of top-level member key in a JSON object jansson accepted.
 * Returns its start (into body) and length, or NULL. */
const char *gw_json_member_raw(const char *body, size_t len, const char *key, size_t *vlen);
/* "99.99" -> 9999 exactly (at most two decimals, > 0, no exponent).
 * Returns 0, or -1 with why (a static string). */
int gw_parse_cents(const char *s, size_t n, int64_t *out, const char **why);
/* {"error": msg}, escaped; *len its length.  The caller frees. */
char *gw_error_json(const char *msg, size_t *len);
/* Writes s (NUL-terminated) as a JSON string, quotes included, escaping
 * '"', '\\' and control characters as jansson does.  out must hold
 * 6 * strlen(s) + 2 bytes.  Returns the bytes written (no NUL). */
size_t gw_json_put_str(char *out, const char *s);

#endif
