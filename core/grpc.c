/*
 * core/grpc.c - gRPC unary client over core/h2.c (contract in grpc.h).
 *
 * Wire format follows grpc/doc/PROTOCOL-HTTP2.md: a request is HEADERS
 * (:method POST, :scheme, :path, :authority, te: trailers, content-type
 * application/grpc, grpc-timeout, grpc-encoding, grpc-accept-encoding,
 * user-agent, custom metadata) and DATA holding one Length-Prefixed-Message;
 * a response is HEADERS, DATA, trailers (grpc-status, grpc-message,
 * grpc-status-details-bin) or a Trailers-Only HEADERS frame.  Headers and
 * trailers are treated alike: every field is collected, then the call is
 * decided when the stream closes.
 *
 * Channel states: IDLE (no connection; the next call connects), CONNECTING
 * (calls wait in the queue), READY (calls are submitted at once), BACKOFF
 * (the last connect failed: calls fail fast with UNAVAILABLE, as gRPC's
 * default non-wait-for-ready calls do, until the backoff timer moves the
 * channel back to IDLE).  Backoff is gRPC's connection backoff: 1 s, x1.6,
 * max 120 s, +-20 % jitter, reset by a successful connect.
 *
 * TLS (opts.tls): one SSL_CTX per channel (TLS >= 1.2, ALPN h2, peer
 * verification, optional client certificate); h2.c runs it over memory
 * BIOs.  The server name checked and sent as SNI is the authority's host.
 *
 * Completion: every finished call goes to the channel's done list and a
 * zero-delay timer delivers the callbacks.  So no callback ever runs inside
 * grpc_call_unary() or inside an nghttp2 callback, and a user callback may
 * free the channel (the free is deferred to the end of the delivery).
 */
#include "grpc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include <isa-l/igzip_lib.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "buildconf.h"
#include "core.h"
#include "grpc_int.h"
#include "h2.h"

#define GRPC__USER_AGENT "shop-trace-grpc-c/" SHOP_VERSION
#define GRPC__BACKOFF_INITIAL_NS 1000000000ull
#define GRPC__BACKOFF_MAX_NS 120000000000ull
#define GRPC__CONNECT_TIMEOUT_NS 20000000000ull

/* ------------------------------------------------------------ pure helpers */

long grpc_frame_parse(const uint8_t *buf, size_t len, uint32_t max_len, grpc_frame_t *out)
{
    if (len < 1)
        return -2;
    if (buf[0] > 1)
        return -1;
    if (len < GRPC_FRAME_HDR)
        return -2;
    uint32_t n = (uint32_t)buf[1] << 24 | (uint32_t)buf[2] << 16 | (uint32_t)buf[3] << 8 | buf[4];
    if (n > max_len)
        return -3;
    if (len - GRPC_FRAME_HDR < n)
        return -2;
    out->compressed = buf[0] == 1;
    out->msg = buf + GRPC_FRAME_HDR;
    out->len = n;
    return (long)(GRPC_FRAME_HDR + n);
}

static const struct {
    char unit;
    uint64_t ns;
} grpc__units[] = {
    {'H', 3600000000000ull}, {'M', 60000000000ull}, {'S', 1000000000ull},
    {'m', 1000000ull},       {'u', 1000ull},        {'n', 1ull},
};

int grpc_timeout_format(uint64_t ns, char *buf, size_t buflen)
{
    if (buflen < 10)
        return -1;
    /* Exact in the largest unit first (1 s -> "1S", not "1000m"). */
    for (size_t i = 0; i < sizeof grpc__units / sizeof grpc__units[0]; i++) {
        uint64_t u = grpc__units[i].ns;
        if (ns % u == 0 && ns / u <= 99999999u)
            return snprintf(buf, buflen, "%llu%c", (unsigned long long)(ns / u), grpc__units[i].unit);
    }
    /* Not exact: round up in the finest unit that fits, so the server never
     * sees a deadline earlier than ours. */
    for (size_t i = sizeof grpc__units / sizeof grpc__units[0]; i-- > 0;) {
        uint64_t u = grpc__units[i].ns;
        uint64_t v = ns / u + (ns % u != 0);
        if (v <= 99999999u)
            return snprintf(buf, buflen, "%llu%c", (unsigned long long)v, grpc__units[i].unit);
    }
    return snprintf(buf, buflen, "99999999H");
}

int grpc_timeout_parse(const char *s, size_t len, uint64_t *ns)
{
    if (len < 2 || len > 9)
        return -1;
    uint64_t v = 0;
    for (size_t i = 0; i + 1 < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    for (size_t i = 0; i < sizeof grpc__units / sizeof grpc__units[0]; i++) {
        if (s[len - 1] == grpc__units[i].unit) {
            uint64_t u = grpc__units[i].ns;
            *ns = v > UINT64_MAX / u ? UINT64_MAX : v * u;
            return 0;
        }
    }
    return -1;
}

static int grpc__hex(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

long grpc_percent_decode(const char *in, size_t len, char *out, size_t outcap)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        if (c == '%' && i + 2 < len && grpc__hex(in[i + 1]) >= 0 && grpc__hex(in[i + 2]) >= 0) {
            c = (char)(grpc__hex(in[i + 1]) << 4 | grpc__hex(in[i + 2]));
            i += 2;
        }
        if (o >= outcap)
            return -1;
        out[o++] = c;
    }
    return (long)o;
}

