/*
 * core/http1_client.h - a small HTTP/1.1 client on the io_uring loop, and
 * the pure HTTP/1.1 message parsers it (and shop-payment-sim) use.
 *
 * One http1c_client_t talks to one target (numeric address and port, no
 * DNS: it would block the loop) through a bounded pool of keep-alive
 * connections.  Each request gets a timeout, a CLIENT span (OpenTelemetry
 * semantic conventions v1.37.0: name "{method}", http.request.method,
 * server.address, server.port, url.full, http.response.status_code,
 * error.type on failure) and a traceparent header from that span.
 *
 * Usage:
 *   http1c_client_t *c;
 *   http1c_opts_t o = {.max_conns = 8, .timeout_ms = 2000};
 *   http1c_client_new(loop, "127.0.0.1", 9099, &o, &c);
 *   http1c_request_t rq = {.method = "POST", .path = "/v1/charges",
 *                          .body = json, .body_len = n, .content_type = "application/json",
 *                          .parent = &server_span->ctx};
 *   http1c_request(c, &rq, on_response, arg);
 *   ...
 *   static void on_response(int err, const http1c_response_t *res, void *arg) {
 *       if (err < 0) { ... http1c_strerror(err) ...; return; }
 *       printf("%d %.*s\n", res->status, (int)res->body_len, res->body);
 *   }
 *
 * ------------------------------------------------------------------------
 * CALLBACK CONTRACT
 *  - Everything runs on the loop's thread.  The response callback never
 *    runs inside http1c_request(); it runs exactly once for every accepted
 *    request (http1c_request returned 0), also on timeout, connection
 *    failure and http1c_client_free (-ECANCELED, run inside the free: the
 *    one synchronous exception, as pg_pool_destroy).
 *  - http1c_client_free() must not be called from a response callback
 *    (defer it to a timer), as kafka_destroy() from its callbacks.
 *  - res and everything it points to (headers, body) are valid during the
 *    callback only.  res is NULL when err < 0.
 *  - A request's bytes (path, headers, body) are copied at once: the
 *    caller's buffers may go away when http1c_request returns.
 *  - A response is complete at its Content-Length, at the end of its
 *    chunked body, or (neither given) at EOF.  After a timeout, a protocol
 *    error or a "Connection: close" the connection is discarded, never
 *    reused.  Requests are not pipelined: one in flight per connection;
 *    requests wait in a FIFO queue when every connection is busy.
 *  - A keep-alive connection the server closed while it sat idle is only
 *    noticed when its EOF arrives.  A request sent on it in between that
 *    got not one byte back is sent once more on a fresh connection when it
 *    is replayable (GET, HEAD, OPTIONS, TRACE, or an Idempotency-Key /
 *    X-Idempotency-Key header, as Go's net/http does); otherwise it fails
 *    with -ECONNRESET.  Idle connections are closed by us after idle_ms.
 * ------------------------------------------------------------------------
 */
#ifndef SHOP_CORE_HTTP1_CLIENT_H
#define SHOP_CORE_HTTP1_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"
#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------ return codes */

/* Errors of a request besides -errno (-ETIMEDOUT, -ECONNREFUSED,
 * -ECONNRESET, -ECANCELED, -ENOMEM).  error.type on the span is the name. */
#define HTTP1C_ERR_MAP(X)                                                                  \
    X(HTTP1C_ERR_PROTO, -2000, "malformed response")        /* bad status line, header, chunk */ \
    X(HTTP1C_ERR_HEADERS_TOO_LARGE, -2001, "response headers too large") /* size or count */   \
    X(HTTP1C_ERR_BODY_TOO_LARGE, -2002, "response body too large")                              \
    X(HTTP1C_ERR_QUEUE_FULL, -2003, "request queue full")   /* from http1c_request only */

typedef enum {
#define HTTP1C__ERR_ENUM(name, val, str) name = (val),
    HTTP1C_ERR_MAP(HTTP1C__ERR_ENUM)
#undef HTTP1C__ERR_ENUM
} http1c_error_t;

/* Parser limits (also the defaults of the client). */
#define HTTP1C_MAX_HEADERS 64u            /* header lines per message */
#define HTTP1C_MAX_HEADER_BYTES 16384u    /* start line + headers + CRLFCRLF */

/* --------------------------------------------------------------- callbacks */

typedef struct st_http1c_client_t http1c_client_t;
typedef struct st_http1c_response_t http1c_response_t;

/* err 0 and res, or err < 0 (HTTP1C_ERR_* or -errno) and res NULL. */
typedef void (*http1c_cb)(int err, const http1c_response_t *res, void *arg);

/* ----------------------------------------------------------------- structs */

/* A header: views into the parsed buffer (not NUL-terminated). */
typedef struct st_http1c_header_t {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} http1c_header_t;

