/*
 * core/grpc.h - gRPC over HTTP/2 (nghttp2) on the core io_uring loop.
 *
 * One client serves both the exporter (OTLP TraceService/Export) and the
 * services.  This header is the contract; core/grpc.c and core/h2.c implement
 * it.  A server side joins it later (issue: the core runtime).
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

#endif
