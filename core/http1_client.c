/*
 * core/http1_client.c - HTTP/1.1 client on the loop (keep-alive pool per
 * target, timeouts, CLIENT spans) and the pure message parsers shared with
 * shop-payment-sim.  See http1_client.h for the contract.
 *
 * Parsing follows RFC 9112: start line, header fields "name: OWS value OWS"
 * (no obs-fold: it is rejected, RFC 9112 5.2 allows that), CRLF line ends
 * (a bare LF is accepted as picohttpparser does), Content-Length or
 * chunked framing; both at once is rejected (request smuggling, 6.1).
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>

#include "http1_client.h"

/* ------------------------------------------------------------- parsers */

static bool h1__tchar(unsigned char c)
{
    return isalnum(c) || strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool h1__ieq(const char *a, size_t alen, const char *b)
{
    size_t blen = strlen(b);
    if (alen != blen)
        return false;
    for (size_t i = 0; i < alen; i++)
        if (tolower((unsigned char)a[i]) != tolower((unsigned char)b[i]))
            return false;
    return true;
}

/* Finds the end of the line starting at p; returns the line length (no
 * CR/LF) and sets *next past the LF, or -2 when no LF yet, -1 on a bare CR
 * or a control byte. */
static long h1__line(const char *buf, size_t len, size_t p, size_t *next)
{
    for (size_t i = p; i < len; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c == '\n') {
            size_t end = i;
            if (end > p && buf[end - 1] == '\r')
                end--;
            *next = i + 1;
            return (long)(end - p);
        }
        if (c == '\r' && i + 1 < len && buf[i + 1] != '\n')
            return -1;
        if ((c < 0x20 && c != '\t' && c != '\r') || c == 0x7f)
            return -1;
    }
    return -2;
}

