/*
 * tests/loop/test_loop_echo.c - an echo server on the loop against plain
 * blocking clients in other threads, run twice: with multishot accept/recv
 * + provided buffer ring, and with the forced fallback (plain accept, recv
 * into a per-connection buffer).  Also: a 16 MiB transfer both ways with
 * partial sends (default socket buffers, then SO_SNDBUF/SO_RCVBUF shrunk to
 * 16 KiB on the server side), a peer
 * that resets mid-stream, loop_connect to the loop's own listener, to a closed port,
 * and to a listener whose queue is full (timeout).
 *
 * Usage: test_loop_echo   (TAP on stdout)
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "loop.h"
#include "loop_test.h"
#include "tap.h"

#define NCONN 200
#define NWORKERS 4
#define ROUNDS 3
#define MAXMSG 32768
#define BIG (16u * 1024u * 1024u)

/* ------------------------------------------------------- echo server */

typedef struct {
    uint64_t max_open;
    int closes;
    int write_cbs;
    int write_errs;
    int read_errs;
    int eofs;
    bool small_sndbuf; /* shrink the send buffer of accepted sockets */
} server_t;

static server_t S;

static void on_write(loop_conn_t *c, int status, void *req_arg)
{
    (void)c;
    S.write_cbs++;
    if (status != 0 && S.write_errs++ == 0)
        tap_diag("write error %d", status);
    free(req_arg); /* we own the bytes until this callback: free them here */
}

static void on_close(loop_conn_t *c, void *data)
{
    (void)c;
    (void)data;
    S.closes++;
}

static void echo_read(loop_conn_t *c, ssize_t n, const void *buf, void *data)
{
    (void)data;
    if (n <= 0) {
        if (n == 0)
            S.eofs++;
        else
            S.read_errs++;
        loop_conn_close(c, on_close);
        return;
    }
    /* Alternate the two ownership styles: even fds hand over a malloc'd
     * copy released in on_write, odd fds let the loop copy. */
    if (loop_conn_fd(c) % 2 == 0) {
        void *copy = malloc((size_t)n);
        memcpy(copy, buf, (size_t)n);
        struct iovec iov = {copy, (size_t)n};
        if (loop_conn_write(c, &iov, 1, on_write, copy) != 0)
            free(copy);
    } else {
        int r = loop_conn_write_copy(c, buf, (size_t)n);
        if (r != 0 && S.write_errs++ == 0)
            tap_diag("write_copy error %d", r);
    }
}

