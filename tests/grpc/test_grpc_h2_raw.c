/*
 * tests/grpc/test_grpc_h2_raw.c - the gRPC client against a hand-written
 * HTTP/2 peer, for what a well-behaved gRPC server never sends: a :status
 * without grpc-status (HTTP-to-gRPC mapping), GOAWAY before processing,
 * RST_STREAM codes, keepalive PINGs (answered or not), and a server that
 * PINGs on reading a request and answers only after the ACK (the client
 * holds PING ACKs for its next frames, but never for long).
 *
 * The peer is a thread with blocking sockets: it reads the client preface
 * and frames, and answers the first HEADERS frame as the case says.
 * Usage: test_grpc_h2_raw
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "grpc.h"
#include "tap.h"

#define MS 1000000ull

typedef enum {
    MODE_STATUS,       /* HEADERS :status <g_hpack> END_STREAM */
    MODE_GOAWAY,       /* GOAWAY last-stream-id 0 */
    MODE_RST,          /* RST_STREAM g_rst */
    MODE_SILENT_ACK,   /* never answers the call; ACKs PINGs */
    MODE_SILENT_NOACK, /* never answers anything */
    MODE_PING_FIRST,   /* PINGs on the request, answers <g_hpack> after the ACK */
} mode_t_;

static _Atomic int g_mode;
static uint8_t g_hpack[8];
static _Atomic size_t g_hpack_len;
static _Atomic uint32_t g_rst;
static _Atomic int g_pings;
static _Atomic int g_acks; /* ACKs of MODE_PING_FIRST's PING */
static int g_lfd;
static loop_t *g_loop;

static int read_full(int fd, uint8_t *b, size_t n)
{
    while (n) {
        ssize_t r = read(fd, b, n);
        if (r <= 0)
            return -1;
        b += r;
        n -= (size_t)r;
    }
    return 0;
}

