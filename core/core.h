/*
 * core/core.h - the one public header of core/: the tracing API used by every
 * process of shop-trace.
 *
 * What it offers:
 *  - ids: 128-bit trace ids and 64-bit span ids from a per-thread xoshiro256++
 *    generator, never all-zero, fork-safe (trace_id_*);
 *  - W3C Trace Context (traceparent, tracestate) and W3C Baggage parsers and
 *    formatters that never allocate (trace_w3c_*), plus inject/extract through
 *    a header callback so HTTP/1.1 headers and gRPC metadata share one path;
 *  - samplers from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG
 *    (trace_sampler_*) and the OTel span limits from OTEL_*_LIMIT variables;
 *  - spans: the caller owns the storage (trace_span_t, on the stack or in a
 *    request pool).  Attributes, events and links are copied at once into the
 *    span's inline buffer in the ring record's wire layout, so span end is one
 *    clock read, one ring reserve, one memcpy and one commit: no lock, no
 *    allocation, no system call (trace_span_*);
 *  - the span record format (docs/SPAN_RECORD.md) and the producer resource
 *    blob, with decoders safe on untrusted shared memory (span_record_*).
 *
 * Usage:
 *   static const trace_scope_t scope = TRACE_SCOPE("shop.gateway", "0.1.0");
 *   char err[256];
 *   trace_options_t o = {.service_name = "gateway", .create_ring = true};
 *   if (trace_init(&o, err, sizeof err) != 0) { fprintf(stderr, "%s\n", err); exit(1); }
 *   trace_span_t s;
 *   trace_span_start(&s, &scope, "GET /api/health", 15, TRACE_KIND_SERVER, parent);
 *   trace_span_set_str(&s, "http.request.method", "GET");
 *   trace_span_set_int(&s, "http.response.status_code", 200);
 *   trace_span_end(&s);
 *   trace_shutdown();
 *
 * Threads: every function is thread-safe except trace_init/trace_shutdown
 * (call them once, before starting and after joining worker threads).  A
 * trace_span_t belongs to one thread at a time.
 *
 * Return convention: 0 (or a length/count) on success, -errno on failure;
 * parsers return -1 for bad input (STYLE.md).
 */
#ifndef SHOP_CORE_CORE_H
#define SHOP_CORE_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ring.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ codes */

#define TRACE_ID_SIZE 16u     /* bytes of a trace id */
#define TRACE_SPAN_ID_SIZE 8u /* bytes of a span id */
#define TRACE_FLAG_SAMPLED 0x01u

/* W3C Trace Context (https://www.w3.org/TR/trace-context/). */
#define TRACE_TRACEPARENT_LEN 55u     /* "00-<32 hex>-<16 hex>-<2 hex>" */
#define TRACE_TRACESTATE_MEMBERS_MAX 32u
#define TRACE_TRACESTATE_MAX 512u     /* bytes we propagate (spec: at least 512) */
/* W3C Baggage (https://www.w3.org/TR/baggage/#limits). */
#define TRACE_BAGGAGE_MEMBERS_MAX 64u
#define TRACE_BAGGAGE_BYTES_MAX 8192u

/* Ring defaults: the one place the default geometry is defined.  The config
 * file (core/config, later) overrides them; ring_geometry_check() bounds them. */
#define TRACE_RING_NAME_DEFAULT "/shop-trace"
#define TRACE_RING_LANES_DEFAULT 64u
#define TRACE_RING_LANE_SIZE_DEFAULT (1024u * 1024u)
#define TRACE_RING_MAX_RECORD_DEFAULT (16u * 1024u)
/* Bytes of max_record taken by the ring's own per-record header; a span
 * record is cut to max_record - this so a reserve never fails for size. */
#define TRACE_RING_RECORD_OVERHEAD RING_RECORD_HEADER

/* Bytes of a span's inline record buffer (header + items).  A compile-time
 * constant so trace_span_t can live on the stack; what does not fit is
 * dropped and counted.  4 KiB holds ~40 typical attributes and some events. */
#ifndef TRACE_SPAN_BUF_SIZE
#define TRACE_SPAN_BUF_SIZE 4096u
#endif

/* OTel span limits defaults (SDK spec "Span Limits"). */
#define TRACE_LIMIT_DEFAULT 128u
#define TRACE_LIMIT_UNLIMITED UINT32_MAX

