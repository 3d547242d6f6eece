/*
 * core/h2.c - an HTTP/2 client connection: nghttp2 session over a loop
 * connection (see h2.h for the contract).
 *
 * Data flow.  Reads go straight into nghttp2_session_mem_recv().  Nothing is
 * written from inside callbacks: a before-sleep hook drains
 * nghttp2_session_mem_send() into one buffer and queues it with a single
 * loop write, so one loop iteration costs one sendmsg however many streams
 * produced frames (the batching STYLE.md asks for).  Request bodies are
 * copied once, from the owner's memory into that buffer: DATA frames use
 * NGHTTP2_DATA_FLAG_NO_COPY, so nghttp2 hands us the 9-byte frame header
 * (h2__cb_send_data) instead of copying the payload into its own frame
 * buffer first, and the filled buffer goes to the loop without another
 * copy (loop_conn_write; it comes back to a small free list when the
 * write completes).  With TLS the buffer goes through SSL_write instead.
 *
 * Flow control (RFC 9113 section 5.2).  Request bodies are fed through a
 * data provider; nghttp2 calls it only with as many bytes as the stream and
 * connection windows allow and stops calling it when a window is 0, then
 * resumes by itself when WINDOW_UPDATE arrives.  Bodies are complete in
 * memory before submission (unary calls), so the provider never has to
 * defer.  Our own receive windows are raised (16 MiB connection, 4 MiB per
 * stream) so a response of the maximum message size is not throttled by
 * the default 64 KiB round trips.
 *
 * PING ACKs are ours to send (nghttp2's automatic ACK is off): an ACK
 * waits for the next frames the hook writes, H2__ACK_HOLD_NS at most, so
 * the PING a gRPC server sends after reading each request rides with the
 * next request instead of costing a write of its own.
 *
 * TLS (optional): OpenSSL runs over two memory BIOs, never over the
 * socket, so the loop keeps owning all I/O: received bytes are written
 * into the read BIO and pulled out with SSL_read(); our frames go through
 * SSL_write() and the write BIO is drained into loop writes.  The HTTP/2
 * session starts only after the handshake selected ALPN "h2" (RFC 9113
 * section 3.2: h2 over TLS is negotiated, never assumed).
 *
 * Socket back-pressure: when more than H2__MAX_QUEUED bytes sit in the
 * loop's write queue the hook stops pulling frames; the write completion
 * wakes the loop and the next iteration's hook continues.
 */
#include "h2.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#define H2__MAX_QUEUED (4u << 20)        /* bytes in the loop's write queue before pausing */
#define H2__BATCH_MAX (1u << 20)         /* bytes gathered per hook run */
#define H2__CONN_WINDOW (16 << 20)       /* our connection receive window */
#define H2__STREAM_WINDOW (4 << 20)      /* our per-stream receive window */
#define H2__WBUF_MIN 16384u               /* smallest write buffer */
#define H2__WBUF_SPARE 2                  /* write buffers kept for reuse */
#define H2__ACK_HOLD_NS 20000000ull      /* longest a PING ACK waits for other frames */

typedef enum {
    H2__CONNECTING = 1,
    H2__HANDSHAKE, /* TCP up, TLS handshake running */
    H2__OPEN,
    H2__DOWN, /* session deleted, loop_conn_close() called; waiting for the close callback */
} h2__state_t;

/* One request stream as nghttp2 sees it (its stream user data and data
 * source).  Owned by the connection: freed when the stream closes or the
 * session is deleted, so the data provider never reads freed memory even
 * after the owner detached (h2_cancel). */
typedef struct st_h2__stream_t {
    struct st_h2__stream_t *next, *prev;
    int32_t sid;
    void *sdata;         /* owner's pointer; NULL once detached */
    bool detached;       /* h2_cancel: the body must not be read any more */
    uint8_t pre[H2_PREFIX_MAX]; /* copied prefix, sent before body */
    size_t pre_len;
    const uint8_t *body; /* the owner's; NULL once detached */
    size_t len;          /* pre_len + body bytes */
    size_t off;          /* off <= len: bytes already sent (written to a wbuf) */
} h2__stream_t;

