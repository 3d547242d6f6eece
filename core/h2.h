/*
 * core/h2.h - internal: one HTTP/2 client connection (nghttp2) bound to a
 * loop connection.  Used by core/grpc.c only; not part of the public API.
 *
 * Reads feed nghttp2_session_mem_recv(); frames nghttp2 wants to send are
 * collected by nghttp2_session_mem_send() in a before-sleep hook, so every
 * frame produced during one loop iteration (many streams' HEADERS, DATA,
 * WINDOW_UPDATEs, SETTINGS ACK) leaves in one queued write.
 *
 * Callback contract: every callback runs on the loop thread from inside a
 * loop callback (read, connect, timer, hook), never inside an h2_* call.
 * Callbacks must not call h2_conn_close() on the connection that is calling
 * them; the connection closes itself after on_down.
 */
#ifndef SHOP_CORE_H2_H
#define SHOP_CORE_H2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>

#include "loop.h"

#define H2_PREFIX_MAX 16 /* bytes of a request body's copied prefix (h2_submit) */

typedef struct st_h2_conn_t h2_conn_t;

typedef struct st_h2_callbacks_t {
    /* TCP connected and the client preface queued (status 0), or the
     * connect failed (-errno: -ECONNREFUSED, -ETIMEDOUT, ...).  After a
     * failure on_down follows. */
    void (*on_connect)(h2_conn_t *h, int status, void *arg);
    /* One response header or trailer field of stream sid. */
    void (*on_header)(h2_conn_t *h, int32_t sid, void *sdata, const uint8_t *name, size_t namelen,
                      const uint8_t *value, size_t valuelen, void *arg);
    /* Response DATA bytes.  Returning non-zero resets the stream (CANCEL). */
    int (*on_data)(h2_conn_t *h, int32_t sid, void *sdata, const uint8_t *data, size_t len, void *arg);
    /* Stream closed; h2_error is the RST_STREAM/GOAWAY code (0 = clean).
     * After this, nothing refers to sdata or the body any more. */
    void (*on_stream_close)(h2_conn_t *h, int32_t sid, void *sdata, uint32_t h2_error, void *arg);
    /* GOAWAY received: streams above last_sid are closed by nghttp2 with
     * REFUSED_STREAM (never processed, safe to retry). */
    void (*on_goaway)(h2_conn_t *h, int32_t last_sid, uint32_t h2_error, void *arg);
    /* The connection is gone (status 0 after a drained GOAWAY, else
     * -errno); why is a readable cause ("" if none beyond status; TLS
     * failures name the OpenSSL error).  Streams still open get no
     * on_stream_close: the owner fails them.  The h2_conn_t is freed later,
     * asynchronously. */
    void (*on_down)(h2_conn_t *h, int status, const char *why, void *arg);
} h2_callbacks_t;

typedef struct st_h2_counters_t {
    uint64_t bytes_sent, bytes_received, goaways, pings_sent;
} h2_counters_t;

/* Starts a TCP connect and an HTTP/2 session.  keepalive_ns: PING after
 * that long without received bytes (0 = off); a PING unanswered by the next
 * tick closes the connection (-ETIMEDOUT).  tls: NULL for h2c (prior
 * knowledge), else a client SSL_CTX (borrowed: it must outlive the
 * connection) offering ALPN "h2"; tls_name is the server name sent as SNI
 * and verified (an IP literal is verified as an IP and sends no SNI, RFC
 * 6066 section 3).  on_connect(0) comes after the TLS handshake.
 * Errors: -ENOMEM, -EINVAL (address), -errno of loop_connect(). */
int h2_conn_connect(loop_t *loop, const char *ip, uint16_t port, uint64_t connect_timeout_ns,
                    uint64_t keepalive_ns, SSL_CTX *tls, const char *tls_name, const h2_callbacks_t *cbs,
                    void *arg, h2_conn_t **out);

/* Submits a request stream with headers nva (copied) and a request body of
 * prefix (copied; at most H2_PREFIX_MAX bytes, e.g. gRPC's 5-byte message
 * header) followed by body (NOT copied: it must stay valid and unchanged
 * until on_stream_close, on_down or h2_cancel for this stream; it is read
 * only from the loop's before-sleep hook, straight into the write buffer).
 * nghttp2 sends the body as the peer's flow-control windows allow.
 * Returns the stream id (> 0) or a negative nghttp2 error
 * (NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE, NGHTTP2_ERR_NOMEM,
 * NGHTTP2_ERR_INVALID_ARGUMENT, ...). */
int32_t h2_submit(h2_conn_t *h, const nghttp2_nv *nva, size_t nvlen, const uint8_t *prefix, size_t prefix_len,
                  const uint8_t *body, size_t body_len, void *sdata);

/* Sends RST_STREAM(CANCEL) and detaches sdata and the body: no callback
 * refers to them afterwards (no on_stream_close either), so the owner may
 * free both right away.  Unknown or closed streams are ignored. */
void h2_cancel(h2_conn_t *h, int32_t sid);

/* True when new streams may be submitted (connected, no GOAWAY, not down). */
bool h2_conn_ready(const h2_conn_t *h);
void h2_conn_counters(const h2_conn_t *h, h2_counters_t *out);

/* Closes the connection now: no callback runs afterwards; open streams are
 * dropped.  The memory is freed asynchronously. */
void h2_conn_close(h2_conn_t *h);

#endif
