/*
 * tests/loop/test_loop_shutdown.c - graceful shutdown of a forked server:
 * SIGTERM arrives as a loop callback, the server stops accepting, finishes
 * an in-flight slow exchange and exits 0; with a deadline shorter than the
 * exchange it closes the connection and exits 3.
 *
 * Usage: test_loop_shutdown   (TAP on stdout)
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>

#include "loop.h"
#include "loop_test.h"
#include "tap.h"

#define RESP "slow response\n"

static int notify_fd;         /* child -> parent: "request arrived" */
static uint64_t deadline_ns;  /* shutdown deadline */
static loop_timer_t slow;
static loop_conn_t *slow_conn;

static void on_sent(loop_conn_t *c, int status, void *arg)
{
    (void)arg;
    (void)status;
    loop_conn_close(c, NULL);
}

static void respond(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    (void)arg;
    if (loop_conn_state(slow_conn) != LOOP_CONN_OPEN)
        return; /* closed by the shutdown deadline */
    static const struct iovec iov = {(void *)RESP, sizeof RESP - 1};
    loop_conn_write(slow_conn, &iov, 1, on_sent, NULL);
}

static void on_read(loop_conn_t *c, ssize_t n, const void *buf, void *data)
{
    (void)buf;
    (void)data;
    if (n <= 0) {
        if (c != slow_conn || !loop_timer_active(&slow))
            loop_conn_close(c, NULL);
        return;
    }
    slow_conn = c;
    /* The slow work: 300 ms before the answer. */
    loop_timer_start(loop_conn_loop(c), &slow, 300 * LT_MS, 0, respond, NULL);
    char one = 'r';
    ssize_t w = write(notify_fd, &one, 1);
    (void)w;
}

static void on_accept(loop_listener_t *l, loop_conn_t *c, void *arg)
{
    (void)l;
    (void)arg;
    loop_conn_read_start(c, on_read);
}

static void forced_close(loop_conn_t *c, void *data)
{
    (void)c;
    (void)data;
}

static void on_term(loop_t *loop, int signo, void *arg)
{
    (void)signo;
    (void)arg;
    loop_shutdown(loop, deadline_ns, forced_close);
}

static int child_main(int port_fd)
{
    loop_t *loop;
    loop_timer_init(&slow);
    if (loop_create(&loop, NULL) != 0)
        return 10;
    if (loop_signal(loop, SIGTERM, on_term, NULL) != 0)
        return 11;
    loop_listener_t *l;
    if (loop_listen(loop, "127.0.0.1", 0, 16, on_accept, NULL, &l) != 0)
        return 12;
    uint16_t port = loop_listener_port(l);
    if (write(port_fd, &port, sizeof port) != sizeof port)
        return 13;
    int ret = loop_run(loop);
    loop_timer_stop(loop, &slow);
    loop_destroy(loop);
    return ret == 0 ? 0 : ret == -ETIMEDOUT ? 3 : 14;
}

static void run_case(uint64_t deadline, int want_status, bool want_response)
{
    int pp[2], np[2];
    if (pipe(pp) != 0 || pipe(np) != 0)
        abort();
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(pp[0]);
        close(np[0]);
        notify_fd = np[1];
        deadline_ns = deadline;
        _exit(child_main(pp[1]));
    }
    close(pp[1]);
    close(np[1]);
    uint16_t port = 0;
    ssize_t got = read(pp[0], &port, sizeof port);
    tap_check(got == sizeof port && port != 0,
              "deadline %llu ms: child server listens on port %u",
              (unsigned long long)(deadline / LT_MS), port);
    int fd = lt_connect(port);
    tap_check(fd >= 0 && lt_write_all(fd, "req\n", 4) == 0, "request sent");
    char one;
    tap_check(read(np[0], &one, 1) == 1, "server received the request");
    kill(pid, SIGTERM);
    /* After SIGTERM the listener closes: new connects are refused soon. */
    int refused = 0;
    for (int i = 0; i < 100 && !refused; i++) {
        int f2 = lt_connect(port);
        if (f2 == -ECONNREFUSED)
            refused = 1;
        else if (f2 >= 0)
            close(f2);
        usleep(2000);
    }
    tap_check(refused, "after SIGTERM the server stopped accepting (connect refused)");
    char buf[64] = {0};
    size_t n = lt_read_all(fd, buf, sizeof RESP - 1);
    if (want_response)
        tap_check(n == sizeof RESP - 1 && memcmp(buf, RESP, n) == 0,
                  "the in-flight slow exchange completed after SIGTERM (%zu bytes)", n);
    else
        tap_check(n == 0, "past the deadline the connection was closed without a response (%zu)", n);
    close(fd);
    int st = 0;
    tap_check(waitpid(pid, &st, 0) == pid, "waitpid");
    tap_check(WIFEXITED(st) && WEXITSTATUS(st) == want_status, "server exited with status %d (want %d)",
              WIFEXITED(st) ? WEXITSTATUS(st) : -1, want_status);
    close(pp[0]);
    close(np[0]);
}

int main(void)
{
    run_case(5000 * LT_MS, 0, true);
    run_case(50 * LT_MS, 3, false);
    return tap_done();
}