static const char grpc__b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int grpc__b64val(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

long grpc_base64_decode(const char *in, size_t len, uint8_t *out, size_t outcap)
{
    /* Padding is optional on the wire (PROTOCOL-HTTP2: accept both). */
    while (len > 0 && in[len - 1] == '=')
        len--;
    if (len % 4 == 1)
        return -1;
    size_t need = len / 4 * 3 + (len % 4 ? len % 4 - 1 : 0);
    if (need > outcap)
        return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = grpc__b64val(in[i]);
        if (v < 0)
            return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    return (long)o;
}

size_t grpc_base64_encoded_len(size_t len)
{
    return len / 3 * 4 + (len % 3 ? len % 3 + 1 : 0);
}

long grpc_base64_encode(const uint8_t *in, size_t len, char *out, size_t outcap)
{
    size_t need = grpc_base64_encoded_len(len);
    if (outcap < need + 1)
        return -1;
    size_t o = 0, i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = grpc__b64[v >> 18];
        out[o++] = grpc__b64[v >> 12 & 63];
        out[o++] = grpc__b64[v >> 6 & 63];
        out[o++] = grpc__b64[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = grpc__b64[v >> 18];
        out[o++] = grpc__b64[v >> 12 & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = grpc__b64[v >> 18];
        out[o++] = grpc__b64[v >> 12 & 63];
        out[o++] = grpc__b64[v >> 6 & 63];
    }
    out[o] = '\0';
    return (long)o;
}

grpc_status_t grpc_status_from_http(int http_status)
{
    switch (http_status) {
    case 400: return GRPC_STATUS_INTERNAL;
    case 401: return GRPC_STATUS_UNAUTHENTICATED;
    case 403: return GRPC_STATUS_PERMISSION_DENIED;
    case 404: return GRPC_STATUS_UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504: return GRPC_STATUS_UNAVAILABLE;
    default: return GRPC_STATUS_UNKNOWN;
    }
}

/* RST_STREAM / GOAWAY codes to gRPC statuses (PROTOCOL-HTTP2 "Errors"). */
static grpc_status_t grpc__status_from_h2(uint32_t code)
{
    switch (code) {
    case NGHTTP2_REFUSED_STREAM: return GRPC_STATUS_UNAVAILABLE; /* not processed: retry is safe */
    case NGHTTP2_CANCEL: return GRPC_STATUS_CANCELLED;
    case NGHTTP2_ENHANCE_YOUR_CALM: return GRPC_STATUS_RESOURCE_EXHAUSTED;
    case NGHTTP2_INADEQUATE_SECURITY: return GRPC_STATUS_PERMISSION_DENIED;
    default: return GRPC_STATUS_INTERNAL;
    }
}

const char *grpc_status_name(int status)
{
    switch (status) {
#define GRPC__STATUS_NAME(name, num)                                                               \
    case num: return #name;
        GRPC_STATUS_MAP(GRPC__STATUS_NAME)
#undef GRPC__STATUS_NAME
    default: return "?";
    }
}

/* ------------------------------------------------------------------ types */

typedef enum {
    GRPC__CH_IDLE = 1,
    GRPC__CH_CONNECTING,
    GRPC__CH_READY,
    GRPC__CH_BACKOFF,
} grpc__ch_state_t;

typedef enum {
    GRPC__CALL_QUEUED = 1, /* waiting for a connection */
    GRPC__CALL_SENT,       /* has a stream on call->conn */
    GRPC__CALL_DONE,       /* on the done list, result filled */
} grpc__call_state_t;

/* One HTTP/2 connection of the channel: the current one, or one draining
 * after GOAWAY. */
typedef struct st_grpc__conn_t {
    struct st_grpc__conn_t *next;
    grpc_channel_t *ch;
    h2_conn_t *h;
    bool connected;
} grpc__conn_t;

typedef struct st_grpc__call_t {
    struct st_grpc__call_t *next, *prev; /* live list or done list of ch */
    grpc_channel_t *ch;
    grpc__call_state_t state;
    grpc__conn_t *conn; /* SENT only */
    int32_t sid;
    grpc_unary_cb cb;
    void *arg;
    uint64_t deadline_ns; /* CLOCK_MONOTONIC; 0 = none */
    loop_timer_t deadline_timer;
    bool gzip;
    char *path;
    grpc_md_t *md; /* per-call metadata, -bin values already base64 */
    size_t n_md;
    uint8_t *body; /* owned: length-prefixed request message (prefix included) */
    size_t body_len;
    const uint8_t *msg_ref; /* borrowed (grpc_call_unary_borrowed): the message, after prefix[] */
    size_t msg_ref_len;
    uint8_t prefix[GRPC_FRAME_HDR]; /* the Length-Prefixed-Message header of msg_ref */
    /* response */
    int http_status;      /* 0 = no :status yet */
    int grpc_status;      /* -1 = no grpc-status */
    bool resp_gzip;       /* grpc-encoding: gzip */
    int local_status;     /* -1, or the status we decided (e.g. RESOURCE_EXHAUSTED) */
    uint8_t *rbody;       /* response DATA, rlen <= max_message + 5 */
    size_t rlen, rcap;
    grpc_md_t *trailers;  /* every header and trailer; key and value heap copies */
    size_t n_trailers, cap_trailers;
    char *message;        /* decoded grpc-message (or our own), NUL-terminated */
    uint8_t *details;
    size_t details_len;
    uint8_t *response; /* decompressed (or pointing into rbody) */
    bool response_owned;
    grpc_result_t res;
    trace_span_t *span; /* CLIENT span (grpc_call_unary_traced), else NULL; ended at finish */
} grpc__call_t;

struct st_grpc_channel_t {
    loop_t *loop;
    char host[64];
    uint16_t port;
    char *authority;
    grpc_md_t *headers; /* opts headers, -bin values already base64 */
    size_t n_headers;
    uint32_t max_message;
    uint64_t connect_timeout_ns;
    uint64_t keepalive_ns;
    SSL_CTX *tls;        /* NULL = h2c */
    char tls_name[256];  /* SNI / verified name: host part of the authority */
    grpc__ch_state_t state;
    grpc__conn_t *cur;    /* current connection (CONNECTING/READY) */
    grpc__conn_t *conns;  /* every connection, current and draining */
    uint64_t backoff_ns;  /* next backoff before jitter */
    loop_timer_t backoff_timer;
    grpc__call_t live; /* sentinel: QUEUED and SENT calls */
    grpc__call_t done; /* sentinel: DONE calls awaiting delivery */
    loop_timer_t deliver_timer;
    bool delivering, free_pending;
    grpc_channel_stats_t st;
    /* gzip (ISA-L igzip): one stream state per channel, allocated at the
     * first compressed message, and one level-1 buffer, at the first
     * message large enough for level 1; not per call. */
    struct isal_zstream *zs;
    uint8_t *zs_lvl1;
};

/* ---------------------------------------------------------------- helpers */

static void grpc__list_init(grpc__call_t *head)
{
    head->next = head->prev = head;
}

static void grpc__list_del(grpc__call_t *c)
{
    c->prev->next = c->next;
    c->next->prev = c->prev;
    c->next = c->prev = c;
}

static void grpc__list_add(grpc__call_t *head, grpc__call_t *c)
{
    c->next = head;
    c->prev = head->prev;
    c->prev->next = c;
    head->prev = c;
}

static void grpc__md_free(grpc_md_t *md, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free((void *)md[i].key);
        free((void *)md[i].value);
    }
    free(md);
}

static bool grpc__key_ok(const char *k)
{
    if (!k || !*k || k[0] == ':')
        return false;
    for (const char *p = k; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.'))
            return false;
    return true;
}

static bool grpc__is_bin(const char *k)
{
    size_t n = strlen(k);
    return n > 4 && memcmp(k + n - 4, "-bin", 4) == 0;
}

/* Deep copy of metadata for the wire: keys checked (lower-case, RFC 9113
 * 8.2.1 forbids upper case), "-bin" values base64-encoded.  Errors: -EINVAL,
 * -ENOMEM. */
static int grpc__md_copy(const grpc_md_t *in, size_t n, grpc_md_t **out)
{
    *out = NULL;
    if (n == 0)
        return 0;
    grpc_md_t *md = calloc(n, sizeof *md);
    if (!md)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        if (!grpc__key_ok(in[i].key) || (in[i].value_len && !in[i].value)) {
            grpc__md_free(md, i);
            return -EINVAL;
        }
        md[i].key = strdup(in[i].key);
        size_t cap = grpc__is_bin(in[i].key) ? grpc_base64_encoded_len(in[i].value_len) + 1 : in[i].value_len + 1;
        char *v = malloc(cap);
        if (!md[i].key || !v) {
            free(v);
            grpc__md_free(md, i + 1);
            return -ENOMEM;
        }
        if (grpc__is_bin(in[i].key)) {
            md[i].value_len = (size_t)grpc_base64_encode(in[i].value, in[i].value_len, v, cap);
        } else {
            for (size_t j = 0; j < in[i].value_len; j++) {
                /* Field values must not carry CR, LF or NUL (RFC 9113 8.2.1);
                 * nghttp2 would reset the stream, so refuse the call. */
                if (in[i].value[j] == '\r' || in[i].value[j] == '\n' || in[i].value[j] == 0) {
                    free(v);
                    grpc__md_free(md, i + 1);
                    return -EINVAL;
                }
            }
            if (in[i].value_len)
                memcpy(v, in[i].value, in[i].value_len);
            v[in[i].value_len] = '\0';
            md[i].value_len = in[i].value_len;
        }
        md[i].value = (const uint8_t *)v;
    }
    *out = md;
    return 0;
}

static void grpc__call_free(grpc__call_t *c)
{
    free(c->path);
    grpc__md_free(c->md, c->n_md);
    free(c->body);
    free(c->rbody);
    grpc__md_free(c->trailers, c->n_trailers);
    free(c->message);
    free(c->details);
    if (c->response_owned)
        free(c->response);
    free(c->span);
    free(c);
}

static const trace_scope_t grpc__scope = TRACE_SCOPE("shop.core.grpc", SHOP_VERSION);

/* Client spans are Error for every non-OK code (semconv v1.37.0 rpc). */
static void grpc__span_end(grpc__call_t *c, grpc_status_t status, const char *message)
{
    trace_span_t *s = c->span;
    trace_span_set_int(s, "rpc.grpc.status_code", (int64_t)status);
    if (status != GRPC_STATUS_OK) {
        trace_span_set_str(s, "error.type", grpc_status_name((int)status));
        trace_span_set_status(s, TRACE_STATUS_ERROR, message ? message : "", message ? strlen(message) : 0);
    }
    trace_span_end(s);
}

static void grpc__deliver(loop_t *loop, loop_timer_t *t, void *arg);
static void grpc__channel_destroy(grpc_channel_t *ch);

/* Finishes a call: the result is fixed now, the callback runs from the
 * delivery timer.  message NULL keeps a grpc-message already received. */
static void grpc__finish(grpc__call_t *c, grpc_status_t status, const char *message)
{
    grpc_channel_t *ch = c->ch;
    if (c->state == GRPC__CALL_DONE)
        return;
    loop_timer_stop(ch->loop, &c->deadline_timer);
    if (message) {
        free(c->message);
        c->message = strdup(message);
    }
    c->state = GRPC__CALL_DONE;
    c->conn = NULL;
    if (c->span)
        grpc__span_end(c, status, c->message);
    grpc__list_del(c);
    grpc__list_add(&ch->done, c);
    c->res.status = status;
    c->res.message = c->message ? c->message : "";
    c->res.details = c->details;
    c->res.details_len = c->details_len;
    c->res.trailers = c->trailers;
    c->res.n_trailers = c->n_trailers;
    if (status == GRPC_STATUS_OK) {
        c->res.response = c->response;
        c->res.response_len = c->response ? c->res.response_len : 0;
    } else {
        c->res.response = NULL;
        c->res.response_len = 0;
    }
    if (!loop_timer_active(&ch->deliver_timer))
        (void)loop_timer_start(ch->loop, &ch->deliver_timer, 0, 0, grpc__deliver, ch);
}

static void grpc__deliver(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    grpc_channel_t *ch = arg;
    ch->delivering = true;
    while (ch->done.next != &ch->done) {
        grpc__call_t *c = ch->done.next;
        grpc__list_del(c);
        ch->st.calls_finished++;
        c->cb(&c->res, c->arg);
        grpc__call_free(c);
    }
    ch->delivering = false;
    if (ch->free_pending)
        grpc__channel_destroy(ch);
}

/* ------------------------------------------------------------- responses */

static int grpc__add_trailer(grpc__call_t *c, const uint8_t *name, size_t namelen, const uint8_t *value,
                             size_t valuelen)
{
    if (c->n_trailers == c->cap_trailers) {
        size_t cap = c->cap_trailers ? c->cap_trailers * 2 : 8;
        grpc_md_t *n = realloc(c->trailers, cap * sizeof *n);
        if (!n)
            return -ENOMEM;
        c->trailers = n;
        c->cap_trailers = cap;
    }
    char *k = malloc(namelen + 1);
    uint8_t *v = malloc(valuelen + 1);
    if (!k || !v) {
        free(k);
        free(v);
        return -ENOMEM;
    }
    memcpy(k, name, namelen);
    k[namelen] = '\0';
    size_t vlen = valuelen;
    if (grpc__is_bin(k)) {
        long d = grpc_base64_decode((const char *)value, valuelen, v, valuelen + 1);
        vlen = d < 0 ? 0 : (size_t)d; /* undecodable: reported empty */
    } else if (valuelen) {
        memcpy(v, value, valuelen);
    }
    v[vlen] = 0;
    c->trailers[c->n_trailers++] = (grpc_md_t){.key = k, .value = v, .value_len = vlen};
    return 0;
}

static bool grpc__eq(const uint8_t *a, size_t alen, const char *lit)
{
    return alen == strlen(lit) && memcmp(a, lit, alen) == 0;
}

static void grpc__on_header(h2_conn_t *h, int32_t sid, void *sdata, const uint8_t *name, size_t namelen,
                            const uint8_t *value, size_t valuelen, void *arg)
{
    (void)h;
    (void)sid;
    (void)arg;
    grpc__call_t *c = sdata;
    if (grpc__eq(name, namelen, ":status")) {
        int st = 0;
        for (size_t i = 0; i < valuelen && i < 3; i++)
            st = st * 10 + (value[i] >= '0' && value[i] <= '9' ? value[i] - '0' : 0);
        c->http_status = st;
        return;
    }
    if (grpc__add_trailer(c, name, namelen, value, valuelen) < 0) {
        c->local_status = GRPC_STATUS_RESOURCE_EXHAUSTED;
        return;
    }
    const grpc_md_t *md = &c->trailers[c->n_trailers - 1];
    if (grpc__eq(name, namelen, "grpc-status")) {
        int st = 0;
        bool ok = valuelen > 0 && valuelen <= 3;
        for (size_t i = 0; ok && i < valuelen; i++) {
            ok = value[i] >= '0' && value[i] <= '9';
            st = st * 10 + (value[i] - '0');
        }
        /* Codes beyond the known range are UNKNOWN (statuscodes.md). */
        c->grpc_status = !ok ? GRPC_STATUS_UNKNOWN : st > 16 ? GRPC_STATUS_UNKNOWN : st;
    } else if (grpc__eq(name, namelen, "grpc-message")) {
        free(c->message);
        c->message = malloc(valuelen + 1);
        if (c->message) {
            long n = grpc_percent_decode((const char *)value, valuelen, c->message, valuelen);
            c->message[n < 0 ? 0 : n] = '\0';
        }
    } else if (grpc__eq(name, namelen, "grpc-status-details-bin")) {
        free(c->details);
        c->details = malloc(md->value_len ? md->value_len : 1);
        if (c->details) {
            memcpy(c->details, md->value, md->value_len);
            c->details_len = md->value_len;
        }
    } else if (grpc__eq(name, namelen, "grpc-encoding")) {
        c->resp_gzip = grpc__eq(value, valuelen, "gzip");
    }
}

static int grpc__on_data(h2_conn_t *h, int32_t sid, void *sdata, const uint8_t *data, size_t len, void *arg)
{
    (void)h;
    (void)sid;
    (void)arg;
    grpc__call_t *c = sdata;
    if (c->local_status >= 0)
        return 1;
    /* A unary response is one message: more than max + header is over the
     * limit whatever the framing, so stop early instead of buffering. */
    if (c->rlen + len > (size_t)c->ch->max_message + GRPC_FRAME_HDR) {
        c->local_status = GRPC_STATUS_RESOURCE_EXHAUSTED;
        free(c->message);
        c->message = strdup("grpc: response message larger than max_message");
        return 1;
    }
    if (c->rlen + len > c->rcap) {
        size_t cap = c->rcap ? c->rcap : 1024;
        while (cap < c->rlen + len)
            cap *= 2;
        uint8_t *n = realloc(c->rbody, cap);
        if (!n) {
            c->local_status = GRPC_STATUS_RESOURCE_EXHAUSTED;
            return 1;
        }
        c->rbody = n;
        c->rcap = cap;
    }
    memcpy(c->rbody + c->rlen, data, len);
    c->rlen += len;
    return 0;
}

/* gunzip (declared in grpc_int.h: the server uses it too). */
int grpc__gunzip(const uint8_t *in, size_t len, uint32_t max, uint8_t **out, size_t *outlen)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK)
        return -ENOMEM;
    size_t cap = len * 4 + 64;
    if (cap > (size_t)max + 1)
        cap = (size_t)max + 1;
    uint8_t *buf = malloc(cap);
    int rc = 0;
    if (!buf) {
        inflateEnd(&zs);
        return -ENOMEM;
    }
    zs.next_in = (Bytef *)(uintptr_t)in;
    zs.avail_in = (uInt)len;
    for (;;) {
        zs.next_out = buf + zs.total_out;
        zs.avail_out = (uInt)(cap - zs.total_out);
        int zr = inflate(&zs, Z_FINISH);
        if (zr == Z_STREAM_END)
            break;
        if (zs.total_out > max) {
            rc = -EMSGSIZE;
            break;
        }
        if (zr == Z_BUF_ERROR && zs.avail_out == 0) {
            /* Output full: grow up to max + 1 (one byte over proves "too big"). */
            if (cap > max) {
                rc = -EMSGSIZE;
                break;
            }
            size_t ncap = cap * 2 > (size_t)max + 1 ? (size_t)max + 1 : cap * 2;
            uint8_t *n = realloc(buf, ncap);
            if (!n) {
                rc = -ENOMEM;
                break;
            }
            buf = n;
            cap = ncap;
            continue;
        }
        if (zr != Z_OK) {
            rc = -EBADMSG;
            break;
        }
    }
    if (rc == 0 && zs.total_out > max)
        rc = -EMSGSIZE;
    *outlen = zs.total_out;
    inflateEnd(&zs);
    if (rc < 0) {
        free(buf);
        return rc;
    }
    *out = buf;
    return 0;
}

