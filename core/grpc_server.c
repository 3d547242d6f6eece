/*
 * core/grpc_server.c - gRPC unary server over nghttp2 on the core loop
 * (contract: the "Server" section of grpc.h).
 *
 * Wire format (grpc/doc/PROTOCOL-HTTP2.md): a request is HEADERS (:method
 * POST, :path /package.Service/Method, content-type application/grpc[+...],
 * optional grpc-timeout, grpc-encoding, custom metadata) and DATA carrying one
 * Length-Prefixed-Message.  An OK answer is HEADERS (:status 200,
 * content-type), DATA, and trailers (grpc-status 0); any other status is
 * Trailers-Only: one HEADERS frame with END_STREAM carrying grpc-status and
 * the percent-encoded grpc-message.  A request that is not gRPC at all
 * (wrong content-type) gets HTTP 415, as the spec asks, so a plain HTTP
 * client never reads the error as a success.
 *
 * Objects.  grpc_server_t owns a sorted method table (binary search by
 * :path), its listeners, and a list of connections.  A connection (conn) is
 * one accepted socket with one nghttp2 server session; a memory connection
 * (grpc_server_mem_t, for the fuzzer) is the same object without a socket.
 * A call lives from the request's HEADERS until both (a) its stream is gone
 * (closed, or the connection went down) and (b) its handler replied (or was
 * never called).  Call states:
 *   RECV     headers/body arriving
 *   QUEUED   request complete and decoded, waiting on the ready list
 *   HANDLER  the handler owns it and must call grpc_server_reply()
 *   ANSWERED the status is fixed (sent, or the stream is gone)
 * `ended` means the status is fixed whatever the state: a deadline, a
 * client cancel or a lost connection ends a call while its handler still
 * holds it; the handler's later reply then only releases it.
 *
 * No callback of ours runs inside an nghttp2 callback: requests completed
 * while nghttp2 parses go to the ready list and a zero-delay timer runs the
 * handlers, so a handler may reply at once (which submits frames) safely.
 * Output is batched as in h2.c: one before-sleep hook drains every
 * session's nghttp2_session_mem_send() into one write per connection.
 *
 * Flow control: nghttp2 sends WINDOW_UPDATEs for received DATA as it is
 * consumed (automatic window update), and feeds our response bodies
 * through a data provider only as the peer's windows allow.  Our receive
 * windows are raised (16 MiB connection, 4 MiB + 5 per stream) so a
 * maximum-size request needs no window round trips.
 *
 * Memory (STYLE.md "Memory ownership").  Call objects (~6 KiB: the span and
 * its 4 KiB record buffer, and a 1 KiB inline arena) are recycled through
 * the server's free list (one server belongs to one loop thread) and only
 * their header fields are zeroed: trace_span_start() needs no zeroed span.
 * Everything a call needs for itself (path, metadata copies, a small
 * request body, the protobuf-c request message via a ProtobufCAllocator,
 * the framed response, trailers) comes from the call's arena: a bump
 * allocator over the inline bytes, spilling into malloc'd chunks that are
 * freed when the call is.  So the hot path allocates nothing from libc
 * once the free lists are warm; nghttp2's own allocations (streams,
 * header buffers, outbound items) go through grpc__mpool_t, per-size-class
 * free lists of the server passed as the sessions' nghttp2_mem.  Response
 * header fields that are literals are submitted with NO_COPY flags.
 *
 * Limits: the method table is a sorted array (O(log n) lookup, O(n) insert
 * at start-up only).  nghttp2's header name/value validation (about 900
 * instructions a call) is kept: nghttp2_option_set_no_http_messaging
 * would also drop its pseudo-header, content-length and stream-state
 * checks, which this file does not repeat.
 */
#include "grpc.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <nghttp2/nghttp2.h>
#include <protobuf-c/protobuf-c.h>

#include "buildconf.h"
#include "core.h"
#include "grpc_int.h"

#define GRPC__S_CONN_WINDOW (16 << 20)
#define GRPC__S_STREAM_WINDOW ((4 << 20) + 5)
#define GRPC__S_MAX_QUEUED (4u << 20) /* bytes queued on a socket before pausing output */
#define GRPC__S_BATCH_MAX (1u << 20)  /* bytes gathered per connection per hook run */
#define GRPC__S_MAX_MD 64u            /* custom metadata entries kept per call */
#define GRPC__S_STREAMS_DEFAULT 1000u
#define GRPC__S_ARENA_INLINE 1024u    /* arena bytes inside the call object */
#define GRPC__S_ARENA_CHUNK 4096u     /* arena spill chunk (bigger requests get their own) */
#define GRPC__S_BODY_ARENA_MAX 512u   /* request bodies above this grow by realloc */
#define GRPC__S_FREE_CALLS_MAX 1024u  /* call objects kept on the free list */
#define GRPC__S_MD_CAP0 8u            /* first metadata array size (doubles to GRPC__S_MAX_MD) */
/* nghttp2 allocator: size classes 64 << i, i < GRPC__S_MCLASSES (64 B..4 KiB) */
#define GRPC__S_MCLASSES 7u
#define GRPC__S_MCLASS_BIG GRPC__S_MCLASSES /* plain malloc, freed at once */
#define GRPC__S_MPOOL_BYTES (1u << 20)  /* bytes kept per class on the free lists */

static const trace_scope_t grpc__s_scope = TRACE_SCOPE("shop.core.grpc", SHOP_VERSION);

/* ------------------------------------------------------------------ types */

typedef enum {
    GRPC__SC_RECV = 1,
    GRPC__SC_QUEUED,
    GRPC__SC_HANDLER,
    GRPC__SC_ANSWERED,
} grpc__scall_state_t;

typedef struct st_grpc__method_t {
    char *path; /* "/package.Service/Method" (service = path + 1, method after the '/') */
    size_t svc_len, meth_len; /* lengths of the service and method parts (span attributes) */
    const ProtobufCServiceDescriptor *svc;
    const ProtobufCMethodDescriptor *md;
    grpc_server_handler_cb cb; /* NULL = UNIMPLEMENTED */
    void *arg;
} grpc__method_t;

typedef struct st_grpc__listener_t {
    struct st_grpc__listener_t *next;
    grpc_server_t *srv;
    loop_listener_t *l;
    char ip[64];
    uint16_t port;
} grpc__listener_t;

/* Block header of grpc__mpool_t: the class and, for BIG, the size. */
typedef struct st_grpc__mblock_t {
    union {
        struct st_grpc__mblock_t *next; /* on a free list */
        struct {
            uint32_t cls;  /* size class, GRPC__S_MCLASS_BIG = plain malloc */
            uint32_t size; /* BIG: requested bytes (realloc copies them) */
        } h;
    };
    uint64_t _pad; /* 16-byte header keeps payloads 16-byte aligned */
} grpc__mblock_t;

/* nghttp2's allocator for the server's sessions: per-class free lists.
 * Owned by the server (one loop thread); blocks on the lists are freed by
 * grpc_server_free(), after every session is deleted. */
typedef struct st_grpc__mpool_t {
    grpc__mblock_t *free[GRPC__S_MCLASSES];
    uint32_t nfree[GRPC__S_MCLASSES];
} grpc__mpool_t;

/* A spilled arena chunk; payload follows the 16-byte header. */
typedef struct st_grpc__achunk_t {
    struct st_grpc__achunk_t *next;
    uint64_t _pad;
} grpc__achunk_t;

typedef struct st_grpc__sconn_t grpc__sconn_t;