static int h1__version(const char *p, size_t n, int *minor)
{
    if (n != 8 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1'))
        return -1;
    *minor = p[7] - '0';
    return 0;
}

/* Headers from off on; fills h->num_headers, content_length, chunked,
 * conn_close.  Returns the head length, -1, -2. */
static int h1__headers(const char *buf, size_t len, size_t off, http1c_head_t *h,
                       http1c_header_t *hd, size_t num)
{
    bool keep_alive = false, close_ = false, have_cl = false;
    h->num_headers = 0;
    h->content_length = -1;
    h->chunked = false;
    for (;;) {
        size_t next;
        long n = h1__line(buf, len, off, &next);
        if (n < 0)
            return (int)n;
        if (n == 0) {
            if (have_cl && h->chunked)
                return -1;
            h->conn_close = close_ || (h->minor_version == 0 && !keep_alive);
            if (next > INT32_MAX)
                return -1;
            return (int)next;
        }
        const char *l = buf + off;
        if (l[0] == ' ' || l[0] == '\t')
            return -1; /* obs-fold */
        size_t i = 0;
        while (i < (size_t)n && l[i] != ':') {
            if (!h1__tchar((unsigned char)l[i]))
                return -1;
            i++;
        }
        if (i == 0 || i == (size_t)n)
            return -1;
        if (h->num_headers >= num)
            return -1;
        size_t v = i + 1, e = (size_t)n;
        while (v < e && (l[v] == ' ' || l[v] == '\t'))
            v++;
        while (e > v && (l[e - 1] == ' ' || l[e - 1] == '\t'))
            e--;
        http1c_header_t *x = &hd[h->num_headers++];
        x->name = l;
        x->name_len = i;
        x->value = l + v;
        x->value_len = e - v;
        if (h1__ieq(x->name, i, "content-length")) {
            if (x->value_len == 0 || x->value_len > 15)
                return -1;
            int64_t cl = 0;
            for (size_t k = 0; k < x->value_len; k++) {
                if (!isdigit((unsigned char)x->value[k]))
                    return -1;
                cl = cl * 10 + (x->value[k] - '0');
            }
            if (have_cl && cl != h->content_length)
                return -1;
            have_cl = true;
            h->content_length = cl;
        } else if (h1__ieq(x->name, i, "transfer-encoding")) {
            /* the last coding must be chunked; we know no other coding */
            if (!h1__ieq(x->value, x->value_len, "chunked"))
                return -1;
            h->chunked = true;
        } else if (h1__ieq(x->name, i, "connection")) {
            if (h1__ieq(x->value, x->value_len, "close"))
                close_ = true;
            else if (h1__ieq(x->value, x->value_len, "keep-alive"))
                keep_alive = true;
        }
        off = next;
    }
}

int http1c_parse_response(const char *buf, size_t len, http1c_head_t *h, http1c_header_t *headers,
                          size_t num)
{
    memset(h, 0, sizeof *h);
    size_t next;
    long n = h1__line(buf, len, 0, &next);
    if (n < 0)
        return (int)n;
    /* HTTP/1.1 SP 3DIGIT SP reason */
    if (n < 12 || buf[8] != ' ' || (n > 12 && buf[12] != ' '))
        return -1;
    if (h1__version(buf, 8, &h->minor_version) != 0)
        return -1;
    for (int i = 9; i < 12; i++)
        if (!isdigit((unsigned char)buf[i]))
            return -1;
    h->status = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
    if (h->status < 100)
        return -1;
    h->reason = n > 12 ? buf + 13 : buf + 12;
    h->reason_len = n > 12 ? (size_t)n - 13 : 0;
    return h1__headers(buf, len, next, h, headers, num);
}

int http1c_parse_request(const char *buf, size_t len, http1c_head_t *h, http1c_header_t *headers,
                         size_t num)
{
    memset(h, 0, sizeof *h);
    size_t next;
    long n = h1__line(buf, len, 0, &next);
    if (n < 0)
        return (int)n;
    size_t i = 0;
    while (i < (size_t)n && h1__tchar((unsigned char)buf[i]))
        i++;
    if (i == 0 || i >= (size_t)n || buf[i] != ' ')
        return -1;
    h->method = buf;
    h->method_len = i;
    size_t t = ++i;
    while (i < (size_t)n && buf[i] != ' ')
        i++;
    if (i == t || i >= (size_t)n || buf[t] != '/')
        return -1;
    h->target = buf + t;
    h->target_len = i - t;
    if (h1__version(buf + i + 1, (size_t)n - i - 1, &h->minor_version) != 0)
        return -1;
    return h1__headers(buf, len, next, h, headers, num);
}

long http1c_decode_chunked(const char *buf, size_t len, char *out, size_t cap, size_t *out_len)
{
    size_t off = 0, o = 0;
    for (;;) {
        /* chunk-size [ chunk-ext ] CRLF */
        size_t next;
        long n = h1__line(buf, len, off, &next);
        if (n < 0)
            return n;
        const char *l = buf + off;
        uint64_t size = 0;
        long i = 0;
        while (i < n && isxdigit((unsigned char)l[i])) {
            if (size > (UINT64_C(1) << 40))
                return -1;
            int c = tolower((unsigned char)l[i]);
            size = size * 16 + (uint64_t)(c <= '9' ? c - '0' : c - 'a' + 10);
            i++;
        }
        if (i == 0 || (i < n && l[i] != ';' && l[i] != ' ' && l[i] != '\t'))
            return -1;
        off = next;
        if (size == 0) {
            /* trailer section, then the blank line */
            for (;;) {
                n = h1__line(buf, len, off, &next);
                if (n < 0)
                    return n;
                off = next;
                if (n == 0) {
                    *out_len = o;
                    return (long)off;
                }
            }
        }
        if (size > cap - o)
            return -1;
        if (len - off < size + 1)
            return -2;
        memcpy(out + o, buf + off, size);
        o += size;
        off += size;
        if (buf[off] == '\r') {
            if (len - off < 2)
                return -2;
            if (buf[off + 1] != '\n')
                return -1;
            off += 2;
        } else if (buf[off] == '\n') {
            off += 1;
        } else {
            return -1;
        }
    }
}

const http1c_header_t *http1c_find_header(const http1c_header_t *headers, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (h1__ieq(headers[i].name, headers[i].name_len, name))
            return &headers[i];
    return NULL;
}

const char *http1c_strerror(int err)
{
    switch (err) {
    case 0:
        return "ok";
#define HTTP1C__ERR_STR(name, val, str) \
    case name:                          \
        return str;
        HTTP1C_ERR_MAP(HTTP1C__ERR_STR)
#undef HTTP1C__ERR_STR
    default:
        return err < 0 ? strerror(-err) : "unknown";
    }
}

const char *http1c_error_type(int err)
{
    switch (err) {
    case -ETIMEDOUT:
        return "timeout";
    case -ECONNREFUSED:
        return "connection_refused";
    case -ECONNRESET:
        return "connection_reset";
    case -ECANCELED:
        return "cancelled";
    case HTTP1C_ERR_PROTO:
        return "malformed_response";
    case HTTP1C_ERR_HEADERS_TOO_LARGE:
        return "headers_too_large";
    case HTTP1C_ERR_BODY_TOO_LARGE:
        return "body_too_large";
    default:
        return "_OTHER";
    }
}

/* -------------------------------------------------------------- client */

static const trace_scope_t h1c_scope = TRACE_SCOPE("shop.http1_client", "0.1.0");

typedef struct st_h1c_conn_t h1c_conn_t;

/* A request: allocated per request, recycled through the client's free
 * list (STYLE: no malloc per request once warm). */
typedef struct st_h1c_req_t {
    struct st_h1c_req_t *next;   /* queue or free list */
    http1c_client_t *client;
    h1c_conn_t *conn;            /* NULL while queued */
    http1c_cb cb;
    void *arg;
    char *out;                   /* serialised request */
    size_t out_len, out_cap;
    uint64_t timeout_ns;
    loop_timer_t timer;          /* the timeout, or a deferred failure */
    int pending_err;             /* != 0: fail with it when the timer fires */
    bool replayable;             /* GET/HEAD/OPTIONS/TRACE or an Idempotency-Key header */
    bool retried;                /* sent again once on a fresh connection */
    bool done;
    trace_span_t span;
} h1c_req_t;

typedef enum {
    H1C_CONNECTING = 1, /* loop_connect pending; req assigned */
    H1C_BUSY,           /* request written/being answered */
    H1C_IDLE,           /* kept alive, no request */
    H1C_CLOSING,        /* loop_conn_close called */
} h1c_state_t;

struct st_h1c_conn_t {
    struct st_h1c_conn_t *next, *prev; /* client's list of all connections */
    http1c_client_t *client;           /* NULL once the client is gone */
    loop_conn_t *lc;
    h1c_state_t state;
    h1c_req_t *req;       /* in flight (CONNECTING/BUSY) */
    bool reused;
    char *rx;             /* received bytes of the current response */
    size_t rx_len, rx_cap; /* rx_len <= rx_cap <= max_header + max_body + slack */
    uint64_t idle_since;  /* loop_now_ns() when it went IDLE */
};

struct st_http1c_client_t {
    loop_t *loop;
    char ip[64];
    uint16_t port;
    char host[80];        /* "ip:port" for Host, url.full */
    http1c_opts_t o;
    h1c_conn_t *conns;    /* every connection not yet closed */
    unsigned nconns;      /* in the list and not CLOSING */
    h1c_req_t *qhead, *qtail;
    unsigned qlen;
    h1c_req_t *free_reqs;
    h1c_req_t *deferred;  /* failed, callback due in the next timer phase */
    loop_timer_t idle_timer;
    http1c_counters_t cnt;
    char *decode;         /* de-chunking buffer, max_body_bytes */
};

static void h1c__conn_discard(h1c_conn_t *cn);
static void h1c__dispatch(http1c_client_t *c);

static void h1c__req_free(http1c_client_t *c, h1c_req_t *r)
{
    r->next = c->free_reqs;
    c->free_reqs = r;
}

/* Finishes a request: span attributes, callback, recycle. */
static void h1c__finish(h1c_req_t *r, int err, const http1c_response_t *res)
{
    http1c_client_t *c = r->client;
    if (r->done)
        return;
    r->done = true;
    loop_timer_stop(c->loop, &r->timer);
    c->cnt.requests++;
    if (err < 0) {
        c->cnt.errors++;
        if (err == -ETIMEDOUT)
            c->cnt.timeouts++;
        const char *et = http1c_error_type(err);
        trace_span_set_str(&r->span, "error.type", et);
        const char *m = http1c_strerror(err);
        trace_span_set_status(&r->span, TRACE_STATUS_ERROR, m, strlen(m));
    } else {
        trace_span_set_int(&r->span, "http.response.status_code", res->status);
        if (res->status >= 400) {
            char code[40]; /* 40, not 8: GCC -Warray-bounds sees the inline 32-byte copy path */
            int n = snprintf(code, sizeof code, "%d", res->status);
            trace_span_set_str_n(&r->span, "error.type", 10, code, (size_t)n);
            trace_span_set_status(&r->span, TRACE_STATUS_ERROR, NULL, 0);
        }
    }
    trace_span_end(&r->span);
    r->conn = NULL;
    r->cb(err, err < 0 ? NULL : res, r->arg);
    h1c__req_free(c, r);
}

static void h1c__on_close(loop_conn_t *lc, void *data)
{
    (void)lc;
    h1c_conn_t *cn = data;
    http1c_client_t *c = cn->client;
    if (c != NULL) {
        if (cn->prev)
            cn->prev->next = cn->next;
        else
            c->conns = cn->next;
        if (cn->next)
            cn->next->prev = cn->prev;
    }
    free(cn->rx);
    free(cn);
}

/* Closes a connection; fails its request with err if it has one. */
static void h1c__conn_fail(h1c_conn_t *cn, int err)
{
    h1c_req_t *r = cn->req;
    cn->req = NULL;
    h1c__conn_discard(cn);
    if (r == NULL)
        return;
    /* The keep-alive race: the server closed the idle connection while our
     * request was on its way, so not one byte came back.  Like Go's
     * net/http Transport, send a replayable request once more on a fresh
     * connection; anything else fails (a POST may have been acted on). */
    if (cn->reused && cn->rx_len == 0 && r->replayable && !r->retried && cn->client != NULL &&
        (err == -ECONNRESET || err == -EPIPE || err == -ECONNABORTED)) {
        http1c_client_t *c = cn->client;
        r->retried = true;
        r->conn = NULL;
        c->cnt.retries++;
        trace_span_add_event(&r->span, "retry", 5, 0, NULL, 0);
        r->next = c->qhead;
        c->qhead = r;
        if (c->qtail == NULL)
            c->qtail = r;
        c->qlen++;
        return; /* the caller dispatches */
    }
    h1c__finish(r, err, NULL);
}

static void h1c__conn_discard(h1c_conn_t *cn)
{
    if (cn->state == H1C_CLOSING)
        return;
    cn->state = H1C_CLOSING;
    if (cn->client != NULL) {
        cn->client->nconns--;
        cn->client->cnt.discarded++;
    }
    loop_conn_close(cn->lc, h1c__on_close);
}

static void h1c__timeout(loop_t *loop, loop_timer_t *t, void *arg);

/* Fails r from the next timer phase: dispatch runs inside http1c_request,
 * whose callback must never run synchronously (the loop's contract). */
static void h1c__fail_later(h1c_req_t *r, int err)
{
    http1c_client_t *c = r->client;
    r->conn = NULL;
    r->pending_err = err;
    if (loop_timer_start(c->loop, &r->timer, 0, 0, h1c__timeout, r) != 0) {
        h1c__finish(r, err, NULL); /* timer heap full: no other way left */
        return;
    }
    r->next = c->deferred;
    c->deferred = r;
}

static void h1c__unlink_deferred(http1c_client_t *c, h1c_req_t *r)
{
    for (h1c_req_t **pp = &c->deferred; *pp != NULL; pp = &(*pp)->next)
        if (*pp == r) {
            *pp = r->next;
            r->next = NULL;
            return;
        }
}

static void h1c__timeout(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    h1c_req_t *r = arg;
    http1c_client_t *c = r->client;
    if (r->pending_err != 0) {
        h1c__unlink_deferred(c, r);
        h1c__finish(r, r->pending_err, NULL);
        h1c__dispatch(c);
        return;
    }
    if (r->conn != NULL) {
        h1c_conn_t *cn = r->conn;
        h1c__conn_fail(cn, -ETIMEDOUT);
    } else {
        /* still queued: unlink */
        h1c_req_t **pp = &c->qhead, *prev = NULL;
        while (*pp != NULL && *pp != r) {
            prev = *pp;
            pp = &(*pp)->next;
        }
        if (*pp == r) {
            *pp = r->next;
            if (c->qtail == r)
                c->qtail = prev;
            c->qlen--;
        }
        h1c__finish(r, -ETIMEDOUT, NULL);
    }
    h1c__dispatch(c);
}

static void h1c__send(h1c_conn_t *cn)
{
    h1c_req_t *r = cn->req;
    cn->state = H1C_BUSY;
    cn->rx_len = 0;
    int ret = loop_conn_write_copy(cn->lc, r->out, r->out_len);
    if (ret < 0) {
        cn->req = NULL;
        h1c__conn_discard(cn);
        h1c__fail_later(r, ret == -EPIPE ? -ECONNRESET : ret);
    }
}

/* Tries to complete the response in cn->rx.  Returns 1 done, 0 need more,
 * < 0 error. */
static int h1c__try_response(h1c_conn_t *cn, bool eof)
{
    http1c_client_t *c = cn->client;
    http1c_head_t h;
    http1c_header_t hd[HTTP1C_MAX_HEADERS];
    int hl = http1c_parse_response(cn->rx, cn->rx_len, &h, hd, HTTP1C_MAX_HEADERS);
    if (hl == -1) {
        /* a parse failure past the header limit or with too many headers
         * reads better as "too large" */
        return HTTP1C_ERR_PROTO;
    }
    if (hl == -2) {
        if (cn->rx_len >= c->o.max_header_bytes)
            return HTTP1C_ERR_HEADERS_TOO_LARGE;
        return eof ? -ECONNRESET : 0;
    }
    if ((size_t)hl > c->o.max_header_bytes)
        return HTTP1C_ERR_HEADERS_TOO_LARGE;
    if (h.status < 200)
        return HTTP1C_ERR_PROTO; /* 1xx: we never send Expect; refuse */
    const char *b = cn->rx + hl;
    size_t blen = cn->rx_len - (size_t)hl;
    http1c_response_t res = {.status = h.status, .headers = hd, .num_headers = h.num_headers};
    bool keep = !h.conn_close;
    size_t extra;
    if (h.status == 204 || h.status == 304) {
        res.body = b;
        res.body_len = 0;
        extra = blen;
    } else if (h.chunked) {
        size_t dl;
        long n = http1c_decode_chunked(b, blen, c->decode, c->o.max_body_bytes, &dl);
        if (n == -1)
            return blen > c->o.max_body_bytes ? HTTP1C_ERR_BODY_TOO_LARGE : HTTP1C_ERR_PROTO;
        if (n == -2) {
            if (blen > 2 * (size_t)c->o.max_body_bytes + 1024)
                return HTTP1C_ERR_BODY_TOO_LARGE;
            return eof ? -ECONNRESET : 0;
        }
        res.body = c->decode;
        res.body_len = dl;
        extra = blen - (size_t)n;
    } else if (h.content_length >= 0) {
        if (h.content_length > (int64_t)c->o.max_body_bytes)
            return HTTP1C_ERR_BODY_TOO_LARGE;
        if (blen < (size_t)h.content_length)
            return eof ? -ECONNRESET : 0;
        res.body = b;
        res.body_len = (size_t)h.content_length;
        extra = blen - res.body_len;
    } else {
        /* close-delimited */
        if (blen > c->o.max_body_bytes)
            return HTTP1C_ERR_BODY_TOO_LARGE;
        if (!eof)
            return 0;
        res.body = b;
        res.body_len = blen;
        extra = 0;
        keep = false;
    }
    if (extra != 0 || eof)
        keep = false; /* bytes we did not ask for: do not trust the connection */
    h1c_req_t *r = cn->req;
    cn->req = NULL;
    if (keep) {
        cn->state = H1C_IDLE;
        cn->idle_since = loop_now_ns();
        cn->rx_len = 0;
    } else {
        cn->state = H1C_CLOSING;
        c->nconns--;
        loop_conn_close(cn->lc, h1c__on_close);
    }
    h1c__finish(r, 0, &res);
    return 1;
}

static void h1c__on_read(loop_conn_t *lc, ssize_t n, const void *buf, void *data)
{
    (void)lc;
    h1c_conn_t *cn = data;
    if (cn->state == H1C_CLOSING || cn->client == NULL)
        return;
    if (n < 0) {
        h1c__conn_fail(cn, (int)n);
        goto out;
    }
    if (cn->state != H1C_BUSY) {
        /* idle: EOF or unsolicited bytes; either way the connection is done */
        h1c__conn_discard(cn);
        cn->client->cnt.discarded--; /* a server closing an idle connection is normal */
        goto out;
    }
    if (n > 0) {
        http1c_client_t *c = cn->client;
        size_t limit = (size_t)c->o.max_header_bytes + 2u * c->o.max_body_bytes + 1024u;
        if (cn->rx_len + (size_t)n > limit) {
            h1c__conn_fail(cn, HTTP1C_ERR_BODY_TOO_LARGE);
            goto out;
        }
        if (cn->rx_len + (size_t)n > cn->rx_cap) {
            size_t cap = cn->rx_cap ? cn->rx_cap : 4096;
            while (cap < cn->rx_len + (size_t)n)
                cap *= 2;
            char *p = realloc(cn->rx, cap);
            if (p == NULL) {
                h1c__conn_fail(cn, -ENOMEM);
                goto out;
            }
            cn->rx = p;
            cn->rx_cap = cap;
        }
        memcpy(cn->rx + cn->rx_len, buf, (size_t)n);
        cn->rx_len += (size_t)n;
    }
    int ret = h1c__try_response(cn, n == 0);
    if (ret < 0)
        h1c__conn_fail(cn, ret);
out:;
    http1c_client_t *c = cn->client;
    if (c != NULL)
        h1c__dispatch(c);
}

static void h1c__on_connect(loop_conn_t *lc, int status, void *data)
{
    h1c_conn_t *cn = data;
    if (cn->state == H1C_CLOSING)
        return;
    (void)lc;
    if (status < 0) {
        h1c__conn_fail(cn, status);
        if (cn->client != NULL)
            h1c__dispatch(cn->client);
        return;
    }
    cn->client->cnt.connects++;
    int ret = loop_conn_read_start(cn->lc, h1c__on_read);
    if (ret < 0) {
        h1c__conn_fail(cn, ret);
        return;
    }
    h1c__send(cn);
}

/* Hands queued requests to idle connections, opens new ones up to max. */
static void h1c__dispatch(http1c_client_t *c)
{
    while (c->qhead != NULL) {
        h1c_conn_t *idle = NULL;
        for (h1c_conn_t *cn = c->conns; cn != NULL; cn = cn->next)
            if (cn->state == H1C_IDLE) {
                idle = cn;
                break;
            }
        if (c->qhead->retried)
            idle = NULL; /* a retry goes on a fresh connection */
        if (idle == NULL && c->nconns >= c->o.max_conns)
            return;
        h1c_req_t *r = c->qhead;
        c->qhead = r->next;
        if (c->qhead == NULL)
            c->qtail = NULL;
        c->qlen--;
        r->next = NULL;
        if (idle != NULL) {
            idle->req = r;
            idle->reused = true;
            r->conn = idle;
            c->cnt.reused++;
            h1c__send(idle);
            continue;
        }
        h1c_conn_t *cn = calloc(1, sizeof *cn);
        if (cn == NULL) {
            h1c__fail_later(r, -ENOMEM);
            continue;
        }
        cn->client = c;
        cn->state = H1C_CONNECTING;
        cn->req = r;
        r->conn = cn;
        uint64_t cto = c->o.connect_timeout_ms ? (uint64_t)c->o.connect_timeout_ms * 1000000u
                                               : r->timeout_ns;
        int ret = loop_connect(c->loop, c->ip, c->port, cto, h1c__on_connect, cn, &cn->lc);
        if (ret < 0) {
            free(cn);
            h1c__fail_later(r, ret);
            continue;
        }
        cn->next = c->conns;
        if (c->conns)
            c->conns->prev = cn;
        c->conns = cn;
        c->nconns++;
    }
}

static void h1c__idle_tick(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    http1c_client_t *c = arg;
    uint64_t now = loop_now_ns(), lim = (uint64_t)c->o.idle_ms * 1000000u;
    for (h1c_conn_t *cn = c->conns; cn != NULL; cn = cn->next)
        if (cn->state == H1C_IDLE && now - cn->idle_since > lim) {
            h1c__conn_discard(cn);
            c->cnt.discarded--;
        }
}

int http1c_client_new(loop_t *loop, const char *ip, uint16_t port, const http1c_opts_t *opts,
                      http1c_client_t **out)
{
    unsigned char a[16];
    if (ip == NULL || strlen(ip) >= 64 || port == 0 ||
        (inet_pton(AF_INET, ip, a) != 1 && inet_pton(AF_INET6, ip, a) != 1))
        return -EINVAL;
    http1c_client_t *c = calloc(1, sizeof *c);
    if (c == NULL)
        return -ENOMEM;
    c->loop = loop;
    snprintf(c->ip, sizeof c->ip, "%s", ip);
    c->port = port;
    if (strchr(ip, ':') != NULL)
        snprintf(c->host, sizeof c->host, "[%s]:%u", ip, port);
    else
        snprintf(c->host, sizeof c->host, "%s:%u", ip, port);
    if (opts != NULL)
        c->o = *opts;
    if (c->o.max_conns == 0)
        c->o.max_conns = 8;
    if (c->o.max_queue == 0)
        c->o.max_queue = 1024;
    if (c->o.timeout_ms == 0)
        c->o.timeout_ms = 5000;
    if (c->o.idle_ms == 0)
        c->o.idle_ms = 30000;
    if (c->o.max_header_bytes == 0)
        c->o.max_header_bytes = HTTP1C_MAX_HEADER_BYTES;
    if (c->o.max_body_bytes == 0)
        c->o.max_body_bytes = 1u << 20;
    c->decode = malloc(c->o.max_body_bytes);
    if (c->decode == NULL)
        goto err;
    loop_timer_init(&c->idle_timer);
    uint64_t tick = (uint64_t)(c->o.idle_ms < 1000 ? c->o.idle_ms : 1000) * 1000000u;
    if (loop_timer_start(loop, &c->idle_timer, tick, tick, h1c__idle_tick, c) < 0)
        goto err;
    *out = c;
    return 0;
err:
    free(c->decode);
    free(c);
    return -ENOMEM;
}

void http1c_client_free(http1c_client_t *c)
{
    if (c == NULL)
        return;
    loop_timer_stop(c->loop, &c->idle_timer);
    while (c->qhead != NULL) {
        h1c_req_t *r = c->qhead;
        c->qhead = r->next;
        h1c__finish(r, -ECANCELED, NULL);
    }
    c->qtail = NULL;
    while (c->deferred != NULL) {
        h1c_req_t *r = c->deferred;
        c->deferred = r->next;
        h1c__finish(r, r->pending_err, NULL);
    }
    for (h1c_conn_t *cn = c->conns; cn != NULL;) {
        h1c_conn_t *next = cn->next;
        h1c_req_t *r = cn->req;
        cn->req = NULL;
        if (cn->state != H1C_CLOSING) {
            cn->state = H1C_CLOSING;
            loop_conn_close(cn->lc, h1c__on_close);
        }
        if (r != NULL)
            h1c__finish(r, -ECANCELED, NULL);
        cn->client = NULL;
        cn = next;
    }
    while (c->free_reqs != NULL) {
        h1c_req_t *r = c->free_reqs;
        c->free_reqs = r->next;
        free(r->out);
        free(r);
    }
    free(c->decode);
    free(c);
}

static int h1c__append(h1c_req_t *r, const char *p, size_t n)
{
    if (r->out_len + n > r->out_cap) {
        size_t cap = r->out_cap ? r->out_cap : 512;
        while (cap < r->out_len + n)
            cap *= 2;
        char *q = realloc(r->out, cap);
        if (q == NULL)
            return -ENOMEM;
        r->out = q;
        r->out_cap = cap;
    }
    memcpy(r->out + r->out_len, p, n);
    r->out_len += n;
    return 0;
}

static int h1c__header(h1c_req_t *r, const char *name, size_t nlen, const char *v, size_t vlen)
{
    for (size_t i = 0; i < vlen; i++)
        if (v[i] == '\r' || v[i] == '\n' || v[i] == '\0')
            return -EINVAL;
    if (h1c__append(r, name, nlen) || h1c__append(r, ": ", 2) || h1c__append(r, v, vlen) ||
        h1c__append(r, "\r\n", 2))
        return -ENOMEM;
    return 0;
}

static int h1c__inject(void *carrier, const char *name, const char *value, size_t vlen)
{
    return h1c__header(carrier, name, strlen(name), value, vlen);
}

static bool h1c__token_ok(const char *s, bool path)
{
    if (s == NULL || *s == '\0')
        return false;
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || *s == 0x7f || (!path && !h1__tchar((unsigned char)*s)))
            return false;
    return true;
}