/* Span kind: the OTLP numbers. */
typedef enum {
    TRACE_KIND_UNSPECIFIED = 0,
    TRACE_KIND_INTERNAL = 1,
    TRACE_KIND_SERVER = 2,
    TRACE_KIND_CLIENT = 3,
    TRACE_KIND_PRODUCER = 4,
    TRACE_KIND_CONSUMER = 5,
} trace_kind_t;

/* Status code: the OTLP numbers. */
typedef enum {
    TRACE_STATUS_UNSET = 0,
    TRACE_STATUS_OK = 1,
    TRACE_STATUS_ERROR = 2,
} trace_status_t;

/* Attribute value types; the numbers are the record's wire values. */
typedef enum {
    TRACE_ATTR_STRING = 1,
    TRACE_ATTR_BOOL = 2,
    TRACE_ATTR_INT = 3,
    TRACE_ATTR_DOUBLE = 4,
    TRACE_ATTR_STRING_ARRAY = 5,
    TRACE_ATTR_BOOL_ARRAY = 6,
    TRACE_ATTR_INT_ARRAY = 7,
    TRACE_ATTR_DOUBLE_ARRAY = 8,
} trace_attr_type_t;

typedef enum {
    TRACE_SAMPLER_ALWAYS_ON,
    TRACE_SAMPLER_ALWAYS_OFF,
    TRACE_SAMPLER_TRACEIDRATIO,
    TRACE_SAMPLER_PARENTBASED_ALWAYS_ON,
    TRACE_SAMPLER_PARENTBASED_ALWAYS_OFF,
    TRACE_SAMPLER_PARENTBASED_TRACEIDRATIO,
} trace_sampler_kind_t;

/* Item tags of the span record body (docs/SPAN_RECORD.md). */
#define SPAN_RECORD_VERSION 1u
#define SPAN_RECORD_HEADER_SIZE 80u
#define SPAN_ITEM_NAME 1u
#define SPAN_ITEM_SCOPE 2u
#define SPAN_ITEM_TRACESTATE 3u
#define SPAN_ITEM_STATUS_MSG 4u
#define SPAN_ITEM_ATTR 5u       /* attribute of the span */
#define SPAN_ITEM_EVENT_ATTR 6u /* attribute of the last EVENT */
#define SPAN_ITEM_LINK_ATTR 7u  /* attribute of the last LINK */
#define SPAN_ITEM_EVENT 8u
#define SPAN_ITEM_LINK 9u
/* Record flags (header byte 3). */
#define SPAN_RFLAG_PARENT_REMOTE 0x01u
#define SPAN_RFLAG_TRUNCATED 0x02u
#define SPAN_RFLAG_HAS_PARENT 0x04u
#define SPAN_RESOURCE_VERSION 1u

/* --------------------------------------------------------------- callbacks */

/* Sets header `name` (lower-case: "traceparent", "tracestate", "baggage") to
 * value[0..vlen) (not NUL-terminated) on the carrier.  Returns 0 or -errno;
 * an error stops trace_inject.  Runs synchronously inside trace_inject;
 * value points into trace_inject's own stack, so a carrier that keeps it past
 * the callback must copy it. */
typedef int (*trace_header_set_cb)(void *carrier, const char *name, const char *value,
                                   size_t vlen);
/* Looks header `name` up (case-insensitively for HTTP/1.1); returns the
 * value and its length in *vlen, or NULL when absent.  The value must stay
 * valid until trace_extract returns. */
typedef const char *(*trace_header_get_cb)(void *carrier, const char *name, size_t *vlen);

/* Optional record sink replacing the ring (tests, benchmarks): receives each
 * finished sampled record.  Runs synchronously inside trace_span_end. */
typedef void (*trace_sink_cb)(void *arg, const void *record, uint32_t len, bool truncated);

/* ----------------------------------------------------------------- structs */

/* A span context.  Public because callers keep it in their own structs
 * (requests, messages).  `tracestate` points to storage the context does not
 * own (a span's buffer or the caller's extract buffer): copy it if it must
 * outlive that storage. */