/* One write buffer: filled by the hook, then owned by the loop's write
 * queue until its write callback (h2__on_wdone) gives it back. */
typedef struct st_h2__wbuf_t {
    struct st_h2__wbuf_t *next; /* free list */
    struct st_h2_conn_t *h;
    size_t len, cap;            /* len <= cap bytes of data[] used */
    uint8_t data[];
} h2__wbuf_t;

struct st_h2_conn_t {
    loop_t *loop;
    loop_conn_t *conn;
    nghttp2_session *ng; /* NULL until connected and after teardown */
    h2_callbacks_t cbs;
    void *arg;
    h2__state_t state;
    bool goaway;     /* GOAWAY received: no new streams */
    bool silent;     /* h2_conn_close() called: no more callbacks */
    bool hooked;     /* before-sleep hook registered */
    uint64_t keepalive_ns;
    uint64_t last_rx_ns;
    bool ping_outstanding;
    loop_timer_t ka_timer;
    bool ack_held;            /* a peer PING waits for its ACK (ack_opaque) */
    uint8_t ack_opaque[8];
    loop_timer_t ack_timer;   /* sends a held ACK after H2__ACK_HOLD_NS */
    h2__stream_t streams; /* list head (sentinel) */
    SSL_CTX *tls;         /* borrowed; NULL = plaintext */
    SSL *ssl;             /* owns its two memory BIOs */
    BIO *rbio, *wbio;     /* network -> OpenSSL, OpenSSL -> network */
    char tls_name[256];
    char why[192];        /* cause of the last failure, for on_down */
    h2_counters_t ctr;
    h2__wbuf_t *wb;       /* being filled by the hook, or NULL */
    h2__wbuf_t *spare;    /* free list, <= H2__WBUF_SPARE buffers */
    unsigned n_spare;
    bool wfail;           /* a write buffer could not grow (ENOMEM) */
};

static void h2__on_close(loop_conn_t *conn, void *data)
{
    (void)conn;
    h2_conn_t *h = data;
    /* every handed-off buffer came back first: the loop runs the write
     * callbacks (-ECANCELED at worst) before the close callback */
    free(h->wb);
    while (h->spare) {
        h2__wbuf_t *b = h->spare;
        h->spare = b->next;
        free(b);
    }
    free(h);
}

/* Makes room for n more bytes in the buffer being filled.  Returns false
 * (and records ENOMEM in wfail) when it cannot grow. */
static bool h2__wreserve(h2_conn_t *h, size_t n)
{
    h2__wbuf_t *b = h->wb;
    if (b && b->len + n <= b->cap)
        return true;
    if (!b && h->spare && h->spare->cap >= n) {
        b = h->spare;
        h->spare = b->next;
        h->n_spare--;
        b->next = NULL;
        b->len = 0;
        h->wb = b;
        return true;
    }
    size_t used = b ? b->len : 0;
    size_t cap = b ? b->cap : H2__WBUF_MIN;
    while (cap < used + n)
        cap *= 2;
    h2__wbuf_t *nb = realloc(b, sizeof *nb + cap);
    if (!nb) {
        h->wfail = true;
        return false;
    }
    if (!b) {
        nb->next = NULL;
        nb->h = h;
        nb->len = 0;
    }
    nb->cap = cap;
    h->wb = nb;
    return true;
}

static bool h2__wappend(h2_conn_t *h, const uint8_t *data, size_t n)
{
    if (!h2__wreserve(h, n))
        return false;
    memcpy(h->wb->data + h->wb->len, data, n);
    h->wb->len += n;
    return true;
}

