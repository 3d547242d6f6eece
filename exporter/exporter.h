/*
 * exporter/exporter.h - the one header of exporter/: the modules of the
 * shop-exporter process, which drains the span ring and sends OTLP/gRPC.
 *
 *   settings (settings.c)  [exporter] config keys + OTEL_* variables -> exp_settings_t
 *   otlp     (otlp.c)      span records -> ExportTraceServiceRequest bytes,
 *                          grouped by resource (lane meta) then scope
 *   retry    (retry.c)     pure OTLP retry policy: retryable codes,
 *                          backoff with jitter, RetryInfo, partial success
 *   batch    (batch.c)     BSP queue/batches over the ring consumer, with
 *                          the transport as one function pointer
 *   metrics  (metrics.c)   Prometheus text + HTTP/1.1 GET /metrics on the loop
 *
 * Nothing outside exporter/ and tests/ includes this header (layers in
 * docs/ARCHITECTURE.md).  Return convention: 0 or a count, -errno on
 * failure; functions whose failure a person must read take err/errlen.
 */
#ifndef SHOP_EXPORTER_H
#define SHOP_EXPORTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "core.h"
#include "loop.h"
#include "ring.h"

/* ------------------------------------------------------------------ codes */

#define EXP_SCHEMA_URL "https://opentelemetry.io/schemas/1.37.0"
#define EXP_EXPORT_PATH "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
/* How often the exporter looks at the ring: producers never make a system
 * call, so nothing can wake us; 2 ms bounds the added latency.  Each poll
 * that finds the ring empty doubles the interval, up to
 * EXP_POLL_IDLE_MAX_NS; the first record found brings it back to 2 ms.
 * An idle exporter so wakes 62 times a second, not 500 (each wake-up costs
 * ~20 us of CPU in a VM: 1.2 % of a core at 2 ms).  The first span after a
 * quiet spell waits at most 16 ms more; a lane of 1 MiB (~3,000 spans)
 * fills in 16 ms only beyond ~190,000 spans/s from one thread. */
#define EXP_POLL_NS (2u * 1000u * 1000u)
#define EXP_POLL_IDLE_MAX_NS (16u * 1000u * 1000u)
#define EXP_HEADERS_MAX 16

/* What the retry policy says about one finished Export attempt. */
typedef enum {
    RETRY_DONE = 0,     /* accepted (possibly with partial_success rejections) */
    RETRY_AGAIN,        /* resend after delay_ns */
    RETRY_GIVE_UP,      /* drop with `reason` (REJECTED or EXPIRED) */
} retry_action_t;

/* ---------------------------------------------------------------- structs */

/* Effective exporter settings (times in ns). */
typedef struct st_exp_settings_t {
    char host[64];          /* numeric IPv4/IPv6 of the receiver */
    uint16_t port;
    bool tls;               /* https:// or insecure=false without a scheme */
    char authority[300];    /* host:port as written in the endpoint */
    bool gzip;
    uint64_t timeout_ns;        /* one Export call */
    uint32_t batch_max;         /* OTEL_BSP_MAX_EXPORT_BATCH_SIZE */
    uint32_t queue_max;         /* OTEL_BSP_MAX_QUEUE_SIZE, >= batch_max */
    uint32_t concurrent_max;    /* most Export calls in flight (max_concurrent_exports) */
    uint64_t delay_ns;          /* OTEL_BSP_SCHEDULE_DELAY */
    uint64_t export_timeout_ns; /* OTEL_BSP_EXPORT_TIMEOUT: a batch's whole budget */
    char metrics_addr[64];
    uint16_t metrics_port;
    bool ring_create;           /* ring_attach = create */
    size_t n_headers;
    char header_store[512];     /* NUL-separated keys and values of headers */
    const char *hdr_key[EXP_HEADERS_MAX], *hdr_val[EXP_HEADERS_MAX];
} exp_settings_t;

/* Retry policy: exponential backoff with jitter.  Attempt k (0-based)
 * waits a uniform delay in [d/2, d], d = min(initial * 2^k, max). */
typedef struct st_retry_policy_t {
    uint64_t initial_ns; /* default 1 s */
    uint64_t max_ns;     /* default 30 s */
} retry_policy_t;

/* Outcome of one Export attempt, as the transport reports it. */
typedef struct st_exp_result_t {
    int status;                /* gRPC status code (0 OK) */
    const char *message;       /* grpc-message or "" */
    int64_t retry_delay_ns;    /* RetryInfo.retry_delay, -1 when absent */
    uint64_t rejected;         /* partial_success.rejected_spans (OK only) */
    const char *partial_msg;   /* partial_success.error_message or "" */
} exp_result_t;