typedef struct st_trace_context_t {
    uint8_t trace_id[TRACE_ID_SIZE];   /* all-zero = invalid context */
    uint8_t span_id[TRACE_SPAN_ID_SIZE];
    uint8_t flags;          /* W3C trace-flags; bit 0 = sampled */
    bool is_remote;         /* extracted from a carrier */
    uint16_t tracestate_len;
    const char *tracestate; /* normalised W3C tracestate, not NUL-terminated */
} trace_context_t;

/* Instrumentation scope.  Callers define one static per library with
 * TRACE_SCOPE(); it must outlive every span started with it. */
typedef struct st_trace_scope_t {
    const char *name;
    const char *version;
    uint8_t name_len;    /* <= 255 */
    uint8_t version_len; /* <= 255 */
} trace_scope_t;
#define TRACE_SCOPE(n, v) {(n), (v), (uint8_t)(sizeof(n) - 1), (uint8_t)(sizeof(v) - 1)}

/* A length-explicit string. */
typedef struct st_trace_str_t {
    const char *p;
    size_t len;
} trace_str_t;

/* One attribute for the generic setters and for events/links.  Arrays
 * point to `count` elements owned by the caller (copied on use). */
typedef struct st_trace_attr_t {
    const char *key;
    size_t key_len;
    trace_attr_type_t type;
    size_t count; /* elements, arrays only */
    union {
        trace_str_t s;
        bool b;
        int64_t i;
        double d;
        const trace_str_t *sa;
        const bool *ba;
        const int64_t *ia;
        const double *da;
    } v;
} trace_attr_t;

/* OTel span limits.  TRACE_LIMIT_UNLIMITED means no limit. */
typedef struct st_trace_limits_t {
    uint32_t attr_count;       /* OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT, default 128 */
    uint32_t attr_value_len;   /* OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT, chars, default unlimited */
    uint32_t event_count;      /* OTEL_SPAN_EVENT_COUNT_LIMIT, default 128 */
    uint32_t link_count;       /* OTEL_SPAN_LINK_COUNT_LIMIT, default 128 */
    uint32_t event_attr_count; /* OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT, default 128 */
    uint32_t link_attr_count;  /* OTEL_LINK_ATTRIBUTE_COUNT_LIMIT, default 128 */
} trace_limits_t;

/* A sampler.  TraceIdRatioBased compares the lowest 56 bits of the trace id
 * (bytes 9..15, big-endian) with a rejection threshold, as the OTel spec's
 * consistent-probability sampling does: sampled iff R >= (1 - ratio) * 2^56. */
typedef struct st_trace_sampler_t {
    trace_sampler_kind_t kind;
    double ratio;       /* 0..1, ratio kinds only */
    uint64_t threshold; /* (1 - ratio) * 2^56, derived from ratio */
} trace_sampler_t;

/* Options of trace_init.  NULL/0 fields take the environment, then defaults. */
typedef struct st_trace_options_t {
    const char *service_name;        /* OTEL_SERVICE_NAME overrides; default "unknown_service" */
    const char *service_version;     /* default "" (omitted) */
    const char *service_instance_id; /* default "<hostname>-<pid>" */
    const char *deployment_env;      /* deployment.environment.name; default omitted */
    const char *ring_name;           /* default TRACE_RING_NAME_DEFAULT */
    const ring_geometry_t *geometry; /* for create; NULL = the TRACE_RING_*_DEFAULTs */
    bool create_ring;                /* create the ring if absent */
    bool no_ring;                    /* run without a ring (records go to sink or nowhere) */
    const trace_sampler_t *sampler;  /* NULL = OTEL_TRACES_SAMPLER[_ARG], default parentbased_always_on */
    const trace_limits_t *limits;    /* NULL = OTEL_*_LIMIT variables, default 128/unlimited */
    trace_sink_cb sink;              /* optional, replaces the ring */
    void *sink_arg;
} trace_options_t;

/* A span under construction.  Public so callers can provide its storage (no
 * malloc on the span path); fields with a leading underscore are private.
 * Invariant: _len <= _cap <= TRACE_SPAN_BUF_SIZE; _buf[0.._len) is a valid
 * record whose header is completed at end. */