/* Write callback of a handed-off buffer: back to the free list. */
static void h2__on_wdone(loop_conn_t *conn, int status, void *arg)
{
    (void)conn;
    (void)status; /* a failed write also fails the read side: on_down follows */
    h2__wbuf_t *b = arg;
    h2_conn_t *h = b->h;
    if (h->n_spare < H2__WBUF_SPARE) {
        b->next = h->spare;
        h->spare = b;
        h->n_spare++;
    } else {
        free(b);
    }
}

static void h2__free_streams(h2_conn_t *h)
{
    h2__stream_t *s = h->streams.next;
    while (s != &h->streams) {
        h2__stream_t *n = s->next;
        free(s);
        s = n;
    }
    h->streams.next = h->streams.prev = &h->streams;
}

static void h2__hook(loop_t *loop, void *arg);
static void h2__ka_tick(loop_t *loop, loop_timer_t *t, void *arg);

/* Tears the session down and starts the asynchronous close.  Never called
 * from inside an nghttp2 callback (the session is deleted here). */
static void h2__down(h2_conn_t *h, int status)
{
    if (h->state == H2__DOWN)
        return;
    h->state = H2__DOWN;
    loop_timer_stop(h->loop, &h->ka_timer);
    loop_timer_stop(h->loop, &h->ack_timer);
    if (h->hooked) {
        loop_hook_remove(h->loop, h2__hook, h);
        h->hooked = false;
    }
    if (h->ng) {
        nghttp2_session_del(h->ng);
        h->ng = NULL;
    }
    h2__free_streams(h);
    if (h->ssl) {
        SSL_free(h->ssl);
        h->ssl = NULL;
    }
    if (!h->silent && h->cbs.on_down)
        h->cbs.on_down(h, status, h->why, h->arg);
    loop_conn_close(h->conn, h2__on_close);
}

/* Nothing more to read or write: a GOAWAY was received and every stream
 * finished, or the session hit a fatal error. */
static void h2__check_done(h2_conn_t *h)
{
    if (h->state == H2__OPEN && !nghttp2_session_want_read(h->ng) && !nghttp2_session_want_write(h->ng))
        h2__down(h, 0);
}

/* Records why the connection fails (first cause wins), with the OpenSSL
 * error queue when there is one. */
static void h2__why(h2_conn_t *h, const char *what)
{
    if (h->why[0])
        return;
    unsigned long e = ERR_get_error();
    char ebuf[128] = "";
    if (e)
        ERR_error_string_n(e, ebuf, sizeof ebuf);
    if (h->ssl && SSL_get_verify_result(h->ssl) != X509_V_OK)
        snprintf(ebuf, sizeof ebuf, "certificate verify failed: %s",
                 X509_verify_cert_error_string(SSL_get_verify_result(h->ssl)));
    snprintf(h->why, sizeof h->why, "%s%s%s", what, ebuf[0] ? ": " : "", ebuf);
    ERR_clear_error();
}