/* The policy's verdict. */
typedef struct st_retry_verdict_t {
    retry_action_t action;
    uint64_t delay_ns;         /* RETRY_AGAIN */
    ring_drop_reason_t reason; /* RETRY_GIVE_UP */
} retry_verdict_t;

/* The OTLP encoder: reusable buffers, one batch at a time.  Opaque. */
typedef struct st_otlp_encoder_t otlp_encoder_t;

/* Transport: sends one serialized ExportTraceServiceRequest.  Must call
 * done exactly once, never synchronously inside send (like grpc.h).
 * Returns 0, or -errno when the attempt could not start (done not called;
 * treated as UNAVAILABLE). */
typedef void (*exp_done_cb)(void *arg, const exp_result_t *res);
typedef int (*exp_send_fn)(void *tctx, const uint8_t *msg, size_t len, uint64_t timeout_ns,
                           exp_done_cb done, void *arg);

/* Exporter counters (what /metrics shows beside the ring's). */
#define EXP_BATCH_BUCKETS 10   /* spans per batch: 1,2,4,...,512 and +Inf */
#define EXP_LATENCY_BUCKETS 12 /* seconds: 0.001 ... 30 and +Inf */
/* Bucket upper bounds (metrics.c), shared by the batcher that counts. */
extern const uint32_t exp_batch_bounds[EXP_BATCH_BUCKETS];
extern const double exp_latency_bounds[EXP_LATENCY_BUCKETS];
typedef struct st_exp_stats_t {
    uint64_t exports;             /* Export attempts started */
    uint64_t export_failures;     /* attempts that did not end OK */
    uint64_t retries;             /* attempts after the first of a batch */
    uint64_t batches;             /* batches finished (acked or given up) */
    uint64_t spans_exported;      /* released as exported by this process */
    uint64_t spans_dropped[RING_DROP__COUNT]; /* released as dropped by this process */
    uint64_t partial_rejected;    /* of those, rejected by partial_success */
    uint64_t undecodable;         /* records that were not valid span records */
    uint64_t queue_len;           /* peeked and not released, now */
    uint64_t polls;               /* poll timer firings (idle back-off shows here) */
    uint64_t batch_hist[EXP_BATCH_BUCKETS + 1]; /* cumulative-free counts */
    uint64_t batch_sum;
    uint64_t lat_hist[EXP_LATENCY_BUCKETS + 1];
    double lat_sum;               /* seconds */
    uint64_t lat_count;
} exp_stats_t;

typedef struct st_exp_batcher_t exp_batcher_t;
typedef struct st_metrics_server_t metrics_server_t;

/* ------------------------------------------------------------ prototypes */

/* --- settings --- */

/* Fills *s from a loaded config (and the generic OTEL_EXPORTER_OTLP_*
 * variables, which lose against the _TRACES_ ones and win over the file).
 * Returns 0 or -EINVAL with a message naming the variable or key and value,
 * e.g. "OTEL_BSP_MAX_EXPORT_BATCH_SIZE=4096 is larger than ..."). */
int exp_settings_load(const config_t *c, exp_settings_t *s, char *err, size_t errlen);
/* One line describing *s, for the start-up log. */
int exp_settings_describe(const exp_settings_t *s, char *out, size_t cap);

/* --- otlp --- */

/* Creates an encoder for a ring (lane metadata source; may be NULL for
 * tests that pass resources themselves via otlp_encode's lookup).  Free
 * with otlp_encoder_free.  Returns NULL on out-of-memory. */
otlp_encoder_t *otlp_encoder_new(void);
void otlp_encoder_free(otlp_encoder_t *e);
/* Looks up the resource blob of a lane: returns length and *blob, or < 0. */
typedef int (*otlp_meta_fn)(void *arg, uint32_t lane, const void **blob);
/* Encodes recs[0..n) as one ExportTraceServiceRequest.  Records that are not
 * valid span records are left out and counted in *bad.  *out points into the
 * encoder's buffer, valid until the next otlp_encode or free.  Returns the
 * byte length, or -ENOMEM. */
long otlp_encode(otlp_encoder_t *e, const ring_record_t *recs, size_t n, otlp_meta_fn meta,
                 void *meta_arg, const uint8_t **out, uint64_t *bad);
/* The same request built as a protobuf-c message tree and packed by
 * protobuf-c: the reference otlp_encode (which writes the wire format
 * straight from the records) is tested against.  Same contract; its output
 * buffer is the same one.  Differs only for strings holding a NUL byte
 * (protobuf-c cuts them there). */