/* Decides the call once its stream closed (all headers, data, trailers in). */
static void grpc__complete(grpc__call_t *c, uint32_t h2_error)
{
    if (c->local_status >= 0) {
        grpc__finish(c, (grpc_status_t)c->local_status, NULL);
        return;
    }
    if (c->grpc_status < 0) {
        char msg[256];
        grpc_status_t st;
        if (h2_error != 0) {
            st = grpc__status_from_h2(h2_error);
            snprintf(msg, sizeof msg, "grpc: stream reset by peer (HTTP/2 error %s)", nghttp2_http2_strerror(h2_error));
        } else if (c->http_status != 200) {
            st = grpc_status_from_http(c->http_status);
            snprintf(msg, sizeof msg, "grpc: HTTP status %d without grpc-status", c->http_status);
        } else {
            st = GRPC_STATUS_UNKNOWN;
            snprintf(msg, sizeof msg, "grpc: response ended without grpc-status");
        }
        grpc__finish(c, st, msg);
        return;
    }
    if (c->grpc_status != GRPC_STATUS_OK) {
        grpc__finish(c, (grpc_status_t)c->grpc_status, NULL);
        return;
    }
    grpc_frame_t f;
    long n = grpc_frame_parse(c->rbody, c->rlen, c->ch->max_message, &f);
    if (n == -3) {
        grpc__finish(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "grpc: response message larger than max_message");
        return;
    }
    if (n < 0 || (size_t)n != c->rlen) {
        grpc__finish(c, GRPC_STATUS_INTERNAL,
                     n == -2 ? "grpc: unary response without a complete message"
                             : "grpc: malformed response message framing");
        return;
    }
    if (f.compressed) {
        if (!c->resp_gzip) {
            grpc__finish(c, GRPC_STATUS_INTERNAL, "grpc: compressed message without a known grpc-encoding");
            return;
        }
        size_t outlen = 0;
        int rc = grpc__gunzip(f.msg, f.len, c->ch->max_message, &c->response, &outlen);
        if (rc < 0) {
            grpc__finish(c, rc == -EMSGSIZE ? GRPC_STATUS_RESOURCE_EXHAUSTED : GRPC_STATUS_INTERNAL,
                         rc == -EMSGSIZE ? "grpc: decompressed response larger than max_message"
                                         : "grpc: gzip response does not decompress");
            return;
        }
        c->response_owned = true;
        c->res.response_len = outlen;
    } else {
        c->response = (uint8_t *)(uintptr_t)f.msg;
        c->res.response_len = f.len;
    }
    grpc__finish(c, GRPC_STATUS_OK, NULL);
}