static void on_accept(loop_listener_t *l, loop_conn_t *c, void *arg)
{
    (void)l;
    loop_t *loop = arg;
    loop_counters_t k;
    loop_counters(loop, &k);
    if (k.open > S.max_open)
        S.max_open = k.open;
    if (S.small_sndbuf) {
        int sz = 16384;
        /* only the send side: that is what the loop's send cap handles; a
         * receive buffer shrunk after the handshake makes the *peer* crawl
         * (its segments wait for delayed ACKs), which no loop can fix */
        setsockopt(loop_conn_fd(c), SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    }
    loop_conn_read_start(c, echo_read);
}

/* ------------------------------------------------------- clients */

typedef struct {
    uint16_t port;
    int id;
    pthread_barrier_t *barrier;
    atomic_int *bad;
} worker_t;

static void *echo_worker(void *arg)
{
    worker_t *w = arg;
    int per = NCONN / NWORKERS;
    int fds[NCONN];
    static _Thread_local uint8_t out[MAXMSG], in[MAXMSG];
    for (int i = 0; i < per; i++)
        fds[i] = lt_connect(w->port);
    pthread_barrier_wait(w->barrier); /* all 200 are open now */
    for (int r = 0; r < ROUNDS; r++) {
        size_t len[NCONN];
        for (int i = 0; i < per; i++) {
            uint32_t seed = (uint32_t)(w->id * 1000 + i * 10 + r);
            len[i] = 1 + (seed * 2654435761u) % MAXMSG;
            lt_fill(out, len[i], seed, 0);
            if (fds[i] < 0 || lt_write_all(fds[i], out, len[i]) != 0)
                atomic_fetch_add(w->bad, 1);
        }
        for (int i = 0; i < per; i++) {
            uint32_t seed = (uint32_t)(w->id * 1000 + i * 10 + r);
            lt_fill(out, len[i], seed, 0);
            if (fds[i] < 0 || lt_read_all(fds[i], in, len[i]) != len[i] ||
                memcmp(in, out, len[i]) != 0)
                atomic_fetch_add(w->bad, 1);
        }
        /* After one full round every connection was accepted and echoed:
         * all 200 are open on the server at this point. */
        if (r == 0)
            pthread_barrier_wait(w->barrier);
    }
    for (int i = 0; i < per; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    return NULL;
}

typedef struct {
    loop_t *loop;
    uint16_t port;
    int bad;
} client_t;

static void *echo_clients(void *arg)
{
    client_t *cl = arg;
    pthread_t th[NWORKERS];
    worker_t w[NWORKERS];
    pthread_barrier_t b;
    atomic_int bad = 0;
    pthread_barrier_init(&b, NULL, NWORKERS);
    for (int i = 0; i < NWORKERS; i++) {
        w[i] = (worker_t){cl->port, i, &b, &bad};
        pthread_create(&th[i], NULL, echo_worker, &w[i]);
    }
    for (int i = 0; i < NWORKERS; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&b);
    cl->bad = atomic_load(&bad);
    return NULL;
}

/* 16 MiB up on one thread, 16 MiB down on this one. */
static void *big_sender(void *arg)
{
    int fd = *(int *)arg;
    uint8_t *buf = malloc(1 << 20);
    for (uint64_t off = 0; off < BIG; off += 1 << 20) {
        lt_fill(buf, 1 << 20, 77, off);
        if (lt_write_all(fd, buf, 1 << 20) != 0)
            break;
    }
    free(buf);
    return NULL;
}

static int client_rcvbuf; /* 0: default; else SO_RCVBUF of the 16 MiB client */

static void *big_client(void *arg)
{
    client_t *cl = arg;
    int fd = lt_connect(cl->port);
    if (fd >= 0 && client_rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &client_rcvbuf, sizeof client_rcvbuf);
    pthread_t th;
    pthread_create(&th, NULL, big_sender, &fd);
    usleep(100000); /* let the server's queue and socket buffers fill */
    uint8_t *buf = malloc(1 << 20), *exp = malloc(1 << 20);
    uint64_t got = 0;
    while (got < BIG) {
        size_t n = lt_read_all(fd, buf, 1 << 20);
        lt_fill(exp, n, 77, got);
        if (n != 1 << 20 || memcmp(buf, exp, n) != 0) {
            cl->bad++;
            break;
        }
        got += n;
    }
    pthread_join(th, NULL);
    close(fd);
    free(buf);
    free(exp);
    return NULL;
}

/* Sends 256 KiB without reading the echo, then resets the connection. */
static void *reset_client(void *arg)
{
    client_t *cl = arg;
    int fd = lt_connect(cl->port);
    uint8_t *buf = calloc(1, 256 * 1024);
    lt_write_all(fd, buf, 256 * 1024);
    usleep(50000);
    struct linger lg = {1, 0}; /* close with RST */
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
    free(buf);
    return NULL;
}

/* Runs the loop until every server connection closed after `client` ended. */
static void *run_client_then_stop(void *arg);

typedef struct {
    void *(*fn)(void *);
    client_t *cl;
    atomic_int done;
} runner_t;

static void *run_client_then_stop(void *arg)
{
    runner_t *r = arg;
    r->fn(r->cl);
    atomic_store(&r->done, 1);
    loop_wake(r->cl->loop);
    return NULL;
}

static runner_t *cur_runner;
static void check_done(loop_t *loop, void *arg)
{
    (void)arg;
    loop_counters_t k;
    loop_counters(loop, &k);
    if (cur_runner != NULL && atomic_load(&cur_runner->done) && k.open == 0)
        loop_stop(loop);
}

static void guard_expired(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)t;
    (void)arg;
    loop_counters_t k;
    loop_counters(loop, &k);
    tap_diag("guard timer expired: stopping the loop (open %llu, in %llu, out %llu, sends %llu, partial %llu)",
             (unsigned long long)k.open, (unsigned long long)k.bytes_in, (unsigned long long)k.bytes_out,
             (unsigned long long)k.send_ops, (unsigned long long)k.partial_sends);
    loop_stop(loop);
}

static int drive(loop_t *loop, void *(*fn)(void *), client_t *cl)
{
    runner_t r = {fn, cl, 0};
    cur_runner = &r;
    loop_timer_t guard;
    loop_timer_init(&guard);
    loop_timer_start(loop, &guard, 10000 * LT_MS, 0, guard_expired, NULL);
    pthread_t th;
    pthread_create(&th, NULL, run_client_then_stop, &r);
    loop_run(loop);
    pthread_join(th, NULL);
    loop_timer_stop(loop, &guard);
    cur_runner = NULL;
    return atomic_load(&r.done) ? 0 : -1;
}

/* ------------------------------------------------------- loop clients */

typedef struct {
    int status;
    int calls;
    bool got_echo;
    char buf[16];
    size_t n;
} lclient_t;

static void lc_close(loop_conn_t *c, void *data)
{
    (void)c;
    ((lclient_t *)data)->calls += 100;
}

static void lc_read(loop_conn_t *c, ssize_t n, const void *buf, void *data)
{
    lclient_t *lc = data;
    if (n > 0 && lc->n + (size_t)n <= sizeof lc->buf) {
        memcpy(lc->buf + lc->n, buf, (size_t)n);
        lc->n += (size_t)n;
    }
    if (lc->n == 5) {
        lc->got_echo = memcmp(lc->buf, "hello", 5) == 0;
        loop_conn_close(c, lc_close);
    } else if (n <= 0) {
        loop_conn_close(c, lc_close);
    }
}

static void lc_connect(loop_conn_t *c, int status, void *data)
{
    lclient_t *lc = data;
    lc->status = status;
    lc->calls++;
    if (status != 0) {
        loop_conn_close(c, lc_close);
        return;
    }
    loop_conn_write_copy(c, "hello", 5);
    loop_conn_read_start(c, lc_read);
}

static void stop_when_idle(loop_t *loop, void *arg)
{
    lclient_t *lc = arg;
    loop_counters_t k;
    loop_counters(loop, &k);
    if (lc->calls >= 100 && k.open == 0)
        loop_stop(loop);
}

static void run_lclient(loop_t *loop, lclient_t *lc)
{
    loop_timer_t guard;
    loop_timer_init(&guard);
    loop_timer_start(loop, &guard, 10000 * LT_MS, 0, guard_expired, NULL);
    loop_hook_add(loop, stop_when_idle, lc);
    loop_run(loop);
    loop_hook_remove(loop, stop_when_idle, lc);
    loop_timer_stop(loop, &guard);
}

static uint16_t closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, (struct sockaddr *)&a, sizeof a);
    socklen_t len = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &len);
    close(fd); /* bound, never listening, now closed: connects are refused */
    return ntohs(a.sin_port);
}