long otlp_encode_pbc(otlp_encoder_t *e, const ring_record_t *recs, size_t n, otlp_meta_fn meta,
                     void *meta_arg, const uint8_t **out, uint64_t *bad);
/* Reads partial_success of an ExportTraceServiceResponse.  Returns 0, -1 on
 * malformed bytes.  msg gets error_message (cut to cap). */
int otlp_parse_response(const uint8_t *buf, size_t len, uint64_t *rejected, char *msg, size_t cap);

/* --- retry --- */

void retry_policy_default(retry_policy_t *p);
/* OTLP spec: CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE,
 * UNAVAILABLE, DATA_LOSS are retryable; RESOURCE_EXHAUSTED only with a
 * RetryInfo; everything else is not. */
bool retry_is_retryable(int status, bool has_retry_info);
/* Delay before retry number `attempt` (0 = first retry); rnd is any 64-bit
 * random value (the jitter source, passed in so tests are exact). */
uint64_t retry_backoff_ns(const retry_policy_t *p, unsigned attempt, uint64_t rnd);
/* The verdict on one attempt's result.  now and deadline in ns (same clock);
 * a retry that cannot start before the deadline gives up EXPIRED. */
retry_verdict_t retry_decide(const retry_policy_t *p, const exp_result_t *r, unsigned attempt,
                             uint64_t now_ns, uint64_t deadline_ns, uint64_t rnd);
/* "UNAVAILABLE" for 14 (the gRPC names; "?" for others).  Kept here so
 * the policy needs no gRPC library. */
const char *retry_status_name(int status);
/* Finds a google.rpc.RetryInfo in a google.rpc.Status (grpc-status-details-bin).
 * Returns the delay in ns, -1 when absent or the bytes are malformed. */
int64_t retry_info_delay_ns(const uint8_t *details, size_t len);

/* --- batch --- */

/* Creates the batching processor on `loop` over a ring whose consumer role
 * the caller holds.  Starts polling at once.  Free with exp_batcher_free
 * (after exp_batcher_shutdown has finished). */
int exp_batcher_new(loop_t *loop, ring_t *ring, const exp_settings_t *s, const retry_policy_t *rp,
                    exp_send_fn send, void *tctx, exp_batcher_t **out);
void exp_batcher_free(exp_batcher_t *b);
/* Stops taking records from the ring, exports what is queued within the
 * export timeout, releases what is left as SHUTDOWN, then calls done once
 * (on the loop, never synchronously). */
void exp_batcher_shutdown(exp_batcher_t *b, void (*done)(void *arg), void *arg);
/* The counters. */
void exp_batcher_stats(const exp_batcher_t *b, exp_stats_t *out);
/* Time source, for tests (default loop_now_ns). */
void exp_batcher_set_clock(exp_batcher_t *b, uint64_t (*now)(void));

/* --- transport (transport.c, over core/grpc) --- */

typedef struct st_exp_grpc_t exp_grpc_t;
/* Opens the OTLP/gRPC channel for *s on loop.  Free with exp_grpc_free. */
int exp_grpc_new(loop_t *loop, const exp_settings_t *s, exp_grpc_t **out, char *err, size_t errlen);
void exp_grpc_free(exp_grpc_t *g);
/* An exp_send_fn; tctx is the exp_grpc_t. */
int exp_grpc_send(void *tctx, const uint8_t *msg, size_t len, uint64_t timeout_ns, exp_done_cb done,
                  void *arg);

/* --- metrics --- */

/* Writes the Prometheus text exposition of ring and exporter counters into
 * out[0..cap).  Returns the length, or -ENOSPC. */
long metrics_render(const ring_stats_t *rs, const exp_stats_t *es, char *out, size_t cap);
/* The HTTP/1.1 responder.  `snapshot` fills the two stats at each scrape.
 * Returns 0, or loop_listen's -errno. */
typedef void (*metrics_snapshot_fn)(void *arg, ring_stats_t *rs, exp_stats_t *es);
int metrics_server_new(loop_t *loop, const char *addr, uint16_t port, metrics_snapshot_fn snap,
                       void *arg, metrics_server_t **out);
uint16_t metrics_server_port(const metrics_server_t *m);
/* Closes the listener and every connection. */
void metrics_server_free(metrics_server_t *m);
/* Parses the request line of buf[0..len): returns 200 for GET /metrics,
 * 404 other paths, 405 other methods, -1 bad request, -2 incomplete. */
int metrics_http_route(const char *buf, size_t len);

#endif