static void grpc__on_stream_close(h2_conn_t *h, int32_t sid, void *sdata, uint32_t h2_error, void *arg)
{
    (void)h;
    (void)sid;
    (void)arg;
    grpc__complete(sdata, h2_error);
}

/* -------------------------------------------------------------- submitting */

/* Builds the request headers (PROTOCOL-HTTP2 "Requests") and submits. */
static void grpc__submit(grpc__call_t *c)
{
    grpc_channel_t *ch = c->ch;
    nghttp2_nv nv[16 + 64];
    size_t n = 0, max = sizeof nv / sizeof nv[0];
    char tbuf[16];
#define GRPC__NV(k, v, vl)                                                                         \
    nv[n++] = (nghttp2_nv){(uint8_t *)(uintptr_t)(k), (uint8_t *)(uintptr_t)(v), strlen(k), (vl),  \
                           NGHTTP2_NV_FLAG_NONE}
#define GRPC__NVS(k, v) GRPC__NV(k, v, strlen(v))
    GRPC__NVS(":method", "POST");
    GRPC__NVS(":scheme", ch->tls ? "https" : "http");
    GRPC__NVS(":path", c->path);
    GRPC__NVS(":authority", ch->authority);
    GRPC__NVS("te", "trailers");
    GRPC__NVS("content-type", "application/grpc");
    if (c->deadline_ns) {
        uint64_t now = loop_now_ns();
        uint64_t left = c->deadline_ns > now ? c->deadline_ns - now : 1;
        if (grpc_timeout_format(left, tbuf, sizeof tbuf) > 0)
            GRPC__NVS("grpc-timeout", tbuf);
    }
    if (c->gzip)
        GRPC__NVS("grpc-encoding", "gzip");
    GRPC__NVS("grpc-accept-encoding", "gzip");
    GRPC__NVS("user-agent", GRPC__USER_AGENT);
    /* Custom metadata after the reserved headers (the spec's order). */
    size_t nextra = ch->n_headers + c->n_md;
    nghttp2_nv *all = nv;
    if (n + nextra > max) {
        all = malloc((n + nextra) * sizeof *all);
        if (!all) {
            grpc__finish(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "grpc: out of memory building headers");
            return;
        }
        memcpy(all, nv, n * sizeof *all);
    }
    for (size_t i = 0; i < ch->n_headers; i++)
        all[n++] = (nghttp2_nv){(uint8_t *)(uintptr_t)ch->headers[i].key, (uint8_t *)(uintptr_t)ch->headers[i].value,
                                strlen(ch->headers[i].key), ch->headers[i].value_len, NGHTTP2_NV_FLAG_NONE};
    for (size_t i = 0; i < c->n_md; i++)
        all[n++] = (nghttp2_nv){(uint8_t *)(uintptr_t)c->md[i].key, (uint8_t *)(uintptr_t)c->md[i].value,
                                strlen(c->md[i].key), c->md[i].value_len, NGHTTP2_NV_FLAG_NONE};
#undef GRPC__NV
#undef GRPC__NVS
    int32_t sid = !c->body
                      ? h2_submit(ch->cur->h, all, n, c->prefix, sizeof c->prefix, c->msg_ref, c->msg_ref_len, c)
                      : h2_submit(ch->cur->h, all, n, NULL, 0, c->body, c->body_len, c);
    if (all != nv)
        free(all);
    if (sid < 0) {
        char msg[256];
        snprintf(msg, sizeof msg, "grpc: cannot start an HTTP/2 stream: %s", nghttp2_strerror(sid));
        grpc__finish(c, GRPC_STATUS_UNAVAILABLE, msg);
        return;
    }
    c->sid = sid;
    c->conn = ch->cur;
    c->state = GRPC__CALL_SENT;
}