/* A parsed message head (response or request).  Views into the buffer. */
typedef struct st_http1c_head_t {
    int minor_version;        /* HTTP/1.x */
    int status;               /* response: 100..999 */
    const char *reason;       /* response */
    size_t reason_len;
    const char *method;       /* request */
    size_t method_len;
    const char *target;       /* request: origin-form path and query */
    size_t target_len;
    size_t num_headers;       /* headers[0..num_headers) filled */
    int64_t content_length;   /* -1: none */
    bool chunked;             /* Transfer-Encoding: chunked (last coding) */
    bool conn_close;          /* Connection: close, or HTTP/1.0 without keep-alive */
} http1c_head_t;

struct st_http1c_response_t {
    int status;
    const http1c_header_t *headers;
    size_t num_headers;
    const char *body; /* decoded (de-chunked) */
    size_t body_len;
};

typedef struct {
    unsigned max_conns;        /* connections to the target; 0 = 8 */
    unsigned max_queue;        /* requests waiting for a connection; 0 = 1024 */
    uint32_t timeout_ms;       /* default per-request timeout (connect included); 0 = 5000 */
    uint32_t connect_timeout_ms; /* 0 = the request timeout */
    uint32_t idle_ms;          /* idle keep-alive connections close after; 0 = 30000 */
    uint32_t max_header_bytes; /* 0 = HTTP1C_MAX_HEADER_BYTES */
    uint32_t max_body_bytes;   /* 0 = 1 MiB */
} http1c_opts_t;

/* One request.  Only method and path are required. */
typedef struct {
    const char *method;            /* "POST" */
    const char *path;              /* "/v1/charges" (origin-form) */
    const http1c_header_t *headers; /* extra headers; Host, Content-Length and
                                     * traceparent are added here */
    size_t num_headers;
    const char *content_type;      /* NULL = none */
    const void *body;
    size_t body_len;
    uint32_t timeout_ms;           /* 0 = the client's */
    const trace_context_t *parent; /* span parent; NULL = a new trace */
} http1c_request_t;

typedef struct {
    uint64_t requests;   /* completed (any outcome) */
    uint64_t errors;     /* completed with err < 0 */
    uint64_t timeouts;
    uint64_t connects;   /* connections opened */
    uint64_t reused;     /* requests sent on a kept-alive connection */
    uint64_t discarded;  /* connections closed because of an error or timeout */
    uint64_t retries;    /* replayable requests sent again after a stale keep-alive */
} http1c_counters_t;

/* -------------------------------------------------------------- prototypes */

/* Pure parsers (memory only, never allocate, no I/O).
 *
 * Parse a response (or request) head from buf[0..len).  headers has *num
 * slots (at most that many header lines are accepted).  Returns the length
 * of the head including the blank line, -1 for a bad message (or more
 * than *num headers, or a Content-Length that is not a number, or both
 * Content-Length and chunked), -2 when incomplete.  Limits on the total
 * head size are the caller's: -2 with len >= its limit means "too large". */
int http1c_parse_response(const char *buf, size_t len, http1c_head_t *h, http1c_header_t *headers,
                          size_t num);
int http1c_parse_request(const char *buf, size_t len, http1c_head_t *h, http1c_header_t *headers,
                         size_t num);
/* Decodes a complete chunked body at buf[0..len) (trailers skipped) into
 * out[0..cap).  Returns the bytes of buf consumed (through the final CRLF)
 * and *out_len, -1 bad (or decoded body larger than cap), -2 incomplete.
 * Stateless: callers re-run it on the grown buffer (O(n) per call; bodies
 * are bounded by max_body_bytes, so the quadratic worst case is bounded). */
long http1c_decode_chunked(const char *buf, size_t len, char *out, size_t cap, size_t *out_len);
/* First header named `name` (case-insensitive), or NULL. */
const http1c_header_t *http1c_find_header(const http1c_header_t *headers, size_t n, const char *name);

/* Creates a client for ip:port.  opts may be NULL.  Free with
 * http1c_client_free().  Errors: -EINVAL (address), -ENOMEM. */
int http1c_client_new(loop_t *loop, const char *ip, uint16_t port, const http1c_opts_t *opts,
                      http1c_client_t **out);
/* Fails every queued and in-flight request with -ECANCELED (callbacks run
 * inside this call), closes the connections, frees the client. */
void http1c_client_free(http1c_client_t *c);
/* Sends a request (copied).  Errors: -EINVAL (method/path missing or with
 * CR/LF), -ENOMEM, HTTP1C_ERR_QUEUE_FULL; then cb will not run. */
int http1c_request(http1c_client_t *c, const http1c_request_t *rq, http1c_cb cb, void *arg);
void http1c_counters(const http1c_client_t *c, http1c_counters_t *out);
/* A static string for 0, HTTP1C_ERR_* or -errno. */
const char *http1c_strerror(int err);
/* The short error.type name: "timeout", "connection_refused", ... */
const char *http1c_error_type(int err);

#ifdef __cplusplus
}
#endif
#endif
