/*
 * tests/loop/test_loop_readstop.c - read back-pressure on real sockets:
 * loop_conn_read_stop() stops the read callbacks, what the peer sends then
 * stays in the kernel (its receive buffer fills, the TCP window closes and
 * the peer's non-blocking send gets EAGAIN), and loop_conn_read_start()
 * delivers every byte, in order, then the EOF.  Run with multishot recv +
 * provided buffers and with the forced fallback (plain recv).
 *
 * The peer is a plain socket in this thread, non-blocking, driven between
 * short loop runs.
 *
 * Usage: test_loop_readstop   (TAP on stdout)
 */
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "loop.h"
#include "loop_test.h"
#include "tap.h"

#define SEED 7u
#define CHUNK 65536

static struct {
    loop_conn_t *c;
    bool stopped;        /* between read_stop and read_start */
    int reads_stopped;   /* read callbacks while stopped (must stay 0) */
    uint64_t got;        /* bytes delivered */
    uint64_t bad;        /* delivered bytes not matching the pattern at their offset */
    bool eof;
    int err;
} S;

static void on_read(loop_conn_t *c, ssize_t n, const void *buf, void *data)
{
    (void)data;
    if (S.stopped)
        S.reads_stopped++;
    if (n <= 0) {
        S.eof = n == 0;
        S.err = n < 0 ? (int)n : 0;
        loop_conn_close(c, NULL);
        S.c = NULL;
        return;
    }
    const uint8_t *p = buf;
    for (ssize_t i = 0; i < n; i++)
        S.bad += p[i] != lt_pattern(SEED, S.got + (uint64_t)i);
    S.got += (uint64_t)n;
}

static void on_accept(loop_listener_t *l, loop_conn_t *c, void *arg)
{
    (void)l, (void)arg;
    S.c = c;
    if (loop_conn_read_start(c, on_read) != 0)
        tap_diag("read_start on accept failed");
}

static void on_stop(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)t, (void)arg;
    loop_stop(loop);
}

static void run_for(loop_t *loop, unsigned ms)
{
    loop_timer_t t;
    loop_timer_init(&t);
    loop_timer_start(loop, &t, (uint64_t)ms * LT_MS, 0, on_stop, NULL);
    loop_run(loop);
    loop_timer_stop(loop, &t);
}

/* Sends the pattern from *off on, non-blocking, at most `limit` bytes in
 * all; returns false once a send would block. */
static bool send_some(int fd, uint64_t *off, uint64_t limit)
{
    static uint8_t buf[CHUNK];
    while (*off < limit) {
        size_t n = limit - *off < CHUNK ? (size_t)(limit - *off) : CHUNK;
        lt_fill(buf, n, SEED, *off);
        ssize_t w = send(fd, buf, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return false; /* EAGAIN: the window is closed */
        *off += (uint64_t)w;
    }
    return true;
}

/* A listener on a free port below the ephemeral range. */
static loop_listener_t *listen_free(loop_t *loop, uint16_t *port)
{
    loop_listener_t *l = NULL;
    for (int k = 0; k < 200; k++) {
        uint16_t p = (uint16_t)(20000 + (getpid() * 7 + k * 37) % 12000);
        if (loop_listen(loop, "127.0.0.1", p, 16, on_accept, NULL, &l) == 0) {
            *port = p;
            return l;
        }
    }
    return NULL;
}

static void run_mode(bool fallback)
{
    const char *m = fallback ? "fallback" : "multishot";
    memset(&S, 0, sizeof S);
    loop_options_t o = {.force_fallback = fallback};
    loop_t *loop;
    if (!tap_check(loop_create(&loop, &o) == 0, "%s: loop_create", m))
        return;
    uint16_t port = 0;
    loop_listener_t *l = listen_free(loop, &port);
    tap_check(l != NULL, "%s: listening on 127.0.0.1:%u", m, port);
    int fd = l ? lt_connect(port) : -1;
    for (int i = 0; i < 100 && fd >= 0 && !S.c; i++)
        run_for(loop, 10);
    if (!tap_check(fd >= 0 && S.c, "%s: client connected and accepted", m))
        goto out;

    /* reading: bytes arrive */
    uint64_t sent = 0;
    send_some(fd, &sent, 1000);
    for (int i = 0; i < 200 && S.got < 1000; i++)
        run_for(loop, 5);
    tap_check(S.got == 1000 && S.bad == 0, "%s: before read_stop, 1000 bytes delivered (%llu)", m,
              (unsigned long long)S.got);

    /* stopped: the peer sends until its sends block; nothing is delivered */
    tap_check(loop_conn_read_stop(S.c) == 0, "%s: loop_conn_read_stop", m);
    tap_check(loop_conn_read_stop(S.c) == 0, "%s: loop_conn_read_stop again is a no-op", m);
    S.stopped = true;
    uint64_t got_at_stop = S.got;
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    const uint64_t cap = 256ull << 20; /* a window that never closes would pass this */
    bool blocked = false;
    for (int round = 0; round < 400 && sent < cap; round++) {
        if (!send_some(fd, &sent, cap)) {
            run_for(loop, 20); /* the loop runs; would it read, the window would reopen */
            if (!send_some(fd, &sent, cap)) {
                blocked = true;
                break;
            }
        }
    }
    run_for(loop, 50);
    int pending = 0;
    ioctl(loop_conn_fd(S.c), FIONREAD, &pending);
    tap_check(blocked, "%s: the peer's send blocks (EAGAIN) after %llu bytes", m, (unsigned long long)sent);
    tap_check(S.reads_stopped == 0 && S.got == got_at_stop,
              "%s: no read callback while stopped (%d callbacks, %llu bytes)", m, S.reads_stopped,
              (unsigned long long)(S.got - got_at_stop));
    tap_check(pending > 0, "%s: the bytes stay in the kernel's receive buffer (%d queued)", m, pending);

    /* resumed: everything arrives, in order, then more, then the EOF */
    S.stopped = false;
    tap_check(loop_conn_read_start(S.c, on_read) == 0, "%s: loop_conn_read_start resumes", m);
    uint64_t total = sent + (1u << 20);
    for (int i = 0; i < 3000 && (S.got < total || sent < total); i++) {
        send_some(fd, &sent, total);
        run_for(loop, 2);
    }
    shutdown(fd, SHUT_WR);
    for (int i = 0; i < 500 && !S.eof && !S.err; i++)
        run_for(loop, 5);
    tap_check(S.got == total && S.bad == 0,
              "%s: after read_start every byte arrived in order (%llu of %llu, %llu wrong)", m,
              (unsigned long long)S.got, (unsigned long long)total, (unsigned long long)S.bad);
    tap_check(S.eof, "%s: then the EOF (err %d)", m, S.err);
out:
    if (fd >= 0)
        close(fd);
    if (S.c)
        loop_conn_close(S.c, NULL);
    if (l)
        loop_listener_close(l);
    run_for(loop, 10);
    loop_destroy(loop);
}

int main(void)
{
    run_mode(false);
    run_mode(true);
    return tap_done();
}