typedef struct st_trace_span_t {
    trace_context_t ctx;       /* this span's context (tracestate points into _buf) */
    uint64_t _t_start;         /* span clock ticks at start (TSC or CLOCK_MONOTONIC ns) */
    uint64_t _wall_start;      /* unix ns at start */
    uint32_t _len;             /* bytes of _buf in use, header included */
    uint32_t _cap;             /* usable bytes of _buf */
    uint32_t _attr_left;       /* span attributes still allowed by the limit */
    uint32_t _event_left;
    uint32_t _link_left;
    uint32_t _vlimit;          /* attribute value length limit (chars) */
    uint32_t _dropped_attrs;
    uint32_t _dropped_events;
    uint32_t _dropped_links;
    uint32_t _sub_off;         /* offset of the last EVENT/LINK item, 0 = none */
    uint32_t _sub_left;        /* attributes still allowed on it */
    uint16_t _nattrs, _nevents, _nlinks;
    uint8_t _recording;        /* sampled and not ended */
    uint8_t _truncated;        /* something was dropped for lack of room */
    uint8_t _status;           /* trace_status_t */
    uint8_t _kind;
    _Alignas(8) uint8_t _buf[TRACE_SPAN_BUF_SIZE];
} trace_span_t;

/* Baggage (W3C): members point into the parsed header (key, properties) and
 * into `_store` (percent-decoded values).  Caller-owned, ~10 KiB. */
typedef struct st_trace_baggage_member_t {
    const char *key;
    const char *value; /* decoded */
    const char *props; /* raw properties after the first ';', without it */
    uint16_t key_len, value_len, props_len;
} trace_baggage_member_t;

typedef struct st_trace_baggage_t {
    uint32_t count;
    uint32_t _store_len;
    trace_baggage_member_t m[TRACE_BAGGAGE_MEMBERS_MAX];
    char _store[TRACE_BAGGAGE_BYTES_MAX];
} trace_baggage_t;

/* A decoded span record: views into the record's bytes (valid while they are). */
typedef struct st_span_record_t {
    uint8_t version, kind, status, rflags;
    uint32_t trace_flags;
    uint8_t trace_id[TRACE_ID_SIZE];
    uint8_t span_id[TRACE_SPAN_ID_SIZE];
    uint8_t parent_span_id[TRACE_SPAN_ID_SIZE]; /* all-zero: root span */
    uint64_t start_ns, end_ns;                  /* unix epoch ns */
    uint32_t dropped_attrs, dropped_events, dropped_links;
    uint16_t n_attrs, n_events, n_links;
    trace_str_t name, tracestate, status_msg, scope_name, scope_version;
    const uint8_t *items; /* body items, for span_record_next() */
    uint32_t items_len;
} span_record_t;

/* One body item.  For ATTR items, `value` is the raw value bytes: string
 * bytes; bool 1 byte; int/double 8 bytes LE; arrays see SPAN_RECORD.md. */
typedef struct st_span_record_item_t {
    uint8_t tag;           /* SPAN_ITEM_* */
    uint8_t type;          /* ATTR items: trace_attr_type_t; LINK: trace flags */
    trace_str_t key;       /* ATTR: key; EVENT: name; LINK: tracestate */
    const uint8_t *value;  /* ATTR: value bytes */
    uint32_t value_len;
    uint32_t count;        /* ATTR arrays: elements; EVENT/LINK: dropped attrs */
    uint64_t time_ns;      /* EVENT */
    const uint8_t *trace_id, *span_id; /* LINK */
} span_record_item_t;

/* Resource of a producer (the lane meta blob). */
typedef struct st_span_resource_t {
    uint16_t n_attrs;
    const uint8_t *items; /* ATTR items, for span_record_next() */
    uint32_t items_len;
} span_resource_t;

/* -------------------------------------------------------------- prototypes */

/* --- init --- */

/* Reads OTEL_* variables (and SHOP_TRACE_CLOCK=tsc|system|auto), sets the
 * span clock up (TSC calibration, ~2 ms, once per process), builds the
 * resource, opens (or creates) the ring.
 * Returns 0, -EINVAL (bad option or environment value; err names the
 * variable and value), -EALREADY, or ring_open's -errno (err says why). */
int trace_init(const trace_options_t *opt, char *err, size_t errlen);
/* Releases the calling thread's lane and every lane still registered, closes
 * the ring.  Threads must have stopped tracing. */