static void grpc__submit_queued(grpc_channel_t *ch)
{
    grpc__call_t *c = ch->live.next;
    while (c != &ch->live) {
        grpc__call_t *next = c->next; /* c may move to the done list */
        if (c->state == GRPC__CALL_QUEUED)
            grpc__submit(c);
        c = next;
    }
}

/* Fails the calls bound to conn (or, conn NULL, the queued ones). */
static void grpc__fail_calls(grpc_channel_t *ch, grpc__conn_t *conn, grpc_status_t st, const char *msg)
{
    grpc__call_t *c = ch->live.next;
    while (c != &ch->live) {
        grpc__call_t *next = c->next;
        if ((conn && c->state == GRPC__CALL_SENT && c->conn == conn) || (!conn && c->state == GRPC__CALL_QUEUED))
            grpc__finish(c, st, msg);
        c = next;
    }
}

static void grpc__backoff_done(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    grpc_channel_t *ch = arg;
    if (ch->state == GRPC__CH_BACKOFF)
        ch->state = GRPC__CH_IDLE; /* lazily: the next call connects */
}

static void grpc__enter_backoff(grpc_channel_t *ch)
{
    /* +-20 % jitter so a fleet of exporters does not reconnect in step. */
    uint64_t b = ch->backoff_ns;
    double j = 0.8 + 0.4 * ((double)rand() / (double)RAND_MAX);
    uint64_t delay = (uint64_t)((double)b * j);
    uint64_t nb = (uint64_t)((double)b * 1.6);
    ch->backoff_ns = nb > GRPC__BACKOFF_MAX_NS ? GRPC__BACKOFF_MAX_NS : nb;
    ch->state = GRPC__CH_BACKOFF;
    (void)loop_timer_start(ch->loop, &ch->backoff_timer, delay, 0, grpc__backoff_done, ch);
}

static void grpc__on_connect(h2_conn_t *h, int status, void *arg)
{
    (void)h;
    grpc__conn_t *gc = arg;
    grpc_channel_t *ch = gc->ch;
    if (status < 0) {
        ch->st.connect_failures++;
        return; /* on_down follows and fails the queue */
    }
    gc->connected = true;
    ch->st.connects++;
    ch->st.connected = true;
    ch->backoff_ns = GRPC__BACKOFF_INITIAL_NS;
    if (ch->cur == gc) {
        ch->state = GRPC__CH_READY;
        grpc__submit_queued(ch);
    }
}

static void grpc__on_goaway(h2_conn_t *h, int32_t last_sid, uint32_t h2_error, void *arg)
{
    (void)h;
    (void)last_sid;
    (void)h2_error;
    grpc__conn_t *gc = arg;
    grpc_channel_t *ch = gc->ch;
    ch->st.goaways++;
    /* Streams up to last_sid finish on this connection; nghttp2 closes the
     * others with REFUSED_STREAM -> UNAVAILABLE.  New calls need a new
     * connection: the next call opens one. */
    if (ch->cur == gc) {
        ch->cur = NULL;
        ch->state = GRPC__CH_IDLE;
        ch->st.connected = false;
    }
}

