/*
 * core/grpc.h - gRPC over HTTP/2 (nghttp2) on the core io_uring loop.
 *
 * One client serves both the exporter (OTLP TraceService/Export) and the
 * services.  This header is the contract; core/grpc.c and core/h2.c implement
 * it; core/grpc_server.c implements the server section at the end.
 *
 * Client model: one grpc_channel_t per peer ("host:port", numeric address),
 * one multiplexed HTTP/2 connection, reconnecting with exponential backoff
 * (1 s initial, x1.6, 120 s max, +-20% jitter, as gRPC's connection backoff);
 * unary calls only.  Every call ends with exactly one callback, on the loop
 * thread, never synchronously inside grpc_call_unary().
 *
 * Errors of the call itself are gRPC status codes (GRPC_STATUS_*), never
 * -errno: a refused connection is UNAVAILABLE, a deadline is
 * DEADLINE_EXCEEDED (enforced locally too), a response over the maximum
 * message size is RESOURCE_EXHAUSTED, a malformed response INTERNAL.
 */
#ifndef SHOP_CORE_GRPC_H
#define SHOP_CORE_GRPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loop.h"

/* Declared by core/core.h (tracing) and protobuf-c; only pointers are used
 * here, so this header does not pull those headers into every user. */
struct st_trace_context_t;
struct st_trace_span_t;
struct ProtobufCMessage;
struct ProtobufCServiceDescriptor;

/* gRPC status codes (grpc/doc/statuscodes.md). */
#define GRPC_STATUS_MAP(X)                                                                         \
    X(OK, 0) X(CANCELLED, 1) X(UNKNOWN, 2) X(INVALID_ARGUMENT, 3) X(DEADLINE_EXCEEDED, 4)          \
    X(NOT_FOUND, 5) X(ALREADY_EXISTS, 6) X(PERMISSION_DENIED, 7) X(RESOURCE_EXHAUSTED, 8)          \
    X(FAILED_PRECONDITION, 9) X(ABORTED, 10) X(OUT_OF_RANGE, 11) X(UNIMPLEMENTED, 12)              \
    X(INTERNAL, 13) X(UNAVAILABLE, 14) X(DATA_LOSS, 15) X(UNAUTHENTICATED, 16)

typedef enum {
#define GRPC__STATUS_ENUM(name, num) GRPC_STATUS_##name = num,
    GRPC_STATUS_MAP(GRPC__STATUS_ENUM)
#undef GRPC__STATUS_ENUM
} grpc_status_t;

#define GRPC_MAX_MESSAGE_DEFAULT (4u * 1024u * 1024u) /* bytes, both directions */

typedef struct st_grpc_channel_t grpc_channel_t;

/* One metadata entry (ASCII value, or binary when the key ends in "-bin":
 * the library base64-encodes/decodes those). */
typedef struct st_grpc_md_t {
    const char *key;
    const uint8_t *value;
    size_t value_len;
} grpc_md_t;

typedef struct st_grpc_channel_opts_t {
    const char *authority;     /* :authority; default "host:port" */
    bool tls;                  /* TLS (OpenSSL, ALPN h2) instead of plaintext h2c */
    const char *tls_ca_file;   /* PEM; NULL = system store */
    const char *tls_cert_file; /* client certificate (mTLS), optional */
    const char *tls_key_file;
    bool tls_insecure_skip_verify; /* tests only */
    const grpc_md_t *headers;  /* sent on every call (OTEL_EXPORTER_OTLP_HEADERS) */
    size_t n_headers;
    uint32_t max_message;      /* 0 = GRPC_MAX_MESSAGE_DEFAULT */
    uint64_t connect_timeout_ns; /* 0 = 20 s */
    uint64_t keepalive_ns;       /* HTTP/2 PING interval when idle; 0 = off */
} grpc_channel_opts_t;

/* What a finished call reports.  All pointers are valid only during the
 * callback. */
typedef struct st_grpc_result_t {
    grpc_status_t status;
    const char *message;           /* grpc-message, percent-decoded; "" if none */
    const uint8_t *details;        /* grpc-status-details-bin, decoded (a google.rpc.Status) */
    size_t details_len;
    const uint8_t *response;       /* the response message (decompressed), status OK only */
    size_t response_len;
    const grpc_md_t *trailers;     /* every trailer/header received */
    size_t n_trailers;
} grpc_result_t;

typedef void (*grpc_unary_cb)(const grpc_result_t *res, void *arg);