/* ------------------------------------------------------------ main */

static void run_mode(bool fallback);
static void run_mode(bool fallback)
{
    const char *m = fallback ? "fallback" : "multishot";
    loop_options_t o = {.force_fallback = fallback};
    loop_t *loop;
    tap_check(loop_create(&loop, &o) == 0, "%s: loop_create", m);
    unsigned f = loop_features(loop);
    tap_diag("%s: features %#x (buf ring %d, recv multishot %d, accept multishot %d)", m, f,
             !!(f & LOOP_F_BUF_RING), !!(f & LOOP_F_RECV_MULTISHOT),
             !!(f & LOOP_F_ACCEPT_MULTISHOT));
    if (fallback)
        tap_check((f & (LOOP_F_RECV_MULTISHOT | LOOP_F_ACCEPT_MULTISHOT | LOOP_F_BUF_RING)) == 0,
                  "fallback: multishot and buffer ring are off");
    loop_listener_t *l;
    tap_check(loop_listen(loop, "127.0.0.1", 0, 512, on_accept, loop, &l) == 0,
              "%s: listen on 127.0.0.1:0", m);
    client_t cl = {loop, loop_listener_port(l), 0};
    loop_hook_add(loop, check_done, NULL);

    memset(&S, 0, sizeof S);
    tap_check(drive(loop, echo_clients, &cl) == 0, "%s: 200-client echo finished", m);
    tap_check(cl.bad == 0, "%s: 200 concurrent connections x %d rounds echoed byte for byte (%d bad)",
              m, ROUNDS, cl.bad);
    tap_check(S.max_open >= NCONN, "%s: %llu connections were open at once", m,
              (unsigned long long)S.max_open);
    tap_check(S.closes == NCONN && S.eofs == NCONN, "%s: every connection saw EOF and closed (%d/%d)",
              m, S.eofs, S.closes);

    /* 16 MiB each way: default buffers; then the server's SO_SNDBUF at
     * 16 KiB (on loopback one 64 KiB segment no longer fits
     * the send buffer: without the loop's send cap this crawled at one
     * segment per delayed ACK and hit the guard, see loop.c). */
    static const struct {
        bool small;
        int crcv;
        const char *name;
    } big[] = {{false, 0, "default buffers"},
               {true, 0, "server SO_SNDBUF 16 KiB"},
               {false, 131072, "client SO_RCVBUF 128 KiB"}};
    for (size_t b = 0; b < sizeof big / sizeof big[0]; b++) {
        memset(&S, 0, sizeof S);
        S.small_sndbuf = big[b].small;
        client_rcvbuf = big[b].crcv;
        loop_counters_t k0, k1;
        loop_counters(loop, &k0);
        cl.bad = 0;
        uint64_t t0 = loop_now_ns();
        int dr = drive(loop, big_client, &cl);
        uint64_t ms = (loop_now_ns() - t0) / LT_MS;
        tap_check(dr == 0, "%s: 16 MiB exchange finished (%s, %llu ms)", m, big[b].name,
                  (unsigned long long)ms);
        loop_counters(loop, &k1);
        tap_check(cl.bad == 0, "%s: 16 MiB up and 16 MiB down, byte for byte (%s)", m, big[b].name);
        tap_check(k1.bytes_in - k0.bytes_in == BIG && k1.bytes_out - k0.bytes_out == BIG,
                  "%s: counters saw 16 MiB in and out (%s)", m, big[b].name);
        /* A reader with a 128 KiB receive buffer keeps the server's socket
         * full, so sends come back short and must be resumed; with the
         * other buffers that happens only now and then (the send cap keeps
         * most sends whole), so only the count is shown there. */
        if (b == 2)
            tap_check(k1.partial_sends > k0.partial_sends,
                      "%s: partial sends happened and were resumed (%llu, %s)", m,
                      (unsigned long long)(k1.partial_sends - k0.partial_sends), big[b].name);
        else
            tap_diag("%s: %llu partial sends (%s)", m,
                     (unsigned long long)(k1.partial_sends - k0.partial_sends), big[b].name);
    }
    S.small_sndbuf = false;
    client_rcvbuf = 0;

    memset(&S, 0, sizeof S);
    tap_check(drive(loop, reset_client, &cl) == 0, "%s: reset peer finished", m);
    tap_check(S.closes == 1 && (S.read_errs == 1 || S.eofs == 1),
              "%s: a peer resetting mid-stream gave a read error callback and a close (%d err, %d eof)",
              m, S.read_errs, S.eofs);
    tap_check(S.write_cbs >= 0, "%s: write callbacks ran (%d, %d failed)", m, S.write_cbs, S.write_errs);
    loop_hook_remove(loop, check_done, NULL);

    /* loop_connect to our own listener. */
    lclient_t lc = {0};
    memset(&S, 0, sizeof S);
    tap_check(loop_connect(loop, "127.0.0.1", cl.port, 2000 * LT_MS, lc_connect, &lc, NULL) == 0,
              "%s: loop_connect submitted", m);
    run_lclient(loop, &lc);
    tap_check(lc.status == 0 && lc.got_echo && lc.calls == 101,
              "%s: loop_connect with timeout reached the echo server and read the echo back", m);

    /* A closed port: -ECONNREFUSED through the callback. */
    lclient_t lr = {0};
    tap_check(loop_connect(loop, "127.0.0.1", closed_port(), 2000 * LT_MS, lc_connect, &lr, NULL) == 0,
              "%s: loop_connect to a closed port submitted", m);
    run_lclient(loop, &lr);
    tap_check(lr.status == -ECONNREFUSED && lr.calls == 101,
              "%s: connect to a closed port gave -ECONNREFUSED, then close (%d)", m, lr.status);

    tap_check(loop_connect(loop, "not-an-ip", 1, 0, lc_connect, &lr, NULL) == -EINVAL,
              "%s: loop_connect refuses a non-numeric address", m);

    loop_counters_t k;
    loop_counters(loop, &k);
    tap_check(k.open == 0 && k.accepted + k.connected + k.connect_failed == k.closed,
              "%s: counters balance: %llu accepted + %llu connected + %llu failed = %llu closed", m,
              (unsigned long long)k.accepted, (unsigned long long)k.connected,
              (unsigned long long)k.connect_failed, (unsigned long long)k.closed);
    loop_destroy(loop);
}