static void grpc__on_down(h2_conn_t *h, int status, const char *why, void *arg)
{
    grpc__conn_t *gc = arg;
    grpc_channel_t *ch = gc->ch;
    char msg[256];
    snprintf(msg, sizeof msg, "grpc: connection to %s:%u %s: %s", ch->host, ch->port,
             gc->connected ? "lost" : "failed", why && *why ? why : status ? strerror(-status) : "closed");
    grpc__fail_calls(ch, gc, GRPC_STATUS_UNAVAILABLE, msg);
    h2_counters_t hc;
    h2_conn_counters(h, &hc); /* keep the bytes of connections that are gone */
    ch->st.bytes_sent += hc.bytes_sent;
    ch->st.bytes_received += hc.bytes_received;
    for (grpc__conn_t **pp = &ch->conns; *pp; pp = &(*pp)->next) {
        if (*pp == gc) {
            *pp = gc->next;
            break;
        }
    }
    if (ch->cur == gc) {
        ch->cur = NULL;
        ch->st.connected = false;
        if (gc->connected) {
            ch->state = GRPC__CH_IDLE; /* was READY: reconnect at once on the next call */
        } else {
            grpc__fail_calls(ch, NULL, GRPC_STATUS_UNAVAILABLE, msg);
            grpc__enter_backoff(ch);
        }
    }
    free(gc);
}

static const h2_callbacks_t grpc__h2_cbs = {
    .on_connect = grpc__on_connect,
    .on_header = grpc__on_header,
    .on_data = grpc__on_data,
    .on_stream_close = grpc__on_stream_close,
    .on_goaway = grpc__on_goaway,
    .on_down = grpc__on_down,
};

static int grpc__connect(grpc_channel_t *ch)
{
    grpc__conn_t *gc = calloc(1, sizeof *gc);
    if (!gc)
        return -ENOMEM;
    gc->ch = ch;
    int rc = h2_conn_connect(ch->loop, ch->host, ch->port, ch->connect_timeout_ns, ch->keepalive_ns, ch->tls,
                             ch->tls_name, &grpc__h2_cbs, gc, &gc->h);
    if (rc < 0) {
        free(gc);
        return rc;
    }
    gc->next = ch->conns;
    ch->conns = gc;
    ch->cur = gc;
    ch->state = GRPC__CH_CONNECTING;
    return 0;
}

/* ------------------------------------------------------------------ calls */

static void grpc__deadline(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    grpc__call_t *c = arg;
    if (c->state == GRPC__CALL_SENT && c->conn)
        h2_cancel(c->conn->h, c->sid); /* RST_STREAM(CANCEL), as gRPC clients do */
    grpc__finish(c, GRPC_STATUS_DEADLINE_EXCEEDED, "grpc: deadline exceeded (local timer)");
}

/* Messages from this size on are compressed at igzip level 1, smaller ones at level 0. */
#define GRPC__GZIP_LVL1_MIN (64u * 1024)

/* Frames msg as one Length-Prefixed-Message, gzip-compressed if asked.
 * borrowed (and no gzip): msg is referenced, not copied, behind prefix[]. */
static int grpc__frame_body(grpc__call_t *c, const uint8_t *msg, size_t len, bool borrowed)
{
    if (!c->gzip && borrowed) {
        c->prefix[0] = 0;
        c->prefix[1] = (uint8_t)(len >> 24);
        c->prefix[2] = (uint8_t)(len >> 16);
        c->prefix[3] = (uint8_t)(len >> 8);
        c->prefix[4] = (uint8_t)len;
        c->msg_ref = msg;
        c->msg_ref_len = len;
        return 0;
    }
    if (!c->gzip) {
        c->body = malloc(GRPC_FRAME_HDR + len);
        if (!c->body)
            return -ENOMEM;
        c->body[0] = 0;
        if (len)
            memcpy(c->body + GRPC_FRAME_HDR, msg, len);
        c->body_len = GRPC_FRAME_HDR + len;
    } else {
        /* ISA-L's igzip, stateless (whole message in one call). On OTLP
         * batches it takes a fifth of the CPU of zlib's fastest level
         * (perf/RESULTS.md, Exporter). Its level 1 builds a Huffman table
         * per message (~10 us), worth it from ~64 KiB on (a body ~20 %
         * smaller than level 0's); smaller messages use level 0 and its
         * built-in table. Incompressible input comes out as stored blocks,
         * for which the buffer below always has room. */
        grpc_channel_t *ch = c->ch;
        if (len > UINT32_MAX - (1u << 20))
            return -EMSGSIZE;
        bool lvl1 = len >= GRPC__GZIP_LVL1_MIN;
        if (!ch->zs)
            ch->zs = malloc(sizeof *ch->zs);
        if (lvl1 && !ch->zs_lvl1)
            ch->zs_lvl1 = malloc(ISAL_DEF_LVL1_SMALL);
        if (!ch->zs || (lvl1 && !ch->zs_lvl1))
            return -ENOMEM;
        struct isal_zstream *zs = ch->zs;
        size_t bound = len + 5 * (len / 65535 + 1) + 18 + 64; /* stored blocks + gzip header/trailer */
        c->body = malloc(GRPC_FRAME_HDR + bound);
        if (!c->body)
            return -ENOMEM;
        isal_deflate_stateless_init(zs);
        zs->gzip_flag = IGZIP_GZIP;
        zs->flush = NO_FLUSH;
        zs->end_of_stream = 1;
        if (lvl1) {
            zs->level = 1;
            zs->level_buf = ch->zs_lvl1;
            zs->level_buf_size = ISAL_DEF_LVL1_SMALL;
        }
        zs->next_in = (uint8_t *)(uintptr_t)msg;
        zs->avail_in = (uint32_t)len;
        zs->next_out = c->body + GRPC_FRAME_HDR;
        zs->avail_out = (uint32_t)bound;
        if (isal_deflate_stateless(zs) != COMP_OK)
            return -ENOMEM;
        size_t out = zs->total_out;
        c->body[0] = 1;
        c->body_len = GRPC_FRAME_HDR + out;
    }
    uint32_t n = (uint32_t)(c->body_len - GRPC_FRAME_HDR);
    c->body[1] = (uint8_t)(n >> 24);
    c->body[2] = (uint8_t)(n >> 16);
    c->body[3] = (uint8_t)(n >> 8);
    c->body[4] = (uint8_t)n;
    return 0;
}

static int grpc__call_start(grpc_channel_t *ch, const char *path, const uint8_t *msg, size_t msg_len, bool gzip,
                            bool borrowed, uint64_t timeout_ns, const grpc_md_t *md, size_t n_md,
                            trace_span_t *span, grpc_unary_cb cb, void *arg);