int http1c_request(http1c_client_t *c, const http1c_request_t *rq, http1c_cb cb, void *arg)
{
    if (rq == NULL || cb == NULL || !h1c__token_ok(rq->method, false) ||
        !h1c__token_ok(rq->path, true) || rq->path[0] != '/')
        return -EINVAL;
    if (c->qlen >= c->o.max_queue)
        return HTTP1C_ERR_QUEUE_FULL;
    h1c_req_t *r = c->free_reqs;
    if (r != NULL) {
        c->free_reqs = r->next;
    } else {
        r = calloc(1, sizeof *r);
        if (r == NULL)
            return -ENOMEM;
    }
    r->next = NULL;
    r->client = c;
    r->conn = NULL;
    r->cb = cb;
    r->arg = arg;
    r->out_len = 0;
    r->pending_err = 0;
    r->retried = false;
    r->replayable = strcmp(rq->method, "GET") == 0 || strcmp(rq->method, "HEAD") == 0 ||
                    strcmp(rq->method, "OPTIONS") == 0 || strcmp(rq->method, "TRACE") == 0 ||
                    http1c_find_header(rq->headers, rq->num_headers, "idempotency-key") != NULL ||
                    http1c_find_header(rq->headers, rq->num_headers, "x-idempotency-key") != NULL;
    r->done = false;
    r->timeout_ns = (uint64_t)(rq->timeout_ms ? rq->timeout_ms : c->o.timeout_ms) * 1000000u;
    loop_timer_init(&r->timer);

    size_t mlen = strlen(rq->method);
    trace_span_start(&r->span, &h1c_scope, rq->method, mlen, TRACE_KIND_CLIENT, rq->parent);
    char url[2048];
    int ul = snprintf(url, sizeof url, "http://%s%s", c->host, rq->path);
    if (ul < 0 || (size_t)ul >= sizeof url)
        ul = (int)sizeof url - 1;
    trace_span_set_str_n(&r->span, "http.request.method", 19, rq->method, mlen);
    trace_span_set_str(&r->span, "server.address", c->ip);
    trace_span_set_int(&r->span, "server.port", c->port);
    trace_span_set_str_n(&r->span, "url.full", 8, url, (size_t)ul);

    char cl[32];
    int cll = snprintf(cl, sizeof cl, "%zu", rq->body_len);
    int ret = -ENOMEM;
    if (h1c__append(r, rq->method, mlen) || h1c__append(r, " ", 1) ||
        h1c__append(r, rq->path, strlen(rq->path)) || h1c__append(r, " HTTP/1.1\r\n", 11))
        goto err;
    if ((ret = h1c__header(r, "Host", 4, c->host, strlen(c->host))) != 0)
        goto err;
    if (rq->body_len > 0 || strcmp(rq->method, "POST") == 0 || strcmp(rq->method, "PUT") == 0)
        if ((ret = h1c__header(r, "Content-Length", 14, cl, (size_t)cll)) != 0)
            goto err;
    if (rq->content_type != NULL &&
        (ret = h1c__header(r, "Content-Type", 12, rq->content_type, strlen(rq->content_type))) != 0)
        goto err;
    for (size_t i = 0; i < rq->num_headers; i++) {
        const http1c_header_t *h = &rq->headers[i];
        for (size_t k = 0; k < h->name_len; k++)
            if (!h1__tchar((unsigned char)h->name[k])) {
                ret = -EINVAL;
                goto err;
            }
        if ((ret = h1c__header(r, h->name, h->name_len, h->value, h->value_len)) != 0)
            goto err;
    }
    if (trace_id_is_valid(r->span.ctx.trace_id, TRACE_ID_SIZE) &&
        (ret = trace_inject(&r->span.ctx, NULL, h1c__inject, r)) != 0)
        goto err;
    ret = -ENOMEM;
    if (h1c__append(r, "\r\n", 2) || (rq->body_len && h1c__append(r, rq->body, rq->body_len)))
        goto err;
    if ((ret = loop_timer_start(c->loop, &r->timer, r->timeout_ns, 0, h1c__timeout, r)) != 0)
        goto err;
    if (c->qtail)
        c->qtail->next = r;
    else
        c->qhead = r;
    c->qtail = r;
    c->qlen++;
    h1c__dispatch(c);
    return 0;
err:
    trace_span_set_str(&r->span, "error.type", ret == -EINVAL ? "invalid_request" : "_OTHER");
    trace_span_set_status(&r->span, TRACE_STATUS_ERROR, "request not sent", 16);
    trace_span_end(&r->span);
    h1c__req_free(c, r);
    return ret;
}

void http1c_counters(const http1c_client_t *c, http1c_counters_t *out)
{
    *out = c->cnt;
}