void trace_shutdown(void);
/* The encoded resource of this process (valid between init and shutdown). */
const uint8_t *trace_resource(uint32_t *len);
/* The effective configuration, one line, for the start-up log. */
int trace_describe(char *out, size_t cap);

/* --- ids --- */

/* New random non-zero ids from the calling thread's generator. */
void trace_id_new(uint8_t out[TRACE_ID_SIZE]);
void trace_id_new_span(uint8_t out[TRACE_SPAN_ID_SIZE]);
/* Lower-case hex of n bytes into out[2n] (no NUL). */
void trace_id_hex(const uint8_t *in, size_t n, char *out);
/* Parses 2n lower-case hex chars into n bytes; -1 on any other char. */
int trace_id_unhex(const char *in, size_t n, uint8_t *out);
/* true when some byte of id[0..n) is non-zero. */
bool trace_id_is_valid(const uint8_t *id, size_t n);

/* --- W3C --- */

/* Parses a traceparent header (any version but ff; a future version's extra
 * fields are ignored when they start with '-').  Sets trace id, span id,
 * flags, is_remote=true, tracestate NULL.  Returns 0 or -1 (invalid). */
int trace_w3c_traceparent_parse(const char *s, size_t len, trace_context_t *out);
/* Writes "00-...-...-xx" (55 chars) and a NUL into out[56].  Returns 55, or
 * -EINVAL for an invalid (zero) context. */
int trace_w3c_traceparent_format(const trace_context_t *c, char *out);
/* Validates a tracestate header and writes its normalised form (no OWS, no
 * empty members, ",") into out.  Longer than cap (>= 512 recommended): the
 * spec's truncation (members over 128 bytes go first, then from the right).
 * Returns the length (0 for an empty header), or -1 when the header is
 * invalid (bad key/value, duplicate key, more than 32 members) and must be
 * dropped wholesale. */
int trace_w3c_tracestate_parse(const char *s, size_t len, char *out, size_t cap);
/* Puts key=val at the left of a normalised tracestate (removing the key's
 * old entry; the last member goes if there would be 33).  Returns the new
 * length, or -1 for an invalid key/value, -ENOSPC when out is too small. */
int trace_w3c_tracestate_set(const char *ts, size_t tslen, const char *key, size_t klen,
                             const char *val, size_t vlen, char *out, size_t cap);
/* Finds key in a normalised tracestate.  Returns 0 and *val, or -ENOENT. */
int trace_w3c_tracestate_get(const char *ts, size_t tslen, const char *key, size_t klen,
                             const char **val, size_t *vlen);
/* Parses a baggage header into b (cleared first).  Keys and properties point
 * into s; values are percent-decoded into b.  Members beyond 64 or past 8192
 * bytes are dropped (spec limits).  Returns the member count, or -1 when the
 * header is malformed (then b is empty). */
int trace_w3c_baggage_parse(const char *s, size_t len, trace_baggage_t *b);
/* Adds (or replaces) a member; key and props must outlive b (value is
 * copied).  Returns 0, -1 invalid key, -ENOSPC over the limits. */
int trace_w3c_baggage_set(trace_baggage_t *b, const char *key, size_t klen, const char *val,
                          size_t vlen, const char *props, size_t plen);
/* Formats b as a header (values percent-encoded), dropping members that would
 * pass 8192 bytes.  Returns the length (NUL written when room), -ENOSPC. */
int trace_w3c_baggage_format(const trace_baggage_t *b, char *out, size_t cap);

/* --- propagation --- */

/* Sets traceparent (+ tracestate when non-empty, + baggage when bag has
 * members) on a carrier.  Works for unsampled contexts (flags 00).  Returns 0,
 * -EINVAL (invalid context), or the callback's error. */
int trace_inject(const trace_context_t *ctx, const trace_baggage_t *bag,
                 trace_header_set_cb set, void *carrier);
/* Reads traceparent/tracestate (and baggage when bag != NULL) from a
 * carrier into *ctx (is_remote = true; tracestate copied into ts[0..tscap)).
 * Returns 0, or -ENOENT when there is no valid traceparent (ctx zeroed: a
 * new trace starts).  An invalid tracestate or baggage is dropped alone. */
int trace_extract(trace_header_get_cb get, void *carrier, trace_context_t *ctx, char *ts,
                  size_t tscap, trace_baggage_t *bag);