int grpc_call_unary(grpc_channel_t *ch, const char *path, const uint8_t *msg, size_t msg_len, bool gzip,
                    uint64_t timeout_ns, const grpc_md_t *md, size_t n_md, grpc_unary_cb cb, void *arg)
{
    return grpc__call_start(ch, path, msg, msg_len, gzip, false, timeout_ns, md, n_md, NULL, cb, arg);
}

int grpc_call_unary_borrowed(grpc_channel_t *ch, const char *path, const uint8_t *msg, size_t msg_len, bool gzip,
                             uint64_t timeout_ns, const grpc_md_t *md, size_t n_md, grpc_unary_cb cb, void *arg)
{
    return grpc__call_start(ch, path, msg, msg_len, gzip, true, timeout_ns, md, n_md, NULL, cb, arg);
}

/* trace_inject carrier: the call's metadata plus traceparent/tracestate.
 * trace_inject's values live only while the callback runs (traceparent is
 * formatted on trace_inject's stack), so the carrier copies them into vals. */
typedef struct {
    grpc_md_t *md;
    size_t n, cap;
    char vals[TRACE_TRACEPARENT_LEN + TRACE_TRACESTATE_MAX + 2];
    size_t used;
} grpc__carrier_t;

static int grpc__carrier_set(void *carrier, const char *name, const char *value, size_t vlen)
{
    grpc__carrier_t *c = carrier;
    if (c->n == c->cap || vlen > sizeof c->vals - c->used)
        return -ENOSPC;
    char *v = c->vals + c->used;
    memcpy(v, value, vlen);
    c->used += vlen;
    c->md[c->n++] = (grpc_md_t){.key = name, .value = (const uint8_t *)v, .value_len = vlen};
    return 0;
}

int grpc_call_unary_traced(grpc_channel_t *ch, const char *path, const uint8_t *msg, size_t msg_len,
                           bool gzip, uint64_t timeout_ns, const grpc_md_t *md, size_t n_md,
                           const struct st_trace_context_t *parent, grpc_unary_cb cb, void *arg)
{
    if (!ch || !path || path[0] != '/' || (n_md && !md))
        return -EINVAL;
    trace_span_t *span = malloc(sizeof *span);
    grpc_md_t *all = malloc((n_md + 3) * sizeof *all);
    if (!span || !all) {
        free(span);
        free(all);
        return -ENOMEM;
    }
    /* "/pkg.Service/Method" -> span name and rpc.service / rpc.method. */
    const char *name = path + 1, *slash = strchr(name, '/');
    trace_span_start(span, &grpc__scope, name, strlen(name), TRACE_KIND_CLIENT, parent);
    trace_span_set_str(span, "rpc.system", "grpc");
    if (slash) {
        trace_span_set_str_n(span, "rpc.service", 11, name, (size_t)(slash - name));
        trace_span_set_str(span, "rpc.method", slash + 1);
    }
    trace_span_set_str(span, "server.address", ch->host);
    trace_span_set_int(span, "server.port", ch->port);
    if (n_md)
        memcpy(all, md, n_md * sizeof *all);
    /* The keys are literals and the values sit in car.vals: grpc__call_start
     * copies both before this function returns. */
    grpc__carrier_t car = {.md = all, .n = n_md, .cap = n_md + 3};
    (void)trace_inject(trace_span_context(span), NULL, grpc__carrier_set, &car);
    int rc = grpc__call_start(ch, path, msg, msg_len, gzip, false, timeout_ns, all, car.n, span, cb, arg);
    free(all);
    if (rc < 0) {
        trace_span_set_str(span, "error.type", "_OTHER");
        trace_span_set_status(span, TRACE_STATUS_ERROR, strerror(-rc), strlen(strerror(-rc)));
        trace_span_end(span);
        free(span);
    }
    return rc;
}

static int grpc__call_start(grpc_channel_t *ch, const char *path, const uint8_t *msg, size_t msg_len, bool gzip,
                            bool borrowed, uint64_t timeout_ns, const grpc_md_t *md, size_t n_md,
                            trace_span_t *span, grpc_unary_cb cb, void *arg)
{
    if (!ch || ch->free_pending || !path || path[0] != '/' || !cb || (msg_len && !msg) || (n_md && !md))
        return -EINVAL;
    if (msg_len > ch->max_message)
        return -EMSGSIZE;
    grpc__call_t *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->ch = ch;
    c->next = c->prev = c;
    c->cb = cb;
    c->arg = arg;
    c->gzip = gzip;
    c->grpc_status = -1;
    c->local_status = -1;
    loop_timer_init(&c->deadline_timer);
    int rc = -ENOMEM;
    c->path = strdup(path);
    if (!c->path)
        goto err;
    rc = grpc__md_copy(md, n_md, &c->md);
    if (rc < 0)
        goto err;
    c->n_md = n_md;
    rc = grpc__frame_body(c, msg, msg_len, borrowed);
    if (rc < 0)
        goto err;
    if (timeout_ns) {
        c->deadline_ns = loop_now_ns() + timeout_ns;
        rc = loop_timer_start(ch->loop, &c->deadline_timer, timeout_ns, 0, grpc__deadline, c);
        if (rc < 0)
            goto err;
    }
    c->span = span; /* from here on the call owns the span */
    c->state = GRPC__CALL_QUEUED;
    grpc__list_add(&ch->live, c);
    ch->st.calls_started++;
    switch (ch->state) {
    case GRPC__CH_READY:
        grpc__submit(c);
        break;
    case GRPC__CH_CONNECTING:
        break;
    case GRPC__CH_IDLE:
        rc = grpc__connect(ch);
        if (rc < 0) {
            char m[256];
            snprintf(m, sizeof m, "grpc: connect to %s:%u: %s", ch->host, ch->port, strerror(-rc));
            grpc__finish(c, GRPC_STATUS_UNAVAILABLE, m);
        }
        break;
    case GRPC__CH_BACKOFF:
        grpc__finish(c, GRPC_STATUS_UNAVAILABLE, "grpc: channel in reconnect backoff after a failed connect");
        break;
    }
    return 0;
err:
    loop_timer_stop(ch->loop, &c->deadline_timer);
    grpc__call_free(c);
    return rc;
}

/* --------------------------------------------------------------- channels */

/* Client TLS context: TLS >= 1.2 (RFC 9113 section 9.2), ALPN "h2", peer
 * verification against tls_ca_file or the system store, optional client
 * certificate.  Errors: -ENOMEM, -ENOENT/-EINVAL (unreadable or bad files),
 * with the OpenSSL reason in err. */