static void frame(int fd, uint8_t type, uint8_t flags, uint32_t sid, const uint8_t *p, size_t len)
{
    uint8_t h[9] = {(uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len, type, flags,
                    (uint8_t)(sid >> 24), (uint8_t)(sid >> 16), (uint8_t)(sid >> 8), (uint8_t)sid};
    if (write(fd, h, 9) != 9 || (len && write(fd, p, len) != (ssize_t)len))
        return;
}

static void serve(int fd)
{
    static const uint8_t opaque[8] = {'s', 'h', 'o', 'p', 'p', 'i', 'n', 'g'};
    uint32_t waiting = 0; /* MODE_PING_FIRST: the stream answered after the ACK */
    uint8_t pre[24], hdr[9], *p = malloc(1 << 20);
    if (read_full(fd, pre, 24) < 0)
        goto out;
    frame(fd, 4, 0, 0, NULL, 0); /* our SETTINGS */
    for (;;) {
        if (read_full(fd, hdr, 9) < 0)
            break;
        size_t len = (size_t)hdr[0] << 16 | (size_t)hdr[1] << 8 | hdr[2];
        uint32_t sid = ((uint32_t)hdr[5] << 24 | (uint32_t)hdr[6] << 16 | (uint32_t)hdr[7] << 8 | hdr[8]) & 0x7fffffffu;
        if (len > (1 << 20) || read_full(fd, p, len) < 0)
            break;
        if (hdr[3] == 4 && !(hdr[4] & 1))
            frame(fd, 4, 1, 0, NULL, 0); /* SETTINGS ACK */
        if (hdr[3] == 6 && !(hdr[4] & 1)) {
            g_pings++;
            if (g_mode != MODE_SILENT_NOACK)
                frame(fd, 6, 1, 0, p, len);
        }
        if (hdr[3] == 6 && (hdr[4] & 1) && len == 8 && memcmp(p, opaque, 8) == 0 && waiting) {
            g_acks++;
            frame(fd, 1, 0x5, waiting, g_hpack, g_hpack_len);
            waiting = 0;
        }
        if (hdr[3] == 1) {
            if (g_mode == MODE_PING_FIRST) {
                frame(fd, 6, 0, 0, opaque, 8);
                waiting = sid;
            } else if (g_mode == MODE_STATUS) {
                frame(fd, 1, 0x5, sid, g_hpack, g_hpack_len); /* END_STREAM | END_HEADERS */
            } else if (g_mode == MODE_GOAWAY) {
                uint8_t ga[8] = {0, 0, 0, 0, 0, 0, 0, 0}; /* last-stream-id 0, NO_ERROR */
                frame(fd, 7, 0, 0, ga, 8);
            } else if (g_mode == MODE_RST) {
                uint32_t c = g_rst;
                uint8_t rc[4] = {(uint8_t)(c >> 24), (uint8_t)(c >> 16), (uint8_t)(c >> 8), (uint8_t)c};
                frame(fd, 3, 0, sid, rc, 4);
            }
        }
    }
out:
    free(p);
    close(fd);
}

static void *server(void *arg)
{
    (void)arg;
    for (;;) {
        int fd = accept(g_lfd, NULL, NULL);
        if (fd < 0)
            return NULL;
        serve(fd);
    }
}

typedef struct {
    bool done;
    int status;
    char message[256];
    uint64_t t;
} result_t;

static void on_result(const grpc_result_t *r, void *arg)
{
    result_t *o = arg;
    o->done = true;
    o->status = r->status;
    snprintf(o->message, sizeof o->message, "%s", r->message);
    o->t = loop_now_ns();
    loop_stop(g_loop);
}

static result_t run(uint16_t port, uint64_t keepalive_ns, uint64_t timeout_ns, grpc_channel_stats_t *st)
{
    result_t r = {.status = -1};
    grpc_channel_opts_t o = {.keepalive_ns = keepalive_ns};
    grpc_channel_t *ch;
    char err[128] = "";
    if (grpc_channel_new(g_loop, "127.0.0.1", port, &o, &ch, err, sizeof err) < 0)
        return r;
    static const uint8_t msg[3] = {1, 2, 3};
    grpc_call_unary(ch, "/x.Y/Z", msg, sizeof msg, false, timeout_ns, NULL, 0, on_result, &r);
    loop_run(g_loop);
    if (st)
        grpc_channel_stats(ch, st);
    grpc_channel_free(ch);
    return r;
}

static void set_status(const uint8_t *hp, size_t n)
{
    memcpy(g_hpack, hp, n);
    g_hpack_len = n;
    g_mode = MODE_STATUS;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    g_lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    if (bind(g_lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(g_lfd, 16) < 0 ||
        getsockname(g_lfd, (struct sockaddr *)&sa, &sl) < 0) {
        printf("Bail out! listen: %s\n", strerror(errno));
        return 1;
    }
    uint16_t port = ntohs(sa.sin_port);
    pthread_t th;
    pthread_create(&th, NULL, server, NULL);
    if (loop_create(&g_loop, NULL) < 0) {
        printf("Bail out! loop_create\n");
        return 1;
    }
    result_t r;

    /* HPACK: literal without indexing, name = static index 8 (:status). */
    static const uint8_t s503[] = {0x08, 3, '5', '0', '3'};
    set_status(s503, sizeof s503);
    r = run(port, 0, 2000 * MS, NULL);
    tap_check(r.status == GRPC_STATUS_UNAVAILABLE, ":status 503 without grpc-status -> %s '%s'",
              grpc_status_name(r.status), r.message);
    static const uint8_t s404[] = {0x80 | 13}; /* static index 13 = :status 404 */
    set_status(s404, sizeof s404);
    r = run(port, 0, 2000 * MS, NULL);
    tap_check(r.status == GRPC_STATUS_UNIMPLEMENTED, ":status 404 -> %s", grpc_status_name(r.status));
    static const uint8_t s200[] = {0x80 | 8}; /* :status 200, no grpc-status, stream ends */
    set_status(s200, sizeof s200);
    r = run(port, 0, 2000 * MS, NULL);
    tap_check(r.status == GRPC_STATUS_UNKNOWN, ":status 200 without grpc-status -> %s", grpc_status_name(r.status));

    /* The client holds a PING ACK while a call waits, to send it with its
     * next frames; a server that waits for the ACK still gets it. */
    set_status(s404, sizeof s404);
    g_mode = MODE_PING_FIRST;
    uint64_t tp = loop_now_ns();
    r = run(port, 0, 2000 * MS, NULL);
    tap_check(r.status == GRPC_STATUS_UNIMPLEMENTED && g_acks == 1 && (r.t - tp) / MS < 1000,
              "server answering only after its PING is ACKed: %s after %llu ms, %d ACK", grpc_status_name(r.status),
              (unsigned long long)((r.t - tp) / MS), (int)g_acks);

    grpc_channel_stats_t st;
    g_mode = MODE_GOAWAY;
    r = run(port, 0, 2000 * MS, &st);
    tap_check(r.status == GRPC_STATUS_UNAVAILABLE, "GOAWAY(last-stream-id 0) -> %s '%s'", grpc_status_name(r.status),
              r.message);
    tap_check(st.goaways == 1, "GOAWAY counted: %llu", (unsigned long long)st.goaways);

    g_rst = 7; /* REFUSED_STREAM */
    g_mode = MODE_RST;
    r = run(port, 0, 2000 * MS, NULL);
    tap_check(r.status == GRPC_STATUS_UNAVAILABLE, "RST_STREAM(REFUSED_STREAM) -> %s", grpc_status_name(r.status));
    g_rst = 2; /* INTERNAL_ERROR */
    r = run(port, 0, 2000 * MS, NULL);
    tap_check(r.status == GRPC_STATUS_INTERNAL, "RST_STREAM(INTERNAL_ERROR) -> %s", grpc_status_name(r.status));

    g_pings = 0;
    g_mode = MODE_SILENT_ACK;
    uint64_t t0 = loop_now_ns();
    r = run(port, 100 * MS, 550 * MS, NULL);
    tap_check(r.status == GRPC_STATUS_DEADLINE_EXCEEDED && (r.t - t0) / MS >= 540,
              "silent server with PING ACKs: call waits for its deadline (%s after %llu ms)",
              grpc_status_name(r.status), (unsigned long long)((r.t - t0) / MS));
    tap_check(g_pings >= 2, "keepalive PINGs sent while idle: %d", (int)g_pings);

    g_mode = MODE_SILENT_NOACK;
    t0 = loop_now_ns();
    r = run(port, 100 * MS, 2000 * MS, NULL);
    uint64_t el = (r.t - t0) / MS;
    tap_check(r.status == GRPC_STATUS_UNAVAILABLE && el < 1000,
              "unanswered PING closes the connection: %s after %llu ms '%s'", grpc_status_name(r.status),
              (unsigned long long)el, r.message);

    loop_destroy(g_loop);
    shutdown(g_lfd, SHUT_RDWR);
    close(g_lfd);
    pthread_join(th, NULL);
    return tap_done();
}