static void test_connect_timeout(void)
{
    loop_t *loop;
    loop_create(&loop, NULL);
    /* A listener with backlog 0 that never accepts: once one connection
     * waits in its queue, Linux drops further SYNs, so a connect hangs. */
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(lfd, (struct sockaddr *)&a, sizeof a);
    listen(lfd, 0);
    socklen_t len = sizeof a;
    getsockname(lfd, (struct sockaddr *)&a, &len);
    int fill[2];
    for (int i = 0; i < 2; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        connect(fill[i], (struct sockaddr *)&a, sizeof a);
    }
    usleep(50000);
    lclient_t lt = {0};
    uint64_t t0 = loop_now_ns();
    loop_connect(loop, "127.0.0.1", ntohs(a.sin_port), 200 * LT_MS, lc_connect, &lt, NULL);
    run_lclient(loop, &lt);
    uint64_t el = loop_now_ns() - t0;
    tap_check(lt.status == -ETIMEDOUT && lt.calls == 101,
              "connect timeout: -ETIMEDOUT after %llu ms, then close (%d)",
              (unsigned long long)(el / LT_MS), lt.status);
    close(fill[0]);
    close(fill[1]);
    close(lfd);
    loop_destroy(loop);
}

int main(void)
{
    run_mode(false);
    run_mode(true);
    test_connect_timeout();
    return tap_done();
}