/* Moves whatever OpenSSL produced into the loop's write queue. */
static int h2__tls_flush(h2_conn_t *h)
{
    char buf[16384];
    int n;
    while ((n = BIO_read(h->wbio, buf, sizeof buf)) > 0) {
        int rc = loop_conn_write_copy(h->conn, buf, (size_t)n);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Sends HTTP/2 bytes: straight to the socket, or through TLS. */
static int h2__send(h2_conn_t *h, const uint8_t *data, size_t len)
{
    if (!h->ssl)
        return loop_conn_write_copy(h->conn, data, len);
    /* Memory BIO: SSL_write never blocks and writes everything. */
    if (SSL_write(h->ssl, data, (int)len) != (int)len) {
        h2__why(h, "SSL_write");
        return -EPROTO;
    }
    return h2__tls_flush(h);
}

/* Queues the held PING ACK (h2__cb_frame_recv); the hook writes it.
 * Returns 0, or -ENOMEM after tearing the connection down. */
static int h2__ack_send(h2_conn_t *h)
{
    h->ack_held = false;
    loop_timer_stop(h->loop, &h->ack_timer);
    if (nghttp2_submit_ping(h->ng, NGHTTP2_FLAG_ACK, h->ack_opaque) != 0) {
        h2__down(h, -ENOMEM);
        return -ENOMEM;
    }
    return 0;
}

static void h2__ack_tick(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    h2_conn_t *h = arg;
    if (h->state == H2__OPEN && h->ack_held)
        (void)h2__ack_send(h);
}

static void h2__hook(loop_t *loop, void *arg)
{
    (void)loop;
    h2_conn_t *h = arg;
    if (h->state != H2__OPEN)
        return;
    if (loop_conn_write_queued(h->conn) > H2__MAX_QUEUED)
        return; /* the write completion brings us back */
    /* A held PING ACK leaves with the next frames (h2__cb_frame_recv). */
    if (h->ack_held && nghttp2_session_want_write(h->ng) && h2__ack_send(h) < 0)
        return;
    for (;;) {
        const uint8_t *data;
        /* DATA frames are appended by h2__cb_send_data from in here */
        ssize_t n = nghttp2_session_mem_send(h->ng, &data);
        if (n < 0 || h->wfail) {
            h2__down(h, h->wfail ? -ENOMEM : -EPROTO);
            return;
        }
        if (n == 0)
            break;
        if (!h2__wappend(h, data, (size_t)n)) {
            h2__down(h, -ENOMEM);
            return;
        }
        if (h->wb->len >= H2__BATCH_MAX)
            break;
    }
    h2__wbuf_t *b = h->wb;
    if (b && b->len) {
        size_t len = b->len;
        int rc;
        if (h->ssl) {
            rc = h2__send(h, b->data, b->len);
            b->len = 0; /* SSL_write copied it: keep filling this one */
        } else {
            struct iovec iov = {b->data, b->len};
            rc = loop_conn_write(h->conn, &iov, 1, h2__on_wdone, b);
            if (rc == 0)
                h->wb = NULL; /* the loop's until h2__on_wdone */
        }
        if (rc < 0) {
            h2__down(h, rc);
            return;
        }
        h->ctr.bytes_sent += len;
    }
    h2__check_done(h);
}

static int h2__start_session(h2_conn_t *h);

/* Feeds received bytes to nghttp2.  Returns 0 or -errno (connection dead). */
static int h2__recv_plain(h2_conn_t *h, const uint8_t *buf, size_t n)
{
    /* HTTP/2 bytes, like bytes_sent, so TLS does not change the figures. */
    h->ctr.bytes_received += n;
    ssize_t rv = nghttp2_session_mem_recv(h->ng, buf, n);
    if (rv < 0) {
        snprintf(h->why, sizeof h->why, "HTTP/2 protocol error: %s", nghttp2_strerror((int)rv));
        return -EPROTO;
    }
    return 0;
}

static int h2__recv_tls(h2_conn_t *h, const uint8_t *buf, size_t n)
{
    if (BIO_write(h->rbio, buf, (int)n) != (int)n)
        return -ENOMEM;
    if (h->state == H2__HANDSHAKE) {
        int rc = SSL_do_handshake(h->ssl);
        int flush = h2__tls_flush(h);
        if (flush < 0)
            return flush;
        if (rc <= 0) {
            if (SSL_get_error(h->ssl, rc) == SSL_ERROR_WANT_READ)
                return 0;
            h2__why(h, "TLS handshake failed");
            return -ECONNABORTED;
        }
        const unsigned char *alpn = NULL;
        unsigned alen = 0;
        SSL_get0_alpn_selected(h->ssl, &alpn, &alen);
        if (alen != 2 || memcmp(alpn, "h2", 2) != 0) {
            snprintf(h->why, sizeof h->why, "TLS peer did not select ALPN h2");
            return -EPROTO;
        }
        rc = h2__start_session(h);
        if (rc < 0)
            return rc;
    }
    uint8_t plain[16384];
    for (;;) {
        int r = SSL_read(h->ssl, plain, sizeof plain);
        if (r > 0) {
            int rc = h2__recv_plain(h, plain, (size_t)r);
            if (rc < 0)
                return rc;
            continue;
        }
        int e = SSL_get_error(h->ssl, r);
        if (e == SSL_ERROR_WANT_READ)
            break;
        if (e == SSL_ERROR_ZERO_RETURN) {
            snprintf(h->why, sizeof h->why, "TLS close_notify");
            return -ECONNRESET;
        }
        h2__why(h, "SSL_read");
        return -EPROTO;
    }
    /* Reading can make OpenSSL write (key updates, session tickets ack). */
    return h2__tls_flush(h);
}

static void h2__on_read(loop_conn_t *conn, ssize_t n, const void *buf, void *data)
{
    (void)conn;
    h2_conn_t *h = data;
    if (h->state != H2__OPEN && h->state != H2__HANDSHAKE)
        return;
    if (n <= 0) {
        /* EOF without GOAWAY: the peer went away; streams are lost. */
        h2__down(h, n == 0 ? -ECONNRESET : (int)n);
        return;
    }
    h->last_rx_ns = loop_now_ns();
    int rc = h->ssl ? h2__recv_tls(h, buf, (size_t)n) : h2__recv_plain(h, buf, (size_t)n);
    if (rc < 0) {
        if (h->state == H2__HANDSHAKE && !h->silent && h->cbs.on_connect)
            h->cbs.on_connect(h, rc, h->arg);
        h2__down(h, rc);
        return;
    }
    h2__check_done(h);
}

/* ------------------------------------------------------ nghttp2 callbacks */

static int h2__cb_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                         const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data)
{
    (void)flags;
    h2_conn_t *h = user_data;
    h2__stream_t *s = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (s && s->sdata && !h->silent)
        h->cbs.on_header(h, s->sid, s->sdata, name, namelen, value, valuelen, h->arg);
    return 0;
}

static int h2__cb_data(nghttp2_session *ng, uint8_t flags, int32_t sid, const uint8_t *data, size_t len,
                       void *user_data)
{
    (void)flags;
    h2_conn_t *h = user_data;
    h2__stream_t *s = nghttp2_session_get_stream_user_data(ng, sid);
    if (s && s->sdata && !h->silent && h->cbs.on_data(h, sid, s->sdata, data, len, h->arg) != 0)
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, sid, NGHTTP2_CANCEL);
    return 0;
}