static int grpc__tls_ctx(const grpc_channel_opts_t *opts, SSL_CTX **out, char *err, size_t errlen)
{
    const char *step = "SSL_CTX_new";
    int rc = -ENOMEM;
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        goto err;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    static const unsigned char alpn[] = {2, 'h', '2'};
    step = "SSL_CTX_set_alpn_protos";
    if (SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn) != 0)
        goto err;
    rc = -ENOENT;
    if (opts->tls_ca_file) {
        step = "SSL_CTX_load_verify_locations(tls_ca_file)";
        if (SSL_CTX_load_verify_locations(ctx, opts->tls_ca_file, NULL) != 1)
            goto err;
    } else {
        step = "SSL_CTX_set_default_verify_paths";
        if (SSL_CTX_set_default_verify_paths(ctx) != 1)
            goto err;
    }
    if (opts->tls_cert_file || opts->tls_key_file) {
        step = "SSL_CTX_use_certificate_chain_file(tls_cert_file)";
        if (!opts->tls_cert_file || SSL_CTX_use_certificate_chain_file(ctx, opts->tls_cert_file) != 1)
            goto err;
        step = "SSL_CTX_use_PrivateKey_file(tls_key_file)";
        const char *key = opts->tls_key_file ? opts->tls_key_file : opts->tls_cert_file;
        if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
            goto err;
        rc = -EINVAL;
        step = "SSL_CTX_check_private_key";
        if (SSL_CTX_check_private_key(ctx) != 1)
            goto err;
    }
    SSL_CTX_set_verify(ctx, opts->tls_insecure_skip_verify ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
    *out = ctx;
    return 0;
err:
    if (err) {
        char ebuf[160] = "";
        unsigned long e = ERR_get_error();
        if (e)
            ERR_error_string_n(e, ebuf, sizeof ebuf);
        snprintf(err, errlen, "grpc_channel_new: TLS set-up: %s failed%s%s", step, ebuf[0] ? ": " : "", ebuf);
    }
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return rc;
}

int grpc_channel_new(loop_t *loop, const char *host, uint16_t port, const grpc_channel_opts_t *opts,
                     grpc_channel_t **out, char *err, size_t errlen)
{
    static const grpc_channel_opts_t defaults;
    if (!opts)
        opts = &defaults;
    if (err && errlen)
        err[0] = '\0';
    if (!loop || !host || !*host || strlen(host) >= sizeof(((grpc_channel_t *)0)->host) || port == 0 || !out) {
        if (err)
            snprintf(err, errlen, "grpc_channel_new: bad target %s:%u", host ? host : "(null)", port);
        return -EINVAL;
    }
    grpc_channel_t *ch = calloc(1, sizeof *ch);
    if (!ch)
        goto nomem;
    ch->loop = loop;
    snprintf(ch->host, sizeof ch->host, "%s", host);
    ch->port = port;
    ch->max_message = opts->max_message ? opts->max_message : GRPC_MAX_MESSAGE_DEFAULT;
    ch->connect_timeout_ns = opts->connect_timeout_ns ? opts->connect_timeout_ns : GRPC__CONNECT_TIMEOUT_NS;
    ch->keepalive_ns = opts->keepalive_ns;
    ch->state = GRPC__CH_IDLE;
    ch->backoff_ns = GRPC__BACKOFF_INITIAL_NS;
    grpc__list_init(&ch->live);
    grpc__list_init(&ch->done);
    loop_timer_init(&ch->backoff_timer);
    loop_timer_init(&ch->deliver_timer);
    if (opts->authority) {
        ch->authority = strdup(opts->authority);
    } else {
        size_t n = strlen(host) + 16;
        ch->authority = malloc(n);
        if (ch->authority)
            snprintf(ch->authority, n, strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, port);
    }
    if (!ch->authority)
        goto nomem;
    int rc = grpc__md_copy(opts->headers, opts->n_headers, &ch->headers);
    if (rc < 0) {
        if (err)
            snprintf(err, errlen, "grpc_channel_new(%s:%u): %s", host, port,
                     rc == -EINVAL ? "bad header (keys lower-case, no CR/LF in values)" : "out of memory");
        free(ch->authority);
        free(ch);
        return rc;
    }
    ch->n_headers = opts->n_headers;
    if (opts->tls) {
        /* Server name for SNI and verification: the authority's host part
         * (it may name the certificate while host is a numeric address). */
        const char *a = ch->authority, *end;
        if (a[0] == '[') {
            a++;
            end = strchr(a, ']');
        } else {
            end = strrchr(a, ':');
        }
        size_t n = end ? (size_t)(end - a) : strlen(a);
        snprintf(ch->tls_name, sizeof ch->tls_name, "%.*s", (int)(n < 255 ? n : 255), a);
        rc = grpc__tls_ctx(opts, &ch->tls, err, errlen);
        if (rc < 0) {
            grpc__md_free(ch->headers, ch->n_headers);
            free(ch->authority);
            free(ch);
            return rc;
        }
    }
    *out = ch;
    return 0;
nomem:
    if (ch)
        free(ch->authority);
    free(ch);
    if (err)
        snprintf(err, errlen, "grpc_channel_new(%s:%u): out of memory", host, port);
    return -ENOMEM;
}

static void grpc__channel_destroy(grpc_channel_t *ch)
{
    loop_timer_stop(ch->loop, &ch->deliver_timer);
    loop_timer_stop(ch->loop, &ch->backoff_timer);
    grpc__md_free(ch->headers, ch->n_headers);
    SSL_CTX_free(ch->tls);
    free(ch->authority);
    free(ch->zs);
    free(ch->zs_lvl1);
    free(ch);
}

void grpc_channel_free(grpc_channel_t *ch)
{
    if (!ch || ch->free_pending)
        return;
    ch->free_pending = true;
    /* Close connections first (silently: no h2 callback runs after this),
     * so no stream can refer to a call freed below. */
    while (ch->conns) {
        grpc__conn_t *gc = ch->conns;
        ch->conns = gc->next;
        h2_conn_close(gc->h);
        free(gc);
    }
    ch->cur = NULL;
    grpc__call_t *c;
    while ((c = ch->live.next) != &ch->live)
        grpc__finish(c, GRPC_STATUS_CANCELLED, "grpc: channel freed");
    if (ch->delivering)
        return; /* grpc__deliver runs the rest and destroys the channel */
    grpc__deliver(ch->loop, &ch->deliver_timer, ch);
}

void grpc_channel_stats(const grpc_channel_t *ch, grpc_channel_stats_t *out)
{
    *out = ch->st;
    for (const grpc__conn_t *gc = ch->conns; gc; gc = gc->next) {
        h2_counters_t hc;
        h2_conn_counters(gc->h, &hc);
        out->bytes_sent += hc.bytes_sent;
        out->bytes_received += hc.bytes_received;
    }
}