/* --- sampler and limits --- */

/* Builds a sampler from OTEL_TRACES_SAMPLER-style name and argument (arg
 * NULL = default ratio 1.0).  Returns 0, or -EINVAL with a message naming
 * OTEL_TRACES_SAMPLER or OTEL_TRACES_SAMPLER_ARG and the value. */
int trace_sampler_parse(const char *name, const char *arg, trace_sampler_t *out, char *err,
                        size_t errlen);
/* The same from the environment (unset: parentbased_always_on). */
int trace_sampler_from_env(trace_sampler_t *out, char *err, size_t errlen);
/* The decision for a new span of trace_id under parent (NULL or invalid =
 * root). */
bool trace_sampler_should_sample(const trace_sampler_t *s, const trace_context_t *parent,
                                 const uint8_t *trace_id);
/* Defaults (128 / unlimited). */
void trace_limits_default(trace_limits_t *l);
/* Defaults overridden by the OTEL_*_LIMIT variables (the span-specific ones
 * win over OTEL_ATTRIBUTE_*).  Returns 0 or -EINVAL naming the variable. */
int trace_limits_from_env(trace_limits_t *l, char *err, size_t errlen);

/* --- spans --- */

/* Starts a span: a new span id; the parent's trace id and tracestate, or a
 * new trace when parent is NULL or invalid; the sampler decides whether it
 * records.  name longer than 1024 bytes is cut.  Never fails. */
void trace_span_start(trace_span_t *s, const trace_scope_t *scope, const char *name,
                      size_t name_len, trace_kind_t kind, const trace_context_t *parent);
/* The generic attribute setter (all types, arrays included). */
void trace_span_set_attr(trace_span_t *s, const trace_attr_t *a);
/* Status: OK is final; ERROR keeps msg; UNSET is ignored (OTel API rules).
 * Inline (OK is a byte store); see the inline defs. */
static inline void trace_span_set_status(trace_span_t *s, trace_status_t code, const char *msg,
                                         size_t msg_len);
/* Adds an event (time_ns 0 = now) with n attributes. */
void trace_span_add_event(trace_span_t *s, const char *name, size_t name_len, uint64_t time_ns,
                          const trace_attr_t *attrs, size_t n);
/* Adds a link to ctx with n attributes (ctx's tracestate is copied). */
void trace_span_add_link(trace_span_t *s, const trace_context_t *ctx, const trace_attr_t *attrs,
                         size_t n);
/* Ends the span and writes its record into the ring (or the sink); unsampled
 * spans write nothing.  A second end is ignored. */
void trace_span_end(trace_span_t *s);
/* Ends the span at end_ns (unix ns; 0 = now) and writes the record into
 * out[0..cap) instead of the ring, cut to cap.  Returns the length, 0 for a
 * span that does not record, -ENOSPC when cap cannot hold even the name. */
int trace_span_end_into(trace_span_t *s, uint64_t end_ns, void *out, size_t cap);
/* Wall-clock now in unix ns: this thread's CLOCK_REALTIME anchor (re-read
 * every 100 ms) plus the TSC (invariant TSC) or CLOCK_MONOTONIC since it.
 * SHOP_TRACE_CLOCK=system forces clock_gettime (docs/ARCHITECTURE.md). */
uint64_t trace_now_ns(void);

/* Slow path of the inline setters (limits, truncation, overflow). */
void trace__attr_slow(trace_span_t *s, const trace_attr_t *a);
/* The same from trace__attr_put's arguments (str/vlen for strings, the
 * value's 8 bytes in bits for scalars). */
void trace__attr_slow_raw(trace_span_t *s, const char *key, size_t klen, trace_attr_type_t type,
                          const char *str, size_t vlen, uint64_t bits);
/* trace_span_set_status for every code but OK. */
void trace__set_status_slow(trace_span_t *s, trace_status_t code, const char *msg,
                            size_t msg_len);
/* memcpy for trace__copy's long case: out of line on purpose, so that the
 * compiler calls libc's memcpy instead of inlining `rep movsq` (which it
 * does for copies whose size it can bound, e.g. a name cut to 1024 bytes,
 * and which costs ~30 cycles to start, more than the copy). */
