/*
 * tests/loop/test_loop_churn.c - 10,000 connections opened, used and
 * closed one after another against an echo server on the loop: the fd
 * count and the loop's open-connection count must not grow (the san build
 * adds LeakSanitizer for memory).
 *
 * Usage: test_loop_churn   (TAP on stdout)
 */
#include <pthread.h>
#include <stdatomic.h>

#include "loop.h"
#include "loop_test.h"
#include "tap.h"

#define N 10000

static void on_read(loop_conn_t *c, ssize_t n, const void *buf, void *data)
{
    (void)data;
    if (n <= 0) {
        loop_conn_close(c, NULL);
        return;
    }
    loop_conn_write_copy(c, buf, (size_t)n);
}

static void on_accept(loop_listener_t *l, loop_conn_t *c, void *arg)
{
    (void)l;
    (void)arg;
    loop_conn_read_start(c, on_read);
}

static void stop_cb(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)t;
    (void)arg;
    loop_stop(loop);
}

typedef struct {
    loop_t *loop;
    uint16_t port;
    int fails;
    int fds_early, fds_late;
} client_t;

static void *client(void *arg)
{
    client_t *cl = arg;
    for (int i = 0; i < N; i++) {
        int fd = lt_connect(cl->port);
        uint8_t b = (uint8_t)i, r = 0;
        if (fd < 0 || lt_write_all(fd, &b, 1) != 0 || lt_read_all(fd, &r, 1) != 1 || r != b)
            cl->fails++;
        if (fd >= 0)
            close(fd);
        if (i == 100)
            cl->fds_early = lt_fd_count();
        if (i == N - 100)
            cl->fds_late = lt_fd_count();
    }
    loop_stop(cl->loop);
    return NULL;
}

int main(void)
{
    loop_t *loop;
    tap_check(loop_create(&loop, NULL) == 0, "loop_create");
    loop_listener_t *l;
    tap_check(loop_listen(loop, "127.0.0.1", 0, 128, on_accept, NULL, &l) == 0, "listen");
    int fds_before = lt_fd_count();
    client_t cl = {loop, loop_listener_port(l), 0, 0, 0};
    pthread_t th;
    pthread_create(&th, NULL, client, &cl);
    tap_check(loop_run(loop) == 0, "loop_run returns 0");
    pthread_join(th, NULL);
    /* Let the last connection's close complete. */
    loop_timer_t t;
    loop_timer_init(&t);
    for (int i = 0; i < 100; i++) {
        loop_counters_t k;
        loop_counters(loop, &k);
        if (k.open == 0)
            break;
        loop_timer_start(loop, &t, 10 * LT_MS, 0, stop_cb, NULL);
        loop_run(loop);
    }
    loop_counters_t k;
    loop_counters(loop, &k);
    tap_check(cl.fails == 0, "%d sequential connections echoed one byte each (%d failed)", N, cl.fails);
    tap_check(k.accepted == N && k.closed == N && k.open == 0,
              "every connection was accepted and closed (%llu/%llu, %llu open)",
              (unsigned long long)k.accepted, (unsigned long long)k.closed,
              (unsigned long long)k.open);
    tap_check(cl.fds_late <= cl.fds_early + 2,
              "no fd growth across the run (%d after 100, %d after %d)", cl.fds_early, cl.fds_late,
              N - 100);
    tap_check(lt_fd_count() == fds_before, "fd count back to %d after all closes (%d)", fds_before,
              lt_fd_count());
    loop_destroy(loop);
    return tap_done();
}
