/*
 * tests/loop/test_loop_watch.c - loop_watch_* (fd readiness on the loop):
 * readable and writable reports on a pipe, level-triggered re-reports,
 * pausing with loop_watch_set(0), and close from inside the callback.
 */
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "loop.h"
#include "tap.h"

static int reads, writes, closed_in_cb;
static loop_watch_t *wr, *ww;

static void on_read(loop_watch_t *w, unsigned ev, void *arg)
{
    int fd = *(int *)arg;
    if (ev & LOOP_WATCH_READ) {
        reads++;
        if (reads == 3) { /* level-triggered: still readable, reported again */
            char b[8];
            while (read(fd, b, sizeof b) > 0) {
            }
            loop_watch_close(w); /* from inside the callback */
            closed_in_cb = 1;
        }
    }
}

static void on_write(loop_watch_t *w, unsigned ev, void *arg)
{
    (void)arg;
    if (ev & LOOP_WATCH_WRITE) {
        writes++;
        loop_watch_set(w, 0);
    }
}

static void stop_cb(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)t;
    (void)arg;
    loop_stop(loop);
}

int main(void)
{
    loop_t *loop;
    tap_check(loop_create(&loop, NULL) == 0, "loop created");
    int p[2];
    if (pipe2(p, O_NONBLOCK) != 0)
        return 1;
    tap_check(loop_watch_start(loop, -1, on_read, NULL, &wr) == -EBADF, "fd -1: -EBADF");
    tap_check(loop_watch_start(loop, p[0], on_read, &p[0], &wr) == 0, "watch on the read end");
    tap_check(loop_watch_start(loop, p[1], on_write, NULL, &ww) == 0, "watch on the write end");
    loop_watch_set(wr, LOOP_WATCH_READ);
    loop_watch_set(ww, LOOP_WATCH_WRITE);
    tap_check(reads == 0 && writes == 0, "no callback inside loop_watch_set");
    if (write(p[1], "x", 1) != 1)
        return 1;
    loop_timer_t t;
    loop_timer_init(&t);
    loop_timer_start(loop, &t, 200u * 1000000u, 0, stop_cb, NULL);
    loop_run(loop);
    tap_check(writes == 1, "writable reported once, then paused: %d", writes);
    tap_check(reads == 3 && closed_in_cb, "readable re-reported while data stays (level), closed in callback: %d",
              reads);
    loop_watch_set(ww, LOOP_WATCH_WRITE);
    loop_timer_start(loop, &t, 50u * 1000000u, 0, stop_cb, NULL);
    loop_run(loop);
    tap_check(writes == 2, "re-enabled watch reports again: %d", writes);
    loop_watch_close(ww);
    loop_timer_start(loop, &t, 20u * 1000000u, 0, stop_cb, NULL);
    loop_run(loop);
    close(p[0]);
    close(p[1]);
    loop_destroy(loop);
    return tap_done();
}