void trace__copy_long(uint8_t *dst, const void *src, size_t n);

/* --- span record and resource decoding (untrusted input) --- */

/* Validates a whole record (every length, every item, counts) and fills
 * *out with views into buf.  Returns 0, or -1 for bad input. */
int span_record_decode(const void *buf, size_t len, span_record_t *out);
/* The same, and the items it walked stored in items[0..cap) in record
 * order, as span_record_next would return them, so a caller that needs
 * them (the OTLP encoder) walks the record once.  An item is >= 4 bytes:
 * cap = out->items_len / 4 + 1, i.e. (len - SPAN_RECORD_HEADER_SIZE) / 4 + 1,
 * always suffices.  Returns the item count, or -1 for bad input (or a cap
 * too small). */
int span_record_decode_items(const void *buf, size_t len, span_record_t *out,
                             span_record_item_t *items, uint32_t cap);
/* Steps through items (of a decoded record or resource): *off starts at 0.
 * Returns 1 and *it, 0 at the end, -1 for bad input. */
int span_record_next(const uint8_t *items, uint32_t items_len, uint32_t *off,
                     span_record_item_t *it);
/* Element i of an array attribute item (caller checks i < it->count). */
int64_t span_record_array_int(const span_record_item_t *it, uint32_t i);
double span_record_array_double(const span_record_item_t *it, uint32_t i);
bool span_record_array_bool(const span_record_item_t *it, uint32_t i);
/* Next string of a string array: *off starts at 0.  Returns 1, 0 at end, -1. */
int span_record_array_str(const span_record_item_t *it, uint32_t *off, trace_str_t *out);
/* Encodes a resource blob from n attributes into out.  Attributes that do not
 * fit are left out.  Returns the length, or -ENOSPC when cap < 4. */
int span_resource_encode(const trace_attr_t *attrs, size_t n, uint8_t *out, size_t cap);
/* Validates a resource blob.  Returns 0, or -1 for bad input. */
int span_resource_decode(const void *buf, size_t len, span_resource_t *out);

/* ------------------------------------------------------------ inline defs */

/* The span path's helpers and setters are forced inline: with the key (and
 * often the value) a literal, inlining turns each setter into a few stores;
 * out of line (gcc's size heuristic refuses before constants fold) the
 * copies would lose their known lengths. */
#define TRACE__INLINE static inline __attribute__((always_inline))

static inline void trace__le16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void trace__le32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void trace__le64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the span record writer assumes a little-endian host"
#endif

/* Copies n bytes of a span item: short copies (<= 32 bytes: names, keys,
 * most values) as two overlapping pairs of loads and stores, no call. */
TRACE__INLINE void trace__copy(uint8_t *d, const void *src, size_t n)
{
    const uint8_t *s = (const uint8_t *)src;
    if (n <= 16) {
        if (n >= 8) {
            uint64_t a, b;
            memcpy(&a, s, 8);
            memcpy(&b, s + n - 8, 8);
            memcpy(d, &a, 8);
            memcpy(d + n - 8, &b, 8);
        } else if (n >= 4) {
            uint32_t a, b;
            memcpy(&a, s, 4);
            memcpy(&b, s + n - 4, 4);
            memcpy(d, &a, 4);
            memcpy(d + n - 4, &b, 4);
        } else if (n) {
            uint8_t a = s[0], b = s[n / 2], c = s[n - 1];
            d[0] = a;
            d[n / 2] = b;
            d[n - 1] = c;
        }
    } else if (n <= 32) {
        uint64_t a, b, c, e;
        memcpy(&a, s, 8);
        memcpy(&b, s + 8, 8);
        memcpy(&c, s + n - 16, 8);
        memcpy(&e, s + n - 8, 8);
        memcpy(d, &a, 8);
        memcpy(d + 8, &b, 8);
        memcpy(d + n - 16, &c, 8);
        memcpy(d + n - 8, &e, 8);
    } else {
        trace__copy_long(d, s, n);
    }
}

/* Writes one span attribute item of a scalar or string value when the fast
 * path applies (recording, under the count limit, within the value limit,
 * fits the buffer); else the slow path decides.  8-byte item prefix: tag,
 * type, key_len u16, value_len u32 (SPAN_RECORD.md).  Strings come as
 * str/vlen, scalars as their 8 bytes in `bits` (bool: 0/1, vlen 1): no
 * trace_attr_t is built on the fast path (that would cost ~8 stack stores
 * per attribute), only in trace__attr_slow_raw. */