/* Creates a channel to host:port (numeric IPv4/IPv6) on `loop`.  Connects
 * lazily on the first call.  Returns 0 or -EINVAL (bad target/options),
 * -ENOMEM, -errno from TLS set-up (message in err).  Free with
 * grpc_channel_free(), which fails every pending call with CANCELLED. */
int grpc_channel_new(loop_t *loop, const char *host, uint16_t port, const grpc_channel_opts_t *opts,
                     grpc_channel_t **out, char *err, size_t errlen);
void grpc_channel_free(grpc_channel_t *ch);

/* Starts a unary call.  `path` is "/package.Service/Method"; `msg` the
 * serialized request (copied, or compressed with gzip when `gzip` is true and
 * sent with grpc-encoding: gzip); `timeout_ns` (0 = none) is sent as
 * grpc-timeout and enforced locally; `md` extra metadata for this call.
 * Returns 0 (cb will run once), or -EINVAL/-EMSGSIZE/-ENOMEM (cb will not
 * run). */
int grpc_call_unary(grpc_channel_t *ch, const char *path, const uint8_t *msg, size_t msg_len, bool gzip,
                    uint64_t timeout_ns, const grpc_md_t *md, size_t n_md, grpc_unary_cb cb, void *arg);

/* grpc_call_unary() without the copy: msg is NOT copied (unless gzip
 * compresses it at once) and must stay valid and unchanged until cb runs.
 * Its bytes go from msg into the connection's write buffer, the only copy
 * before the kernel's.  For a caller that keeps the message anyway (the
 * exporter keeps its encoded batch for retries).  Returns as
 * grpc_call_unary(). */
int grpc_call_unary_borrowed(grpc_channel_t *ch, const char *path, const uint8_t *msg, size_t msg_len, bool gzip,
                             uint64_t timeout_ns, const grpc_md_t *md, size_t n_md, grpc_unary_cb cb, void *arg);

/* grpc_call_unary() plus an automatic CLIENT span (core/core.h): named
 * "package.Service/Method", child of `parent` (NULL or invalid: a new
 * trace), with rpc.system, rpc.service, rpc.method, server.address,
 * server.port, rpc.grpc.status_code, and status Error with error.type for
 * every non-OK code (semantic conventions v1.37.0).  Its context goes out
 * as traceparent/tracestate metadata.  The span ends when the result is
 * fixed, before cb runs.  grpc_call_unary() itself is untraced: the
 * exporter uses it and must not trace its own exports (a feedback loop).
 * Returns as grpc_call_unary(). */
int grpc_call_unary_traced(grpc_channel_t *ch, const char *path, const uint8_t *msg, size_t msg_len,
                           bool gzip, uint64_t timeout_ns, const grpc_md_t *md, size_t n_md,
                           const struct st_trace_context_t *parent, grpc_unary_cb cb, void *arg);

/* Name of a status code ("UNAVAILABLE"), or "?" */
const char *grpc_status_name(int status);

/* Connection counters for /metrics. */
typedef struct st_grpc_channel_stats_t {
    uint64_t connects, connect_failures, goaways, calls_started, calls_finished, bytes_sent, bytes_received;
    bool connected;
} grpc_channel_stats_t;
void grpc_channel_stats(const grpc_channel_t *ch, grpc_channel_stats_t *out);

/* ------------------------------------------------------------------------
 * Memory-only helpers.  Pure functions: no I/O, no allocation, so they are
 * fuzzed directly (tests/fuzz/fuzz_grpc_frame.c) and usable by a server.
 * Parsers return -1 for bad input and -2 for incomplete input (STYLE.md).
 */

/* One length-prefixed message (gRPC PROTOCOL-HTTP2 "Length-Prefixed-Message":
 * 1 byte compressed flag, 4 bytes big-endian length, message). */
typedef struct st_grpc_frame_t {
    bool compressed;
    const uint8_t *msg; /* points into the parsed buffer */
    uint32_t len;
} grpc_frame_t;

#define GRPC_FRAME_HDR 5u

/* Parses the frame at the start of buf.  Returns the bytes it occupies
 * (5 + len), -1 (flag byte not 0/1), -2 (incomplete), or -3 when len is
 * over max_len (the caller answers RESOURCE_EXHAUSTED). */
long grpc_frame_parse(const uint8_t *buf, size_t len, uint32_t max_len, grpc_frame_t *out);

/* grpc-timeout (TimeoutValue: at most 8 digits, TimeoutUnit H M S m u n).
 * Format writes the largest unit that represents ns exactly, or else
 * rounds up in the smallest unit that fits 8 digits; returns the length
 * (<= 9) or -1 if buflen < 10.  Parse returns 0 and *ns (saturating), or -1. */