static int h2__cb_stream_close(nghttp2_session *ng, int32_t sid, uint32_t error_code, void *user_data)
{
    h2_conn_t *h = user_data;
    h2__stream_t *s = nghttp2_session_get_stream_user_data(ng, sid);
    if (!s)
        return 0;
    s->prev->next = s->next;
    s->next->prev = s->prev;
    nghttp2_session_set_stream_user_data(ng, sid, NULL);
    void *sdata = s->sdata;
    free(s);
    if (sdata && !h->silent)
        h->cbs.on_stream_close(h, sid, sdata, error_code, h->arg);
    return 0;
}

static int h2__cb_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *user_data)
{
    (void)ng;
    h2_conn_t *h = user_data;
    if (frame->hd.type == NGHTTP2_GOAWAY) {
        h->goaway = true;
        h->ctr.goaways++;
        if (!h->silent && h->cbs.on_goaway)
            h->cbs.on_goaway(h, frame->goaway.last_stream_id, frame->goaway.error_code, h->arg);
    } else if (frame->hd.type == NGHTTP2_PING && (frame->hd.flags & NGHTTP2_FLAG_ACK)) {
        h->ping_outstanding = false;
    } else if (frame->hd.type == NGHTTP2_PING) {
        /* The ACK is ours to send (no_auto_ping_ack): it is held until
         * the hook has other frames to write, or H2__ACK_HOLD_NS at most.
         * grpc-go sends a WINDOW_UPDATE and a PING (its BDP probe) right
         * after reading each request; answered at once, that PING costs
         * a write of its own per call, held it leaves with the next
         * request's frames.  A second PING releases the first ACK. */
        if (h->ack_held && nghttp2_submit_ping(ng, NGHTTP2_FLAG_ACK, h->ack_opaque) != 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        memcpy(h->ack_opaque, frame->ping.opaque_data, sizeof h->ack_opaque);
        h->ack_held = true;
        if (!loop_timer_active(&h->ack_timer) &&
            loop_timer_start(h->loop, &h->ack_timer, H2__ACK_HOLD_NS, 0, h2__ack_tick, h) < 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

/* Data source of a request stream: only says how many bytes the next DATA
 * frame carries (NO_COPY); h2__cb_send_data writes them. */
static ssize_t h2__read_body(nghttp2_session *ng, int32_t sid, uint8_t *buf, size_t length,
                             uint32_t *data_flags, nghttp2_data_source *source, void *user_data)
{
    (void)ng;
    (void)sid;
    (void)buf;
    (void)user_data;
    h2__stream_t *s = source->ptr;
    if (s->detached) /* by h2_cancel: RST_STREAM(CANCEL) is on its way */
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    size_t n = s->len - s->off;
    if (n > length)
        n = length;
    *data_flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (s->off + n == s->len)
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

/* Writes one DATA frame of a NO_COPY stream: the frame header nghttp2
 * serialized, then `length` body bytes straight from the owner's memory
 * (padding is never selected: no select_padding callback). */
static int h2__cb_send_data(nghttp2_session *ng, nghttp2_frame *frame, const uint8_t *framehd, size_t length,
                            nghttp2_data_source *source, void *user_data)
{
    (void)ng;
    h2_conn_t *h = user_data;
    h2__stream_t *s = source->ptr;
    if (frame->data.padlen != 0 || s->detached || length > s->len - s->off)
        return NGHTTP2_ERR_CALLBACK_FAILURE; /* cannot happen: loud */
    if (!h2__wreserve(h, 9 + length))
        return NGHTTP2_ERR_CALLBACK_FAILURE; /* wfail: the hook takes the connection down */
    uint8_t *w = h->wb->data + h->wb->len;
    memcpy(w, framehd, 9);
    w += 9;
    size_t n = length;
    if (s->off < s->pre_len) {
        size_t k = s->pre_len - s->off < n ? s->pre_len - s->off : n;
        memcpy(w, s->pre + s->off, k);
        w += k;
        s->off += k;
        n -= k;
    }
    if (n) {
        memcpy(w, s->body + (s->off - s->pre_len), n);
        s->off += n;
    }
    h->wb->len += 9 + length;
    /* Stop this mem_send run at a full batch; the hook sends it and the
     * next iteration's hook continues. */
    return h->wb->len >= H2__BATCH_MAX ? NGHTTP2_ERR_PAUSE : 0;
}

/* ------------------------------------------------------------ connecting */

static void h2__ka_tick(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    h2_conn_t *h = arg;
    if (h->state != H2__OPEN)
        return;
    if (h->ping_outstanding) {
        /* A whole interval without the PING ACK: the path is dead (a
         * half-open TCP connection would otherwise hang calls until their
         * deadlines). */
        h2__down(h, -ETIMEDOUT);
        return;
    }
    if (loop_now_ns() - h->last_rx_ns >= h->keepalive_ns) {
        if (nghttp2_submit_ping(h->ng, NGHTTP2_FLAG_NONE, NULL) == 0) {
            h->ping_outstanding = true;
            h->ctr.pings_sent++;
        }
    }
}

static int h2__session_new(h2_conn_t *h)
{
    nghttp2_session_callbacks *cbs;
    int rc = nghttp2_session_callbacks_new(&cbs);
    if (rc != 0)
        return -ENOMEM;
    nghttp2_session_callbacks_set_on_header_callback(cbs, h2__cb_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, h2__cb_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, h2__cb_stream_close);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, h2__cb_frame_recv);
    nghttp2_session_callbacks_set_send_data_callback(cbs, h2__cb_send_data);
    nghttp2_option *opt;
    rc = nghttp2_option_new(&opt);
    if (rc != 0) {
        nghttp2_session_callbacks_del(cbs);
        return -ENOMEM;
    }
    nghttp2_option_set_no_auto_ping_ack(opt, 1); /* h2__cb_frame_recv holds it */
    rc = nghttp2_session_client_new2(&h->ng, cbs, h, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    if (rc != 0)
        return -ENOMEM;
    /* Push is meaningless for gRPC; a bigger initial stream window lets a
     * 4 MiB response arrive without waiting for WINDOW_UPDATE round trips. */
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2__STREAM_WINDOW},
    };
    rc = nghttp2_submit_settings(h->ng, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]);
    if (rc == 0)
        rc = nghttp2_session_set_local_window_size(h->ng, NGHTTP2_FLAG_NONE, 0, H2__CONN_WINDOW);
    return rc == 0 ? 0 : -ENOMEM;
}

/* HTTP/2 session on an established (and, with TLS, handshaken) transport. */
static int h2__start_session(h2_conn_t *h)
{
    int status = h2__session_new(h);
    if (status == 0)
        status = loop_hook_add(h->loop, h2__hook, h);
    if (status < 0)
        return status;
    h->hooked = true;
    h->state = H2__OPEN;
    h->last_rx_ns = loop_now_ns();
    if (h->keepalive_ns)
        (void)loop_timer_start(h->loop, &h->ka_timer, h->keepalive_ns, h->keepalive_ns, h2__ka_tick, h);
    if (!h->silent && h->cbs.on_connect)
        h->cbs.on_connect(h, 0, h->arg);
    return 0;
}

static int h2__tls_start(h2_conn_t *h)
{
    h->ssl = SSL_new(h->tls);
    h->rbio = BIO_new(BIO_s_mem());
    h->wbio = BIO_new(BIO_s_mem());
    if (!h->ssl || !h->rbio || !h->wbio) {
        BIO_free(h->rbio);
        BIO_free(h->wbio);
        h2__why(h, "SSL_new");
        return -ENOMEM;
    }
    SSL_set_bio(h->ssl, h->rbio, h->wbio); /* the SSL owns both now */
    SSL_set_connect_state(h->ssl);
    unsigned char addr[16];
    bool is_ip = inet_pton(AF_INET, h->tls_name, addr) == 1 || inet_pton(AF_INET6, h->tls_name, addr) == 1;
    if (is_ip) {
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(h->ssl), h->tls_name);
    } else {
        SSL_set_tlsext_host_name(h->ssl, h->tls_name);
        SSL_set1_host(h->ssl, h->tls_name);
    }
    h->state = H2__HANDSHAKE;
    int rc = SSL_do_handshake(h->ssl);
    if (rc <= 0 && SSL_get_error(h->ssl, rc) != SSL_ERROR_WANT_READ) {
        h2__why(h, "TLS handshake start");
        return -ECONNABORTED;
    }
    return h2__tls_flush(h);
}

static void h2__on_connect(loop_conn_t *conn, int status, void *data)
{
    h2_conn_t *h = data;
    if (h->state != H2__CONNECTING)
        return;
    if (status == 0) {
        int one = 1;
        /* Small frames (HEADERS, WINDOW_UPDATE, PING ACK) must not wait for
         * Nagle: gRPC latency is per call. */
        (void)setsockopt(loop_conn_fd(conn), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        status = loop_conn_read_start(conn, h2__on_read);
        if (status == 0)
            status = h->tls ? h2__tls_start(h) : h2__start_session(h);
        if (status == 0)
            return; /* on_connect(0) ran, or runs when the handshake ends */
    }
    if (!h->silent && h->cbs.on_connect)
        h->cbs.on_connect(h, status, h->arg);
    h2__down(h, status);
}

int h2_conn_connect(loop_t *loop, const char *ip, uint16_t port, uint64_t connect_timeout_ns,
                    uint64_t keepalive_ns, SSL_CTX *tls, const char *tls_name, const h2_callbacks_t *cbs,
                    void *arg, h2_conn_t **out)
{
    h2_conn_t *h = calloc(1, sizeof *h);
    if (!h)
        return -ENOMEM;
    h->loop = loop;
    h->cbs = *cbs;
    h->arg = arg;
    h->state = H2__CONNECTING;
    h->keepalive_ns = keepalive_ns;
    h->tls = tls;
    snprintf(h->tls_name, sizeof h->tls_name, "%s", tls_name ? tls_name : ip);
    h->streams.next = h->streams.prev = &h->streams;
    loop_timer_init(&h->ka_timer);
    loop_timer_init(&h->ack_timer);
    int rc = loop_connect(loop, ip, port, connect_timeout_ns, h2__on_connect, h, &h->conn);
    if (rc < 0) {
        free(h);
        return rc;
    }
    *out = h;
    return 0;
}

/* ---------------------------------------------------------------- streams */

int32_t h2_submit(h2_conn_t *h, const nghttp2_nv *nva, size_t nvlen, const uint8_t *prefix, size_t prefix_len,
                  const uint8_t *body, size_t body_len, void *sdata)
{
    if (!h2_conn_ready(h))
        return NGHTTP2_ERR_INVALID_STATE;
    if (prefix_len > H2_PREFIX_MAX || (prefix_len && !prefix) || (body_len && !body))
        return NGHTTP2_ERR_INVALID_ARGUMENT;
    h2__stream_t *s = calloc(1, sizeof *s);
    if (!s)
        return NGHTTP2_ERR_NOMEM;
    s->sdata = sdata;
    if (prefix_len)
        memcpy(s->pre, prefix, prefix_len);
    s->pre_len = prefix_len;
    s->body = body;
    s->len = prefix_len + body_len;
    nghttp2_data_provider prd = {.source = {.ptr = s}, .read_callback = h2__read_body};
    int32_t sid = nghttp2_submit_request(h->ng, NULL, nva, nvlen, &prd, s);
    if (sid < 0) {
        free(s);
        return sid;
    }
    s->sid = sid;
    s->next = &h->streams;
    s->prev = h->streams.prev;
    s->prev->next = s;
    h->streams.prev = s;
    return sid;
}

void h2_cancel(h2_conn_t *h, int32_t sid)
{
    if (h->state != H2__OPEN || sid <= 0)
        return;
    h2__stream_t *s = nghttp2_session_get_stream_user_data(h->ng, sid);
    if (!s)
        return;
    s->sdata = NULL;
    s->body = NULL;
    s->detached = true;
    nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, sid, NGHTTP2_CANCEL);
}

bool h2_conn_ready(const h2_conn_t *h)
{
    return h->state == H2__OPEN && !h->goaway;
}

void h2_conn_counters(const h2_conn_t *h, h2_counters_t *out)
{
    *out = h->ctr;
}

void h2_conn_close(h2_conn_t *h)
{
    h->silent = true;
    if (h->state == H2__OPEN && h->ng) {
        /* Be polite (RFC 9113 6.8): the GOAWAY goes out only if the write
         * is queued before the close, which loop_conn_close allows. */
        const uint8_t *data;
        nghttp2_session_terminate_session(h->ng, NGHTTP2_NO_ERROR);
        ssize_t n;
        while ((n = nghttp2_session_mem_send(h->ng, &data)) > 0)
            if (h2__send(h, data, (size_t)n) < 0)
                break;
    }
    h2__down(h, 0);
}