struct st_grpc_server_call_t {
    struct st_grpc_server_call_t *next, *prev;   /* conn's call list while attached; the
                                                  * server's orphan list while only the
                                                  * handler holds it; else unlinked */
    struct st_grpc_server_call_t *rnext, *rprev; /* server ready list (QUEUED only) */
    grpc_server_t *srv;  /* NULL once the server was freed (orphans only) */
    grpc__sconn_t *conn; /* NULL once the stream is gone */
    int32_t sid;
    grpc__scall_state_t state;
    bool ended;       /* status fixed */
    bool handler_holds; /* the handler was called and has not replied */
    bool is_post, ct_ok, gzip, bad_encoding, too_big, deadline_hit;
    bool body_heap; /* body is malloc'd (grew past GRPC__S_BODY_ARENA_MAX), else arena */
    const grpc__method_t *m;
    char *path;     /* arena copy, NUL-terminated */
    size_t path_len;
    uint64_t deadline_ns; /* CLOCK_MONOTONIC, 0 = none */
    loop_timer_t dl_timer;
    grpc_md_t *md; /* request custom metadata: arena copies, -bin decoded */
    size_t n_md, md_cap;
    uint8_t *body; /* received DATA, blen <= max_message + 5 */
    size_t blen, bcap;
    uint8_t *req_owned; /* gunzipped request, or NULL */
    const uint8_t *req;
    size_t req_len;
    ProtobufCMessage *msg; /* unpacked into the arena */
    uint8_t *resp; /* framed response (5-byte prefix + message), arena */
    size_t resp_len, resp_off;
    grpc_md_t *tr; /* trailers to send: keys/values arena copies, -bin base64 */
    size_t n_tr;
    grpc_status_t status;
    bool span_on;
    uint8_t *a_pos, *a_end;  /* arena: free bytes [a_pos, a_end) */
    grpc__achunk_t *a_spill; /* arena chunks to free with the call */
    /* ---- Not zeroed when the call is (re)used: everything below is
     * written before it is read. */
    char ts[TRACE_TRACESTATE_MAX];
    _Alignas(16) uint8_t a_inline[GRPC__S_ARENA_INLINE];
    trace_span_t span; /* header zeroed at call start (not recording) */
};
#define GRPC__S_CALL_ZERO offsetof(struct st_grpc_server_call_t, ts)

struct st_grpc__sconn_t {
    struct st_grpc__sconn_t *next, *prev;
    grpc_server_t *srv;
    loop_conn_t *lc; /* NULL: memory connection */
    nghttp2_session *ng;
    bool down;         /* session deleted, close started */
    char addr[64];     /* listener address, for server.address */
    size_t addr_len;
    uint16_t port;
    grpc_server_call_t calls; /* sentinel */
    uint64_t last_rx_ns;
    bool ping_outstanding;
    loop_timer_t ka_timer;
    bool goaway_sent;
    uint8_t *wbuf;
    size_t wlen, wcap;
    size_t mem_out; /* memory connection: bytes produced */
};

struct st_grpc_server_t {
    loop_t *loop;
    uint32_t max_message, max_streams;
    uint64_t keepalive_ns;
    grpc__method_t *methods; /* sorted by path */
    size_t n_methods, cap_methods;
    grpc__listener_t *listeners;
    grpc__sconn_t conns; /* sentinel */
    grpc_server_call_t ready; /* sentinel of the ready list */
    grpc_server_call_t orphans; /* sentinel: handler-held calls without a stream */
    size_t held;        /* calls a handler holds (shutdown waits for them) */
    bool grace_over;
    loop_timer_t ready_timer;
    bool hooked;
    bool shutting_down, done_called;
    loop_timer_t grace_timer, done_timer;
    grpc_server_done_cb done;
    void *done_arg;
    grpc_server_stats_t st;
    grpc_server_call_t *free_calls; /* recycled call objects, linked by next */
    uint32_t n_free_calls;
    grpc__mpool_t mpool; /* the sessions' nghttp2_mem */
};

/* ------------------------------------------------------------ pure helper */