int grpc_timeout_format(uint64_t ns, char *buf, size_t buflen);
int grpc_timeout_parse(const char *s, size_t len, uint64_t *ns);

/* Percent-decoding of grpc-message ("%XX"; malformed escapes pass through
 * verbatim, as the spec asks of receivers).  Writes at most outcap bytes
 * plus no terminator; returns the decoded length (always <= len), or -1 if
 * outcap is too small. */
long grpc_percent_decode(const char *in, size_t len, char *out, size_t outcap);

/* Base64 for "-bin" metadata: decode accepts padded and unpadded input,
 * returns the length or -1 (bad character/length, or outcap too small).
 * Encode writes unpadded base64 plus a NUL and returns its length, or -1 if
 * outcap < grpc_base64_encoded_len(len) + 1. */
long grpc_base64_decode(const char *in, size_t len, uint8_t *out, size_t outcap);
size_t grpc_base64_encoded_len(size_t len);
long grpc_base64_encode(const uint8_t *in, size_t len, char *out, size_t outcap);

/* The status a response without grpc-status gets from its HTTP :status
 * (grpc/doc/http-grpc-status-mapping.md): 400 INTERNAL, 401 UNAUTHENTICATED,
 * 403 PERMISSION_DENIED, 404 UNIMPLEMENTED, 429/502/503/504 UNAVAILABLE,
 * anything else UNKNOWN. */
grpc_status_t grpc_status_from_http(int http_status);

/* ------------------------------------------------------------------------
 * Server (core/grpc_server.c).
 *
 * One grpc_server_t serves the methods of one or more protobuf-c service
 * descriptors on listeners of one loop; each accepted connection gets its
 * own nghttp2 server session.  Unary calls only.  Per call the server:
 * checks :method POST and content-type application/grpc* (else HTTP 415,
 * as PROTOCOL-HTTP2 asks), looks "/package.Service/Method" up in the method
 * table (UNIMPLEMENTED if absent), enforces grpc-timeout
 * (DEADLINE_EXCEEDED is sent when it passes, whatever the handler does),
 * reads one Length-Prefixed-Message of at most max_message bytes
 * (RESOURCE_EXHAUSTED past it; INTERNAL for a truncated prefix, a second
 * message, or a body that does not decode), gunzips grpc-encoding: gzip,
 * and starts a SERVER span (below).  Non-OK answers are Trailers-Only.
 *
 * Handler contract: the handler runs on the loop thread, never inside an
 * nghttp2 callback, with the decoded request (protobuf-c message of the
 * method's input type; owned by the call, valid until the reply) and a call
 * context.  It answers exactly once with grpc_server_reply(), at once or
 * later from any loop callback (after its own gRPC/DB calls).  It must
 * reply even when the call was already ended for it (deadline, client
 * cancel, connection lost, shutdown): the reply then only frees the call.
 *
 * Tracing, with no work for the service author: every call with a
 * well-formed path gets a SERVER span "package.Service/Method" whose parent
 * is the incoming traceparent/tracestate metadata, with rpc.system=grpc,
 * rpc.service, rpc.method, server.address and server.port of the listener,
 * rpc.grpc.status_code, and status Error (plus error.type) only for
 * UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE and
 * DATA_LOSS.  Handlers take it as the parent of their own client spans via
 * grpc_server_call_span().
 */

typedef struct st_grpc_server_t grpc_server_t;
typedef struct st_grpc_server_call_t grpc_server_call_t;

/* A method handler; `arg` is the one given to grpc_server_add_service. */
typedef void (*grpc_server_handler_cb)(grpc_server_call_t *call, const struct ProtobufCMessage *req,
                                       void *arg);
/* grpc_server_shutdown() finished: every connection is closed. */
typedef void (*grpc_server_done_cb)(grpc_server_t *srv, void *arg);

typedef struct st_grpc_server_opts_t {
    uint32_t max_message;            /* bytes, both directions; 0 = GRPC_MAX_MESSAGE_DEFAULT */
    uint32_t max_concurrent_streams; /* per connection; 0 = 1000 */
    uint64_t keepalive_ns;           /* PING after this long without received bytes; an
                                      * unanswered PING closes the connection; 0 = off */
} grpc_server_opts_t;

typedef struct st_grpc_server_stats_t {
    uint64_t conns_accepted, conns_open, calls_started, calls_finished, calls_cancelled, bad_requests,
        protocol_errors;
} grpc_server_stats_t;

/* Creates a server on loop.  opts may be NULL.  Free with
 * grpc_server_free().  Errors: -EINVAL, -ENOMEM. */