TRACE__INLINE void trace__attr_put(trace_span_t *s, const char *key, size_t klen,
                                   trace_attr_type_t type, const char *str, size_t vlen,
                                   uint64_t bits)
{
    if (!s->_recording)
        return;
    /* Fields read once and written back before the item's byte stores:
     * those may alias them for the compiler, which would otherwise reload
     * them (a store-forwarding wait per attribute on the _len chain). */
    uint32_t len = s->_len, left = s->_attr_left;
    size_t need = 8 + klen + vlen;
    if (__builtin_expect(left == 0 || klen > 0xffff ||
                             (type == TRACE_ATTR_STRING && vlen > s->_vlimit) ||
                             need > (size_t)(s->_cap - len), 0)) {
        trace__attr_slow_raw(s, key, klen, type, str, vlen, bits);
        return;
    }
    s->_len = len + (uint32_t)need;
    s->_attr_left = left - 1;
    s->_nattrs++;
    uint8_t *p = s->_buf + len;
    p[0] = SPAN_ITEM_ATTR;
    p[1] = (uint8_t)type;
    trace__le16(p + 2, (uint16_t)klen);
    trace__le32(p + 4, (uint32_t)vlen);
    trace__copy(p + 8, key, klen);
    if (type == TRACE_ATTR_STRING)
        trace__copy(p + 8 + klen, str, vlen);
    else if (type == TRACE_ATTR_BOOL)
        p[8 + klen] = (uint8_t)bits;
    else
        trace__le64(p + 8 + klen, bits);
}

/* Length-explicit setters: the hot path. */
TRACE__INLINE void trace_span_set_str_n(trace_span_t *s, const char *key, size_t klen,
                                        const char *val, size_t vlen)
{
    trace__attr_put(s, key, klen, TRACE_ATTR_STRING, val, vlen, 0);
}
TRACE__INLINE void trace_span_set_int_n(trace_span_t *s, const char *key, size_t klen, int64_t v)
{
    trace__attr_put(s, key, klen, TRACE_ATTR_INT, NULL, 8, (uint64_t)v);
}
TRACE__INLINE void trace_span_set_double_n(trace_span_t *s, const char *key, size_t klen, double v)
{
    uint64_t bits;
    memcpy(&bits, &v, 8);
    trace__attr_put(s, key, klen, TRACE_ATTR_DOUBLE, NULL, 8, bits);
}
TRACE__INLINE void trace_span_set_bool_n(trace_span_t *s, const char *key, size_t klen, bool v)
{
    trace__attr_put(s, key, klen, TRACE_ATTR_BOOL, NULL, 1, v ? 1 : 0);
}
/* C-string conveniences (strlen of a literal folds at compile time). */
TRACE__INLINE void trace_span_set_str(trace_span_t *s, const char *key, const char *val)
{
    trace_span_set_str_n(s, key, strlen(key), val, strlen(val));
}
TRACE__INLINE void trace_span_set_int(trace_span_t *s, const char *key, int64_t v)
{
    trace_span_set_int_n(s, key, strlen(key), v);
}
TRACE__INLINE void trace_span_set_double(trace_span_t *s, const char *key, double v)
{
    trace_span_set_double_n(s, key, strlen(key), v);
}
TRACE__INLINE void trace_span_set_bool(trace_span_t *s, const char *key, bool v)
{
    trace_span_set_bool_n(s, key, strlen(key), v);
}
static inline void trace_span_set_status(trace_span_t *s, trace_status_t code, const char *msg,
                                         size_t msg_len)
{
    if (code == TRACE_STATUS_OK) { /* final, whatever came before */
        if (s->_recording)
            s->_status = TRACE_STATUS_OK;
        return;
    }
    trace__set_status_slow(s, code, msg, msg_len);
}
static inline bool trace_span_is_recording(const trace_span_t *s) { return s->_recording != 0; }
static inline const trace_context_t *trace_span_context(const trace_span_t *s) { return &s->ctx; }

#ifdef __cplusplus
}
#endif
#endif /* SHOP_CORE_CORE_H */