long grpc_percent_encode(const char *in, size_t len, char *out, size_t outcap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = (uint8_t)in[i];
        if (c >= 0x20 && c <= 0x7e && c != '%') {
            if (o + 1 >= outcap)
                return -1;
            out[o++] = (char)c;
        } else {
            if (o + 3 >= outcap)
                return -1;
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    if (o >= outcap)
        return -1;
    out[o] = '\0';
    return (long)o;
}

/* ---------------------------------------------------------------- helpers */

static bool grpc__s_is_bin(const char *k, size_t n)
{
    return n > 4 && memcmp(k + n - 4, "-bin", 4) == 0;
}

static bool grpc__s_eq(const uint8_t *a, size_t alen, const char *lit)
{
    return alen == strlen(lit) && memcmp(a, lit, alen) == 0;
}

/* Arena allocation of n bytes (16-byte aligned) from call c; freed with the
 * call (grpc__s_call_free), never singly.  NULL when out of memory. */
static void *grpc__s_alloc(grpc_server_call_t *c, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if ((size_t)(c->a_end - c->a_pos) >= n) {
        void *p = c->a_pos;
        c->a_pos += n;
        return p;
    }
    size_t cap = n > GRPC__S_ARENA_CHUNK / 2 ? n : GRPC__S_ARENA_CHUNK;
    grpc__achunk_t *ch = malloc(sizeof *ch + cap);
    if (!ch)
        return NULL;
    ch->next = c->a_spill;
    c->a_spill = ch;
    uint8_t *p = (uint8_t *)(ch + 1);
    if (cap > n) { /* a general chunk becomes the current one */
        c->a_pos = p + n;
        c->a_end = p + cap;
    }
    return p;
}

/* Arena copy of [p, p+n) with a NUL after it. */
static char *grpc__s_strndup(grpc_server_call_t *c, const void *p, size_t n)
{
    char *d = grpc__s_alloc(c, n + 1);
    if (d) {
        if (n)
            memcpy(d, p, n);
        d[n] = '\0';
    }
    return d;
}

/* ProtobufCAllocator over the call's arena: the request message is freed
 * with the call, so free is a no-op. */
static void *grpc__s_pb_alloc(void *data, size_t n)
{
    return grpc__s_alloc(data, n);
}

static void grpc__s_pb_free(void *data, void *p)
{
    (void)data;
    (void)p;
}

/* ------------------------------------------------ nghttp2 allocator */

static void *grpc__s_mmalloc(size_t size, void *ud)
{
    grpc__mpool_t *mp = ud;
    /* smallest class holding size: 0 for <= 64, else bit length of (size-1)/64 */
    uint32_t cls = size <= 64 ? 0
                   : size > (64u << (GRPC__S_MCLASSES - 1))
                       ? GRPC__S_MCLASS_BIG
                       : 32u - (uint32_t)__builtin_clz((uint32_t)((size - 1) >> 6));
    grpc__mblock_t *b;
    if (cls < GRPC__S_MCLASSES && (b = mp->free[cls]) != NULL) {
        mp->free[cls] = b->next;
        mp->nfree[cls]--;
    } else {
        if (cls == GRPC__S_MCLASS_BIG && size > UINT32_MAX - sizeof *b)
            return NULL;
        b = malloc(sizeof *b + (cls < GRPC__S_MCLASSES ? (64u << cls) : size));
        if (!b)
            return NULL;
    }
    b->h.cls = cls;
    b->h.size = (uint32_t)size;
    return b + 1;
}

static void grpc__s_mfree(void *p, void *ud)
{
    if (!p)
        return;
    grpc__mpool_t *mp = ud;
    grpc__mblock_t *b = (grpc__mblock_t *)p - 1;
    uint32_t cls = b->h.cls;
    if (cls >= GRPC__S_MCLASSES || mp->nfree[cls] >= GRPC__S_MPOOL_BYTES / (64u << cls)) {
        free(b);
        return;
    }
    b->next = mp->free[cls];
    mp->free[cls] = b;
    mp->nfree[cls]++;
}

static void *grpc__s_mcalloc(size_t n, size_t size, void *ud)
{
    if (size && n > SIZE_MAX / size)
        return NULL;
    void *p = grpc__s_mmalloc(n * size, ud);
    if (p)
        memset(p, 0, n * size);
    return p;
}

static void *grpc__s_mrealloc(void *p, size_t size, void *ud)
{
    if (!p)
        return grpc__s_mmalloc(size, ud);
    if (size == 0) {
        grpc__s_mfree(p, ud);
        return NULL;
    }
    grpc__mblock_t *b = (grpc__mblock_t *)p - 1;
    size_t old = b->h.cls < GRPC__S_MCLASSES ? (64u << b->h.cls) : b->h.size;
    if (b->h.cls < GRPC__S_MCLASSES && size <= old) {
        b->h.size = (uint32_t)size;
        return p;
    }
    void *np = grpc__s_mmalloc(size, ud);
    if (!np)
        return NULL;
    memcpy(np, p, old < size ? old : size);
    grpc__s_mfree(p, ud);
    return np;
}

static void grpc__s_mpool_clear(grpc__mpool_t *mp)
{
    for (uint32_t i = 0; i < GRPC__S_MCLASSES; i++) {
        while (mp->free[i]) {
            grpc__mblock_t *b = mp->free[i];
            mp->free[i] = b->next;
            free(b);
        }
        mp->nfree[i] = 0;
    }
}

static int grpc__s_method_cmp(const void *a, const void *b)
{
    return strcmp(((const grpc__method_t *)a)->path, ((const grpc__method_t *)b)->path);
}

static const grpc__method_t *grpc__s_lookup(const grpc_server_t *srv, const char *path)
{
    grpc__method_t key = {.path = (char *)(uintptr_t)path};
    return bsearch(&key, srv->methods, srv->n_methods, sizeof key, grpc__s_method_cmp);
}

static void grpc__s_ready_del(grpc_server_call_t *c)
{
    c->rprev->rnext = c->rnext;
    c->rnext->rprev = c->rprev;
    c->rnext = c->rprev = c;
}

static void grpc__s_unlink(grpc_server_call_t *c)
{
    c->prev->next = c->next;
    c->next->prev = c->prev;
    c->next = c->prev = c;
}

/* A call object for a new stream: from the free list or malloc'd; the
 * header part zeroed, the arena empty, the span not recording. */
static grpc_server_call_t *grpc__s_call_new(grpc_server_t *srv)
{
    grpc_server_call_t *c = srv->free_calls;
    if (c) {
        srv->free_calls = c->next;
        srv->n_free_calls--;
    } else if (!(c = malloc(sizeof *c))) {
        return NULL;
    }
    memset(c, 0, GRPC__S_CALL_ZERO);
    memset(&c->span, 0, offsetof(trace_span_t, _buf));
    c->a_pos = c->a_inline;
    c->a_end = c->a_inline + sizeof c->a_inline;
    return c;
}

static void grpc__s_call_free(grpc_server_call_t *c)
{
    grpc_server_t *srv = c->srv;
    if (srv) /* else the timer was stopped when the call ended */
        loop_timer_stop(srv->loop, &c->dl_timer);
    grpc__s_unlink(c);
    /* c->msg, path, md, tr, resp and a small body live in the arena. */
    if (c->body_heap)
        free(c->body);
    free(c->req_owned);
    while (c->a_spill) {
        grpc__achunk_t *ch = c->a_spill;
        c->a_spill = ch->next;
        free(ch);
    }
    if (srv && srv->n_free_calls < GRPC__S_FREE_CALLS_MAX) {
        c->next = srv->free_calls;
        srv->free_calls = c;
        srv->n_free_calls++;
    } else {
        free(c);
    }
}

/* Frees the call when neither its stream nor its handler refers to it. */
static void grpc__s_maybe_free(grpc_server_call_t *c)
{
    if (!c->conn && !c->handler_holds && c->state != GRPC__SC_QUEUED)
        grpc__s_call_free(c);
}

/* Server spans are Error only for the codes that mean a server fault
 * (semconv v1.37.0, rpc spans: "gRPC status codes"). */
static bool grpc__s_is_server_error(grpc_status_t st)
{
    switch (st) {
    case GRPC_STATUS_UNKNOWN:
    case GRPC_STATUS_DEADLINE_EXCEEDED:
    case GRPC_STATUS_UNIMPLEMENTED:
    case GRPC_STATUS_INTERNAL:
    case GRPC_STATUS_UNAVAILABLE:
    case GRPC_STATUS_DATA_LOSS: return true;
    default: return false;
    }
}

/* Fixes the call's status and ends its span.  Sending is the caller's. */
static void grpc__s_end(grpc_server_call_t *c, grpc_status_t st, const char *msg)
{
    if (c->ended)
        return;
    c->ended = true;
    c->status = st;
    loop_timer_stop(c->srv->loop, &c->dl_timer);
    c->srv->st.calls_finished++;
    if (c->span_on) {
        trace_span_set_int_n(&c->span, "rpc.grpc.status_code", sizeof "rpc.grpc.status_code" - 1, (int64_t)st);
        if (grpc__s_is_server_error(st)) {
            trace_span_set_str(&c->span, "error.type", grpc_status_name((int)st));
            trace_span_set_status(&c->span, TRACE_STATUS_ERROR, msg ? msg : "", msg ? strlen(msg) : 0);
        }
        trace_span_end(&c->span);
        c->span_on = false;
    }
}

/* ------------------------------------------------------------ answering */

/* Header fields from literals: nghttp2 need not copy them (it keeps the
 * pointers until the frame is packed; literals outlive the session). */
#define GRPC__S_NV_STATIC (NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE)
#define GRPC__S_NV_LIT(name, value)                                                                \
    (nghttp2_nv){(uint8_t *)(uintptr_t)(name), (uint8_t *)(uintptr_t)(value), sizeof(name) - 1,     \
                 sizeof(value) - 1, GRPC__S_NV_STATIC}

static ssize_t grpc__s_read_body(nghttp2_session *ng, int32_t sid, uint8_t *buf, size_t length,
                                 uint32_t *data_flags, nghttp2_data_source *source, void *user_data)
{
    (void)user_data;
    grpc_server_call_t *c = source->ptr;
    size_t n = c->resp_len - c->resp_off;
    if (n > length)
        n = length;
    if (n)
        memcpy(buf, c->resp + c->resp_off, n);
    c->resp_off += n;
    if (c->resp_off == c->resp_len) {
        /* The trailers carry END_STREAM (PROTOCOL-HTTP2 "Trailers"). */
        *data_flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
        nghttp2_nv nv[2 + GRPC__S_MAX_MD];
        size_t k = 0;
        nv[k++] = (nghttp2_nv){(uint8_t *)"grpc-status", (uint8_t *)"0", 11, 1, GRPC__S_NV_STATIC};
        for (size_t i = 0; i < c->n_tr && k < sizeof nv / sizeof nv[0]; i++)
            nv[k++] = (nghttp2_nv){(uint8_t *)(uintptr_t)c->tr[i].key, (uint8_t *)(uintptr_t)c->tr[i].value,
                                   strlen(c->tr[i].key), c->tr[i].value_len, NGHTTP2_NV_FLAG_NONE};
        if (nghttp2_submit_trailer(ng, sid, nv, k) != 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return (ssize_t)n;
}

/* Sends the fixed status of c: the OK answer with c->resp, or Trailers-Only.
 * http_status != 200 answers a request that is not gRPC (no grpc-status). */
static void grpc__s_send(grpc_server_call_t *c, int http_status, const char *msg)
{
    grpc__sconn_t *conn = c->conn;
    if (!conn || conn->down)
        return;
    c->state = GRPC__SC_ANSWERED;
    nghttp2_nv nv[6 + GRPC__S_MAX_MD];
    size_t k = 0;
    if (http_status != 200) { /* 405 or 415: the request is not gRPC */
        nv[k++] = http_status == 415 ? GRPC__S_NV_LIT(":status", "415") : GRPC__S_NV_LIT(":status", "405");
        nv[k++] = GRPC__S_NV_LIT("content-type", "text/plain");
        (void)nghttp2_submit_response(conn->ng, c->sid, nv, k, NULL);
        return;
    }
    nv[k++] = GRPC__S_NV_LIT(":status", "200");
    nv[k++] = GRPC__S_NV_LIT("content-type", "application/grpc");
    nv[k++] = GRPC__S_NV_LIT("grpc-accept-encoding", "gzip");
    if (c->status == GRPC_STATUS_OK) {
        nghttp2_data_provider prd = {.source = {.ptr = c}, .read_callback = grpc__s_read_body};
        if (nghttp2_submit_response(conn->ng, c->sid, nv, k, &prd) != 0)
            (void)nghttp2_submit_rst_stream(conn->ng, NGHTTP2_FLAG_NONE, c->sid, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    /* grpc-status as decimal text, no snprintf (nghttp2 copies the value:
     * stack buffer) */
    char stbuf[12], *sp = stbuf + sizeof stbuf;
    int64_t sv = (int64_t)c->status;
    uint64_t uv = sv < 0 ? (uint64_t)-sv : (uint64_t)sv;
    do
        *--sp = (char)('0' + uv % 10);
    while ((uv /= 10) != 0);
    if (sv < 0)
        *--sp = '-';
    size_t sl = (size_t)(stbuf + sizeof stbuf - sp);
    nv[k++] = (nghttp2_nv){(uint8_t *)"grpc-status", (uint8_t *)sp, 11, sl, NGHTTP2_NV_FLAG_NO_COPY_NAME};
    if (msg && *msg) {
        size_t ml = strlen(msg), cap = ml * 3 + 1;
        char *enc = grpc__s_alloc(c, cap);
        long el = enc ? grpc_percent_encode(msg, ml, enc, cap) : -1;
        if (el >= 0)
            nv[k++] = (nghttp2_nv){(uint8_t *)"grpc-message", (uint8_t *)enc, 12, (size_t)el,
                                   NGHTTP2_NV_FLAG_NO_COPY_NAME};
    }
    for (size_t i = 0; i < c->n_tr && k < sizeof nv / sizeof nv[0]; i++)
        nv[k++] = (nghttp2_nv){(uint8_t *)(uintptr_t)c->tr[i].key, (uint8_t *)(uintptr_t)c->tr[i].value,
                               strlen(c->tr[i].key), c->tr[i].value_len, NGHTTP2_NV_FLAG_NONE};
    if (nghttp2_submit_response(conn->ng, c->sid, nv, k, NULL) != 0)
        (void)nghttp2_submit_rst_stream(conn->ng, NGHTTP2_FLAG_NONE, c->sid, NGHTTP2_INTERNAL_ERROR);
}

/* Ends the call with a non-OK status and sends it (Trailers-Only). */
static void grpc__s_fail(grpc_server_call_t *c, grpc_status_t st, const char *msg)
{
    if (c->ended)
        return;
    grpc__s_end(c, st, msg);
    grpc__s_send(c, 200, msg);
}

static void grpc__s_deadline(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    grpc_server_call_t *c = arg;
    c->deadline_hit = true;
    grpc__s_fail(c, GRPC_STATUS_DEADLINE_EXCEEDED, "grpc: deadline exceeded (server)");
    if (c->state == GRPC__SC_QUEUED) { /* the handler will never run */
        grpc__s_ready_del(c);
        c->state = GRPC__SC_ANSWERED;
        grpc__s_maybe_free(c);
    }
}

/* -------------------------------------------------------------- dispatch */

static void grpc__s_run_ready(grpc_server_t *srv)
{
    while (srv->ready.rnext != &srv->ready) {
        grpc_server_call_t *c = srv->ready.rnext;
        grpc__s_ready_del(c);
        c->state = GRPC__SC_HANDLER;
        c->handler_holds = true;
        srv->held++;
        c->m->cb(c, c->msg, c->m->arg);
    }
}

static void grpc__s_ready_tick(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    grpc__s_run_ready(arg);
}

/* The request is complete (END_STREAM): frame, decompress, decode, queue. */
static void grpc__s_request_done(grpc_server_call_t *c)
{
    grpc_server_t *srv = c->srv;
    if (c->ended || c->state != GRPC__SC_RECV)
        return;
    if (c->bad_encoding) {
        grpc__s_fail(c, GRPC_STATUS_UNIMPLEMENTED, "grpc: unsupported grpc-encoding (supported: identity, gzip)");
        return;
    }
    grpc_frame_t f;
    long n = grpc_frame_parse(c->body, c->blen, srv->max_message, &f);
    if (n == -3) {
        grpc__s_fail(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "grpc: received message larger than max");
        return;
    }
    if (n < 0 || (size_t)n != c->blen) {
        grpc__s_fail(c, GRPC_STATUS_INTERNAL,
                     n == -2 ? (c->blen == 0 ? "grpc: unary request without a message"
                                             : "grpc: truncated request message (length prefix or body)")
                     : n == -1 ? "grpc: malformed request message framing"
                               : "grpc: more than one request message in a unary call");
        return;
    }
    c->req = f.msg;
    c->req_len = f.len;
    if (f.compressed) {
        if (!c->gzip) {
            grpc__s_fail(c, GRPC_STATUS_INTERNAL, "grpc: compressed message without grpc-encoding");
            return;
        }
        size_t outlen = 0;
        int rc = grpc__gunzip(f.msg, f.len, srv->max_message, &c->req_owned, &outlen);
        if (rc < 0) {
            grpc__s_fail(c, rc == -EMSGSIZE ? GRPC_STATUS_RESOURCE_EXHAUSTED : GRPC_STATUS_INTERNAL,
                         rc == -EMSGSIZE ? "grpc: decompressed message larger than max"
                                         : "grpc: gzip request does not decompress");
            return;
        }
        c->req = c->req_owned;
        c->req_len = outlen;
    }
    ProtobufCAllocator pba = {.alloc = grpc__s_pb_alloc, .free = grpc__s_pb_free, .allocator_data = c};
    c->msg = protobuf_c_message_unpack(c->m->md->input, &pba, c->req_len, c->req);
    if (!c->msg) {
        grpc__s_fail(c, GRPC_STATUS_INTERNAL, "grpc: error unmarshalling request");
        return;
    }
    c->state = GRPC__SC_QUEUED;
    c->rnext = &srv->ready;
    c->rprev = srv->ready.rprev;
    c->rprev->rnext = c;
    srv->ready.rprev = c;
    if (!loop_timer_active(&srv->ready_timer))
        (void)loop_timer_start(srv->loop, &srv->ready_timer, 0, 0, grpc__s_ready_tick, srv);
}

/* trace_extract carrier over the request metadata. */
static const char *grpc__s_md_lookup(void *carrier, const char *name, size_t *vlen)
{
    const grpc_md_t *m = grpc_server_call_md_get(carrier, name);
    if (!m)
        return NULL;
    *vlen = m->value_len;
    return (const char *)m->value;
}

/* Request headers complete: validate, route, start the span and deadline. */
static void grpc__s_headers_done(grpc_server_call_t *c)
{
    grpc_server_t *srv = c->srv;
    srv->st.calls_started++;
    if (!c->is_post || !c->ct_ok || !c->path) {
        /* Not a gRPC request: HTTP 415 (PROTOCOL-HTTP2: "If Content-Type
         * does not begin with application/grpc, gRPC servers SHOULD respond
         * with HTTP status of 415"); no span, it is no RPC. */
        srv->st.bad_requests++;
        c->ended = true;
        c->status = GRPC_STATUS_UNKNOWN;
        srv->st.calls_finished++;
        grpc__s_send(c, c->is_post ? 415 : 405, NULL);
        return;
    }
    /* "/service/method": both parts non-empty make it an RPC with a span.
     * A known method has the split precomputed in its table entry. */
    c->m = grpc__s_lookup(srv, c->path);
    const char *svc = c->path + 1;
    size_t svc_len = 0, meth_len = 0;
    if (c->m) {
        svc_len = c->m->svc_len;
        meth_len = c->m->meth_len;
    } else if (c->path_len > 1 && c->path[0] == '/') {
        const char *slash = memchr(svc, '/', c->path_len - 1);
        if (slash) {
            svc_len = (size_t)(slash - svc);
            meth_len = c->path_len - 2 - svc_len;
        }
    }
    if (svc_len && meth_len) {
        trace_context_t parent;
        int has = trace_extract(grpc__s_md_lookup, c, &parent, c->ts, sizeof c->ts, NULL);
        trace_span_start(&c->span, &grpc__s_scope, svc, c->path_len - 1, TRACE_KIND_SERVER,
                         has == 0 ? &parent : NULL);
        c->span_on = true;
#define GRPC__S_KEY(lit) lit, sizeof lit - 1
        trace_span_set_str_n(&c->span, GRPC__S_KEY("rpc.system"), "grpc", 4);
        trace_span_set_str_n(&c->span, GRPC__S_KEY("rpc.service"), svc, svc_len);
        trace_span_set_str_n(&c->span, GRPC__S_KEY("rpc.method"), svc + svc_len + 1, meth_len);
        trace_span_set_str_n(&c->span, GRPC__S_KEY("server.address"), c->conn->addr, c->conn->addr_len);
        trace_span_set_int_n(&c->span, GRPC__S_KEY("server.port"), c->conn->port);
#undef GRPC__S_KEY
    }
    if (!c->m || !c->m->cb) {
        char msg[300];
        snprintf(msg, sizeof msg, "grpc: unknown method %.256s", c->path);
        grpc__s_fail(c, GRPC_STATUS_UNIMPLEMENTED, msg);
        return;
    }
    if (srv->shutting_down) {
        grpc__s_fail(c, GRPC_STATUS_UNAVAILABLE, "grpc: server shutting down");
        return;
    }
    if (c->deadline_ns) {
        uint64_t now = loop_now_ns();
        (void)loop_timer_start(srv->loop, &c->dl_timer, c->deadline_ns > now ? c->deadline_ns - now : 0, 0,
                               grpc__s_deadline, c);
    }
}

/* ------------------------------------------------------ nghttp2 callbacks */

static int grpc__s_cb_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *user_data)
{
    grpc__sconn_t *conn = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    grpc_server_call_t *c = grpc__s_call_new(conn->srv);
    if (!c)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* RST_STREAM INTERNAL_ERROR */
    c->srv = conn->srv;
    c->conn = conn;
    c->sid = frame->hd.stream_id;
    c->state = GRPC__SC_RECV;
    c->rnext = c->rprev = c;
    loop_timer_init(&c->dl_timer);
    c->next = &conn->calls;
    c->prev = conn->calls.prev;
    c->prev->next = c;
    conn->calls.prev = c;
    nghttp2_session_set_stream_user_data(ng, c->sid, c);
    return 0;
}

static int grpc__s_add_md(grpc_server_call_t *c, const uint8_t *name, size_t namelen, const uint8_t *value,
                          size_t valuelen)
{
    if (c->n_md >= GRPC__S_MAX_MD)
        return 0; /* further entries are dropped: bounded per-call memory */
    if (c->n_md == c->md_cap) { /* arena: the old array is left behind */
        size_t cap = c->md_cap ? c->md_cap * 2 : GRPC__S_MD_CAP0;
        grpc_md_t *nm = grpc__s_alloc(c, cap * sizeof *nm);
        if (!nm)
            return -ENOMEM;
        if (c->n_md)
            memcpy(nm, c->md, c->n_md * sizeof *nm);
        c->md = nm;
        c->md_cap = cap;
    }
    char *k = grpc__s_strndup(c, name, namelen);
    uint8_t *v = grpc__s_alloc(c, valuelen + 1);
    if (!k || !v)
        return -ENOMEM;
    size_t vlen = valuelen;
    if (grpc__s_is_bin(k, namelen)) {
        long d = grpc_base64_decode((const char *)value, valuelen, v, valuelen + 1);
        vlen = d < 0 ? 0 : (size_t)d; /* undecodable: empty */
    } else if (valuelen) {
        memcpy(v, value, valuelen);
    }
    v[vlen] = '\0';
    c->md[c->n_md++] = (grpc_md_t){.key = k, .value = v, .value_len = vlen};
    return 0;
}

static int grpc__s_cb_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name,
                             size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                             void *user_data)
{
    (void)flags;
    (void)user_data;
    grpc_server_call_t *c = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (!c || frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0; /* request trailers carry nothing for a unary call */
    /* Dispatch on the name's length first: most fields are none of ours. */
    bool mine = namelen == 2 || namelen == 5 || namelen == 7 || namelen == 12 || namelen == 13;
    if (!mine) {
        if (namelen && name[0] != ':' && !(namelen >= 5 && memcmp(name, "grpc-", 5) == 0) &&
            grpc__s_add_md(c, name, namelen, value, valuelen) < 0)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    } else if (grpc__s_eq(name, namelen, ":method")) {
        c->is_post = grpc__s_eq(value, valuelen, "POST");
    } else if (grpc__s_eq(name, namelen, ":path")) {
        c->path = grpc__s_strndup(c, value, valuelen); /* NULL: no path, answered 405/415 */
        c->path_len = c->path ? valuelen : 0;
    } else if (grpc__s_eq(name, namelen, "content-type")) {
        /* "application/grpc" or "application/grpc+proto", ";params" */
        c->ct_ok = valuelen >= 16 && memcmp(value, "application/grpc", 16) == 0 &&
                   (valuelen == 16 || value[16] == '+' || value[16] == ';');
    } else if (grpc__s_eq(name, namelen, "grpc-timeout")) {
        uint64_t ns;
        if (grpc_timeout_parse((const char *)value, valuelen, &ns) == 0) {
            uint64_t now = loop_now_ns();
            c->deadline_ns = ns > UINT64_MAX - now ? UINT64_MAX : now + ns;
        }
    } else if (grpc__s_eq(name, namelen, "grpc-encoding")) {
        c->gzip = grpc__s_eq(value, valuelen, "gzip");
        c->bad_encoding = !c->gzip && !grpc__s_eq(value, valuelen, "identity");
    } else if (namelen && name[0] != ':' && !grpc__s_eq(name, namelen, "te") &&
               !(namelen >= 5 && memcmp(name, "grpc-", 5) == 0)) {
        if (grpc__s_add_md(c, name, namelen, value, valuelen) < 0)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    return 0;
}

static int grpc__s_cb_data(nghttp2_session *ng, uint8_t flags, int32_t sid, const uint8_t *data, size_t len,
                           void *user_data)
{
    (void)flags;
    (void)user_data;
    grpc_server_call_t *c = nghttp2_session_get_stream_user_data(ng, sid);
    if (!c || c->ended || c->state != GRPC__SC_RECV)
        return 0; /* answered already (e.g. UNIMPLEMENTED): drop the rest */
    size_t max = (size_t)c->srv->max_message + GRPC_FRAME_HDR;
    if (c->blen + len > max) {
        /* One unary message over the limit, whatever the framing: answer
         * now instead of buffering the rest. */
        grpc__s_fail(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "grpc: received message larger than max");
        return 0;
    }
    if (c->blen + len > c->bcap) {
        size_t cap = c->bcap ? c->bcap : 128;
        while (cap < c->blen + len)
            cap *= 2;
        if (cap > max)
            cap = max;
        uint8_t *nb;
        if (cap <= GRPC__S_BODY_ARENA_MAX) { /* small: arena, the old copy stays behind */
            nb = grpc__s_alloc(c, cap);
            if (nb && c->blen)
                memcpy(nb, c->body, c->blen);
        } else if (c->body_heap) {
            nb = realloc(c->body, cap);
        } else {
            nb = malloc(cap);
            if (nb && c->blen)
                memcpy(nb, c->body, c->blen);
        }
        if (!nb) {
            grpc__s_fail(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "grpc: out of memory for the request");
            return 0;
        }
        c->body_heap = cap > GRPC__S_BODY_ARENA_MAX;
        c->body = nb;
        c->bcap = cap;
    }
    memcpy(c->body + c->blen, data, len);
    c->blen += len;
    return 0;
}

static int grpc__s_cb_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *user_data)
{
    grpc__sconn_t *conn = user_data;
    if (frame->hd.type == NGHTTP2_PING && (frame->hd.flags & NGHTTP2_FLAG_ACK)) {
        conn->ping_outstanding = false;
        return 0;
    }
    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA)
        return 0;
    grpc_server_call_t *c = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (!c)
        return 0;
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST)
        grpc__s_headers_done(c);
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
        grpc__s_request_done(c);
    return 0;
}

/* Detaches c from its stream (closed, or the connection is going). */
static void grpc__s_detach(grpc_server_call_t *c, grpc_status_t why)
{
    grpc__sconn_t *conn = c->conn;
    grpc__s_unlink(c);
    if (c->handler_holds) { /* kept findable for grpc_server_free() */
        c->next = &c->srv->orphans;
        c->prev = c->srv->orphans.prev;
        c->prev->next = c;
        c->srv->orphans.prev = c;
    }
    if (conn && conn->ng && !conn->down)
        nghttp2_session_set_stream_user_data(conn->ng, c->sid, NULL);
    c->conn = NULL;
    if (!c->ended) {
        c->srv->st.calls_cancelled++;
        grpc__s_end(c, why, why == GRPC_STATUS_CANCELLED ? "grpc: cancelled by the client" : "grpc: connection lost");
    }
    if (c->state == GRPC__SC_QUEUED) {
        grpc__s_ready_del(c);
        c->state = GRPC__SC_ANSWERED;
    }
    grpc__s_maybe_free(c);
}

static int grpc__s_cb_stream_close(nghttp2_session *ng, int32_t sid, uint32_t error_code, void *user_data)
{
    (void)user_data;
    (void)error_code;
    grpc_server_call_t *c = nghttp2_session_get_stream_user_data(ng, sid);
    if (c)
        grpc__s_detach(c, GRPC_STATUS_CANCELLED);
    return 0;
}

/* ----------------------------------------------------------- connections */

static void grpc__s_hook(loop_t *loop, void *arg);
static void grpc__s_check_done(grpc_server_t *srv);

static void grpc__s_on_close(loop_conn_t *lc, void *data)
{
    (void)lc;
    grpc__sconn_t *conn = data;
    grpc_server_t *srv = conn->srv;
    free(conn->wbuf);
    free(conn);
    if (srv) {
        srv->st.conns_open--;
        grpc__s_check_done(srv);
    }
}

/* Tears the session down: calls still attached lose their stream
 * (UNAVAILABLE), the socket closes asynchronously.  Never called from
 * inside an nghttp2 callback. */
static void grpc__s_conn_down(grpc__sconn_t *conn)
{
    if (conn->down)
        return;
    conn->down = true;
    loop_timer_stop(conn->srv->loop, &conn->ka_timer);
    while (conn->calls.next != &conn->calls)
        grpc__s_detach(conn->calls.next, GRPC_STATUS_UNAVAILABLE);
    nghttp2_session_del(conn->ng);
    conn->ng = NULL;
    conn->prev->next = conn->next;
    conn->next->prev = conn->prev;
    conn->next = conn->prev = conn;
    if (conn->lc)
        loop_conn_close(conn->lc, grpc__s_on_close);
}

/* Drains nghttp2's output into one write.  Returns 0 or -errno. */
static int grpc__s_flush(grpc__sconn_t *conn)
{
    if (conn->down)
        return 0;
    if (conn->lc && loop_conn_write_queued(conn->lc) > GRPC__S_MAX_QUEUED)
        return 0; /* the write completion brings the next hook run */
    conn->wlen = 0;
    for (;;) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(conn->ng, &data);
        if (n < 0)
            return -EPROTO;
        if (n == 0)
            break;
        if (!conn->lc) {
            conn->mem_out += (size_t)n;
            continue;
        }
        if (conn->wlen + (size_t)n > conn->wcap) {
            size_t cap = conn->wcap ? conn->wcap : 16384;
            while (cap < conn->wlen + (size_t)n)
                cap *= 2;
            uint8_t *nb = realloc(conn->wbuf, cap);
            if (!nb)
                return -ENOMEM;
            conn->wbuf = nb;
            conn->wcap = cap;
        }
        memcpy(conn->wbuf + conn->wlen, data, (size_t)n);
        conn->wlen += (size_t)n;
        if (conn->wlen >= GRPC__S_BATCH_MAX)
            break;
    }
    if (conn->wlen) {
        int rc = loop_conn_write_copy(conn->lc, conn->wbuf, conn->wlen);
        conn->wlen = 0;
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Flushes and closes the connection when the session has nothing left
 * (GOAWAY exchanged and no stream open, or a fatal error). */
static void grpc__s_service(grpc__sconn_t *conn)
{
    if (conn->down)
        return;
    if (grpc__s_flush(conn) < 0 ||
        (!nghttp2_session_want_read(conn->ng) && !nghttp2_session_want_write(conn->ng)))
        grpc__s_conn_down(conn);
}

static void grpc__s_hook(loop_t *loop, void *arg)
{
    (void)loop;
    grpc_server_t *srv = arg;
    grpc__sconn_t *conn = srv->conns.next;
    while (conn != &srv->conns) {
        grpc__sconn_t *next = conn->next; /* conn may leave the list */
        if (conn->lc)
            grpc__s_service(conn);
        conn = next;
    }
}

static void grpc__s_ka_tick(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    grpc__sconn_t *conn = arg;
    if (conn->down)
        return;
    if (conn->ping_outstanding) { /* a whole interval without the ACK: dead path */
        grpc__s_conn_down(conn);
        return;
    }
    if (loop_now_ns() - conn->last_rx_ns >= conn->srv->keepalive_ns &&
        nghttp2_submit_ping(conn->ng, NGHTTP2_FLAG_NONE, NULL) == 0)
        conn->ping_outstanding = true;
}

static void grpc__s_on_read(loop_conn_t *lc, ssize_t n, const void *buf, void *data)
{
    (void)lc;
    grpc__sconn_t *conn = data;
    if (conn->down)
        return;
    if (n <= 0) {
        grpc__s_conn_down(conn);
        return;
    }
    conn->last_rx_ns = loop_now_ns();
    ssize_t rv = nghttp2_session_mem_recv(conn->ng, buf, (size_t)n);
    if (rv < 0) {
        /* Bad preface or a connection error: nghttp2 queued a GOAWAY where
         * it could; send it, then close. */
        conn->srv->st.protocol_errors++;
        (void)grpc__s_flush(conn);
        grpc__s_conn_down(conn);
    }
}

static int grpc__s_session_new(grpc__sconn_t *conn)
{
    nghttp2_session_callbacks *cbs;
    if (nghttp2_session_callbacks_new(&cbs) != 0)
        return -ENOMEM;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, grpc__s_cb_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, grpc__s_cb_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, grpc__s_cb_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, grpc__s_cb_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, grpc__s_cb_stream_close);
    nghttp2_mem mem = {.mem_user_data = &conn->srv->mpool, .malloc = grpc__s_mmalloc, .free = grpc__s_mfree,
                       .calloc = grpc__s_mcalloc, .realloc = grpc__s_mrealloc};
    /* nghttp2 copies mem; mem_user_data (the server's pool) outlives the
     * session: grpc_server_free() deletes every session first. */
    int rc = nghttp2_session_server_new3(&conn->ng, cbs, conn, NULL, &mem);
    nghttp2_session_callbacks_del(cbs);
    if (rc != 0)
        return -ENOMEM;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, conn->srv->max_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, GRPC__S_STREAM_WINDOW},
    };
    rc = nghttp2_submit_settings(conn->ng, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]);
    if (rc == 0)
        rc = nghttp2_session_set_local_window_size(conn->ng, NGHTTP2_FLAG_NONE, 0, GRPC__S_CONN_WINDOW);
    if (rc != 0) {
        nghttp2_session_del(conn->ng);
        conn->ng = NULL;
        return -ENOMEM;
    }
    return 0;
}