int grpc_server_new(loop_t *loop, const grpc_server_opts_t *opts, grpc_server_t **out);
/* Adds every method of desc ("/<desc->name>/<method name>") to the table;
 * handlers[i] serves desc->methods[i] (NULL entries answer UNIMPLEMENTED).
 * desc and handlers must outlive the server.  Errors: -EINVAL, -EEXIST
 * (service added twice), -ENOMEM. */
int grpc_server_add_service(grpc_server_t *srv, const struct ProtobufCServiceDescriptor *desc,
                            const grpc_server_handler_cb *handlers, void *arg);
/* Listens on a numeric address (port 0 = ephemeral; *bound_port, if not
 * NULL, gets the port).  Errors: those of loop_listen(). */
int grpc_server_listen(grpc_server_t *srv, const char *ip, uint16_t port, uint16_t *bound_port);
/* Graceful shutdown: listeners close, every connection gets GOAWAY, calls
 * in flight finish; connections close when they have none left.  When
 * grace_ns (0 = none) passes first, the remaining calls are reset
 * (RST_STREAM CANCEL) and their connections closed.  done runs once, on the
 * loop, when no connection is left.  Errors: -EALREADY. */
int grpc_server_shutdown(grpc_server_t *srv, uint64_t grace_ns, grpc_server_done_cb done, void *arg);
/* Closes everything at once (no callback runs afterwards) and frees the
 * server.  Calls a handler still holds stay valid until their reply. */
void grpc_server_free(grpc_server_t *srv);
void grpc_server_stats(const grpc_server_t *srv, grpc_server_stats_t *out);

/* Answers a call: status OK with `response` (a message of the method's
 * output type, packed here; NULL = empty body), or any other status with
 * `message` (percent-encoded on the wire; NULL = none).  Frees the call
 * (with the request) once the answer is sent: `call` is invalid after this
 * returns.  Returns 0, or -ECANCELED when the call had already ended (the
 * call is freed all the same). */
int grpc_server_reply(grpc_server_call_t *call, grpc_status_t status, const char *message,
                      const struct ProtobufCMessage *response);
/* Adds one trailing metadata entry to the answer (key lower-case; "-bin"
 * values are base64-encoded here).  Errors: -EINVAL, -ENOMEM. */
int grpc_server_call_add_trailer(grpc_server_call_t *call, const char *key, const uint8_t *value,
                                 size_t len);
/* The request's custom metadata ("-bin" values decoded; pseudo-headers,
 * content-type, te and grpc-* left out).  Valid until the reply. */
const grpc_md_t *grpc_server_call_metadata(const grpc_server_call_t *call, size_t *n);
/* The first value of key, or NULL. */
const grpc_md_t *grpc_server_call_md_get(const grpc_server_call_t *call, const char *key);
/* CLOCK_MONOTONIC deadline in ns (loop_now_ns() scale), 0 = none. */
uint64_t grpc_server_call_deadline(const grpc_server_call_t *call);
/* True once the call ended without the handler (deadline, cancel, ...). */
bool grpc_server_call_done(const grpc_server_call_t *call);
/* The call's SERVER span (parent for the handler's own spans). */
struct st_trace_span_t *grpc_server_call_span(grpc_server_call_t *call);
/* The raw request message bytes (after gunzip), valid until the reply. */
const uint8_t *grpc_server_call_request_bytes(const grpc_server_call_t *call, size_t *len);

/* Percent-encoding of grpc-message: bytes outside 0x20..0x7e and '%'
 * become "%XX".  Writes a NUL; returns the length, or -1 when outcap is too
 * small (3 * len + 1 always suffices).  Pure, like the helpers above. */
long grpc_percent_encode(const char *in, size_t len, char *out, size_t outcap);

/* Memory-only server connection for the fuzzer and tests: the same
 * nghttp2 session and request handling as an accepted connection, but
 * bytes come from grpc_server_mem_feed() and output is dropped (counted).
 * Handlers run (after each feed) as for a socket.  Errors: -ENOMEM. */
typedef struct st_grpc_server_mem_t grpc_server_mem_t;
int grpc_server_mem_new(grpc_server_t *srv, grpc_server_mem_t **out);
/* Feeds bytes as received from the peer.  Returns 0, or -EPROTO when the
 * session failed (the connection would be closed; further feeds fail). */
int grpc_server_mem_feed(grpc_server_mem_t *m, const uint8_t *buf, size_t len);
/* Bytes the session produced so far (preface SETTINGS, responses, ...). */
size_t grpc_server_mem_output(const grpc_server_mem_t *m);
void grpc_server_mem_free(grpc_server_mem_t *m);

#endif