static grpc__sconn_t *grpc__s_conn_new(grpc_server_t *srv, const char *addr, uint16_t port)
{
    grpc__sconn_t *conn = calloc(1, sizeof *conn);
    if (!conn)
        return NULL;
    conn->srv = srv;
    conn->calls.next = conn->calls.prev = &conn->calls;
    conn->next = conn->prev = conn;
    snprintf(conn->addr, sizeof conn->addr, "%s", addr);
    conn->addr_len = strlen(conn->addr);
    conn->port = port;
    loop_timer_init(&conn->ka_timer);
    conn->last_rx_ns = loop_now_ns();
    if (grpc__s_session_new(conn) < 0) {
        free(conn);
        return NULL;
    }
    conn->next = &srv->conns;
    conn->prev = srv->conns.prev;
    conn->prev->next = conn;
    srv->conns.prev = conn;
    return conn;
}

static void grpc__s_on_accept(loop_listener_t *l, loop_conn_t *lc, void *arg)
{
    (void)l;
    grpc__listener_t *li = arg;
    grpc_server_t *srv = li->srv;
    grpc__sconn_t *conn = srv->shutting_down ? NULL : grpc__s_conn_new(srv, li->ip, li->port);
    if (!conn) {
        loop_conn_close(lc, NULL);
        return;
    }
    srv->st.conns_accepted++;
    srv->st.conns_open++;
    conn->lc = lc;
    loop_conn_set_data(lc, conn);
    int one = 1;
    /* Trailers and small answers must not wait for Nagle. */
    (void)setsockopt(loop_conn_fd(lc), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (loop_conn_read_start(lc, grpc__s_on_read) < 0) {
        grpc__s_conn_down(conn);
        return;
    }
    if (srv->keepalive_ns)
        (void)loop_timer_start(srv->loop, &conn->ka_timer, srv->keepalive_ns, srv->keepalive_ns,
                               grpc__s_ka_tick, conn);
}

/* ----------------------------------------------------------------- server */

int grpc_server_new(loop_t *loop, const grpc_server_opts_t *opts, grpc_server_t **out)
{
    static const grpc_server_opts_t defaults;
    if (!loop || !out)
        return -EINVAL;
    if (!opts)
        opts = &defaults;
    grpc_server_t *srv = calloc(1, sizeof *srv);
    if (!srv)
        return -ENOMEM;
    srv->loop = loop;
    srv->max_message = opts->max_message ? opts->max_message : GRPC_MAX_MESSAGE_DEFAULT;
    srv->max_streams = opts->max_concurrent_streams ? opts->max_concurrent_streams : GRPC__S_STREAMS_DEFAULT;
    srv->keepalive_ns = opts->keepalive_ns;
    srv->conns.next = srv->conns.prev = &srv->conns;
    srv->ready.rnext = srv->ready.rprev = &srv->ready;
    srv->orphans.next = srv->orphans.prev = &srv->orphans;
    loop_timer_init(&srv->ready_timer);
    loop_timer_init(&srv->grace_timer);
    loop_timer_init(&srv->done_timer);
    int rc = loop_hook_add(loop, grpc__s_hook, srv);
    if (rc < 0) {
        free(srv);
        return rc;
    }
    srv->hooked = true;
    *out = srv;
    return 0;
}

int grpc_server_add_service(grpc_server_t *srv, const ProtobufCServiceDescriptor *desc,
                            const grpc_server_handler_cb *handlers, void *arg)
{
    if (!srv || !desc || !handlers || desc->magic != PROTOBUF_C__SERVICE_DESCRIPTOR_MAGIC)
        return -EINVAL;
    for (size_t i = 0; i < srv->n_methods; i++)
        if (srv->methods[i].svc == desc)
            return -EEXIST;
    size_t need = srv->n_methods + desc->n_methods;
    if (need > srv->cap_methods) {
        grpc__method_t *nm = realloc(srv->methods, need * sizeof *nm);
        if (!nm)
            return -ENOMEM;
        srv->methods = nm;
        srv->cap_methods = need;
    }
    for (unsigned i = 0; i < desc->n_methods; i++) {
        const ProtobufCMethodDescriptor *md = &desc->methods[i];
        size_t n = strlen(desc->name) + strlen(md->name) + 3;
        char *path = malloc(n);
        if (!path)
            return -ENOMEM; /* methods added so far stay: the table is consistent */
        snprintf(path, n, "/%s/%s", desc->name, md->name);
        srv->methods[srv->n_methods++] =
            (grpc__method_t){path, strlen(desc->name), strlen(md->name), desc, md, handlers[i], arg};
    }
    qsort(srv->methods, srv->n_methods, sizeof *srv->methods, grpc__s_method_cmp);
    return 0;
}

int grpc_server_listen(grpc_server_t *srv, const char *ip, uint16_t port, uint16_t *bound_port)
{
    if (!srv || !ip || strlen(ip) >= sizeof(((grpc__listener_t *)0)->ip))
        return -EINVAL;
    grpc__listener_t *li = calloc(1, sizeof *li);
    if (!li)
        return -ENOMEM;
    li->srv = srv;
    snprintf(li->ip, sizeof li->ip, "%s", ip);
    int rc = loop_listen(srv->loop, ip, port, 1024, grpc__s_on_accept, li, &li->l);
    if (rc < 0) {
        free(li);
        return rc;
    }
    li->port = loop_listener_port(li->l);
    li->next = srv->listeners;
    srv->listeners = li;
    if (bound_port)
        *bound_port = li->port;
    return 0;
}

static void grpc__s_close_listeners(grpc_server_t *srv)
{
    while (srv->listeners) {
        grpc__listener_t *li = srv->listeners;
        srv->listeners = li->next;
        loop_listener_close(li->l);
        free(li);
    }
}

static void grpc__s_done_tick(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    grpc_server_t *srv = arg;
    if (srv->done_called)
        return;
    srv->done_called = true;
    loop_timer_stop(srv->loop, &srv->grace_timer);
    if (srv->done)
        srv->done(srv, srv->done_arg);
}

static void grpc__s_check_done(grpc_server_t *srv)
{
    if (srv->shutting_down && !srv->done_called && srv->st.conns_open == 0 && srv->conns.next == &srv->conns &&
        (srv->held == 0 || srv->grace_over))
        (void)loop_timer_start(srv->loop, &srv->done_timer, 0, 0, grpc__s_done_tick, srv);
}

static void grpc__s_grace_over(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    grpc_server_t *srv = arg;
    srv->grace_over = true; /* handlers still holding calls are not waited for */
    while (srv->conns.next != &srv->conns) {
        grpc__sconn_t *conn = srv->conns.next;
        for (grpc_server_call_t *c = conn->calls.next; c != &conn->calls; c = c->next)
            (void)nghttp2_submit_rst_stream(conn->ng, NGHTTP2_FLAG_NONE, c->sid, NGHTTP2_CANCEL);
        (void)nghttp2_session_terminate_session(conn->ng, NGHTTP2_NO_ERROR);
        (void)grpc__s_flush(conn);
        grpc__s_conn_down(conn);
    }
    grpc__s_check_done(srv);
}

int grpc_server_shutdown(grpc_server_t *srv, uint64_t grace_ns, grpc_server_done_cb done, void *arg)
{
    if (srv->shutting_down)
        return -EALREADY;
    srv->shutting_down = true;
    srv->done = done;
    srv->done_arg = arg;
    grpc__s_close_listeners(srv);
    /* GOAWAY with the last stream we processed (RFC 9113 6.8): streams up
     * to it finish; the client retries later ones elsewhere.  A request in
     * flight at this instant is refused and retried, never half-done. */
    for (grpc__sconn_t *conn = srv->conns.next; conn != &srv->conns; conn = conn->next) {
        if (!conn->lc)
            continue;
        (void)nghttp2_submit_goaway(conn->ng, NGHTTP2_FLAG_NONE,
                                    nghttp2_session_get_last_proc_stream_id(conn->ng), NGHTTP2_NO_ERROR, NULL, 0);
        conn->goaway_sent = true;
    }
    if (grace_ns)
        (void)loop_timer_start(srv->loop, &srv->grace_timer, grace_ns, 0, grpc__s_grace_over, srv);
    grpc__s_check_done(srv);
    return 0;
}

void grpc_server_free(grpc_server_t *srv)
{
    if (!srv)
        return;
    grpc__s_close_listeners(srv);
    while (srv->conns.next != &srv->conns) {
        grpc__sconn_t *conn = srv->conns.next;
        grpc__s_conn_down(conn); /* a memory connection is then freed by its owner */
        conn->srv = NULL; /* freed below; the close callback must not touch it */
    }
    /* Calls queued for handlers never run; handler-held calls stay valid
     * until their reply (which only frees them: the stream is gone). */
    while (srv->ready.rnext != &srv->ready) {
        grpc_server_call_t *c = srv->ready.rnext;
        grpc__s_ready_del(c);
        c->state = GRPC__SC_ANSWERED;
        grpc__s_maybe_free(c);
    }
    while (srv->orphans.next != &srv->orphans) {
        grpc_server_call_t *c = srv->orphans.next;
        grpc__s_unlink(c);
        c->srv = NULL;
    }
    loop_timer_stop(srv->loop, &srv->ready_timer);
    loop_timer_stop(srv->loop, &srv->grace_timer);
    loop_timer_stop(srv->loop, &srv->done_timer);
    if (srv->hooked)
        loop_hook_remove(srv->loop, grpc__s_hook, srv);
    for (size_t i = 0; i < srv->n_methods; i++)
        free(srv->methods[i].path);
    free(srv->methods);
    while (srv->free_calls) {
        grpc_server_call_t *c = srv->free_calls;
        srv->free_calls = c->next;
        free(c);
    }
    grpc__s_mpool_clear(&srv->mpool); /* every session was deleted above */
    free(srv);
}

void grpc_server_stats(const grpc_server_t *srv, grpc_server_stats_t *out)
{
    *out = srv->st;
}

/* ------------------------------------------------------------------ calls */

int grpc_server_reply(grpc_server_call_t *c, grpc_status_t status, const char *message,
                      const ProtobufCMessage *response)
{
    if (c->handler_holds && c->srv) {
        c->srv->held--;
        grpc__s_check_done(c->srv);
    }
    c->handler_holds = false;
    if (c->ended || !c->conn) {
        grpc__s_maybe_free(c);
        return -ECANCELED;
    }
    if (status == GRPC_STATUS_OK) {
        size_t n = response ? protobuf_c_message_get_packed_size(response) : 0;
        if (n > c->srv->max_message) {
            grpc__s_fail(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "grpc: response message larger than max");
            grpc__s_maybe_free(c);
            return 0;
        }
        c->resp = grpc__s_alloc(c, GRPC_FRAME_HDR + n);
        if (!c->resp) {
            grpc__s_fail(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "grpc: out of memory for the response");
            grpc__s_maybe_free(c);
            return 0;
        }
        c->resp[0] = 0;
        c->resp[1] = (uint8_t)(n >> 24);
        c->resp[2] = (uint8_t)(n >> 16);
        c->resp[3] = (uint8_t)(n >> 8);
        c->resp[4] = (uint8_t)n;
        if (n)
            (void)protobuf_c_message_pack(response, c->resp + GRPC_FRAME_HDR);
        c->resp_len = GRPC_FRAME_HDR + n;
        grpc__s_end(c, GRPC_STATUS_OK, NULL);
        grpc__s_send(c, 200, NULL);
    } else {
        grpc__s_fail(c, status, message);
    }
    grpc__s_maybe_free(c);
    return 0;
}

int grpc_server_call_add_trailer(grpc_server_call_t *c, const char *key, const uint8_t *value, size_t len)
{
    size_t kl = key ? strlen(key) : 0;
    if (!kl || key[0] == ':' || (len && !value) || c->n_tr >= GRPC__S_MAX_MD)
        return -EINVAL;
    for (size_t i = 0; i < kl; i++)
        if (!((key[i] >= 'a' && key[i] <= 'z') || (key[i] >= '0' && key[i] <= '9') || key[i] == '-' ||
              key[i] == '_' || key[i] == '.'))
            return -EINVAL;
    bool bin = grpc__s_is_bin(key, kl);
    if (!bin)
        for (size_t i = 0; i < len; i++)
            if (value[i] < 0x20 || value[i] > 0x7e)
                return -EINVAL; /* ASCII metadata only: binary needs a -bin key */
    if (c->n_tr == 0) {
        c->tr = grpc__s_alloc(c, GRPC__S_MAX_MD * sizeof *c->tr);
        if (!c->tr)
            return -ENOMEM;
    }
    size_t cap = bin ? grpc_base64_encoded_len(len) + 1 : len + 1;
    char *k = grpc__s_strndup(c, key, kl), *v = grpc__s_alloc(c, cap);
    if (!k || !v)
        return -ENOMEM;
    size_t vl = len;
    if (bin) {
        vl = (size_t)grpc_base64_encode(value, len, v, cap);
    } else {
        if (len)
            memcpy(v, value, len);
        v[len] = '\0';
    }
    c->tr[c->n_tr++] = (grpc_md_t){.key = k, .value = (const uint8_t *)v, .value_len = vl};
    return 0;
}

const grpc_md_t *grpc_server_call_metadata(const grpc_server_call_t *c, size_t *n)
{
    *n = c->n_md;
    return c->md;
}

const grpc_md_t *grpc_server_call_md_get(const grpc_server_call_t *c, const char *key)
{
    for (size_t i = 0; i < c->n_md; i++)
        if (strcmp(c->md[i].key, key) == 0)
            return &c->md[i];
    return NULL;
}

uint64_t grpc_server_call_deadline(const grpc_server_call_t *c)
{
    return c->deadline_ns;
}

bool grpc_server_call_done(const grpc_server_call_t *c)
{
    return c->ended;
}

trace_span_t *grpc_server_call_span(grpc_server_call_t *c)
{
    return &c->span;
}

const uint8_t *grpc_server_call_request_bytes(const grpc_server_call_t *c, size_t *len)
{
    *len = c->req_len;
    return c->req;
}

/* ------------------------------------------------------ memory connection */

struct st_grpc_server_mem_t {
    grpc__sconn_t *conn;
    bool failed;
};

int grpc_server_mem_new(grpc_server_t *srv, grpc_server_mem_t **out)
{
    grpc_server_mem_t *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    m->conn = grpc__s_conn_new(srv, "memory", 0);
    if (!m->conn) {
        free(m);
        return -ENOMEM;
    }
    *out = m;
    return 0;
}

int grpc_server_mem_feed(grpc_server_mem_t *m, const uint8_t *buf, size_t len)
{
    grpc__sconn_t *conn = m->conn;
    if (m->failed || conn->down)
        return -EPROTO;
    ssize_t rv = nghttp2_session_mem_recv(conn->ng, buf, len);
    if (rv >= 0)
        grpc__s_run_ready(conn->srv); /* as the ready timer would */
    if (rv < 0 || grpc__s_flush(conn) < 0) {
        m->failed = true;
        return -EPROTO;
    }
    return 0;
}

size_t grpc_server_mem_output(const grpc_server_mem_t *m)
{
    return m->conn->mem_out;
}

void grpc_server_mem_free(grpc_server_mem_t *m)
{
    if (!m)
        return;
    grpc__sconn_t *conn = m->conn;
    grpc__s_conn_down(conn); /* no-op when the server was freed first */
    free(conn->wbuf);
    free(conn);
    free(m);
}
