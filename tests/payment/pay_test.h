/*
 * tests/payment/pay_test.h - helpers of the payment tests: start a child
 * process (shop-payment-sim, payment-svc) and wait for its "listening on
 * ADDR:PORT" line, stop it by pid.
 */
#ifndef SHOP_TESTS_PAY_TEST_H
#define SHOP_TESTS_PAY_TEST_H

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    pid_t pid;
    int port; /* from the "listening on" line; 0 = not seen */
} pt_child_t;

/* Starts argv (env entries "K=V" added with putenv in the child; stderr
 * goes to errlog) and waits up to 10 s for "listening on ...:PORT" on its
 * stdout.  Returns 0 or -1. */
/* A port nothing listens on, drawn from 20000-32767: below the kernel's
 * ephemeral range, so while a server stopped on it is down (the "processor
 * down" cases) no outgoing connection can take the port or connect to
 * itself on it and turn "refused" into something else.  0 if none found. */
__attribute__((unused)) static int pt_free_port(void)
{
    static unsigned seed;
    if (seed == 0)
        seed = (unsigned)getpid() ^ (unsigned)time(NULL);
    for (int tries = 0; tries < 200; tries++) {
        int port = 20000 + (int)(rand_r(&seed) % 12768u);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return 0;
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        a.sin_addr.s_addr = htonl(INADDR_ANY);
        int ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
        close(fd);
        if (ok)
            return port;
    }
    return 0;
}

__attribute__((unused)) static int pt_spawn(pt_child_t *c, const char *const argv[], const char *const env[],
                                            const char *errlog)
{
    int fds[2];
    c->pid = -1;
    c->port = 0;
    if (pipe(fds) != 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        int e = open(errlog, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (e >= 0)
            dup2(e, 2);
        for (int i = 0; env && env[i]; i++)
            putenv((char *)(uintptr_t)env[i]); /* the child's copy: never freed */
        execv(argv[0], (char *const *)(uintptr_t)argv);
        _exit(127);
    }
    close(fds[1]);
    c->pid = pid;
    char buf[512];
    size_t len = 0;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        struct pollfd p = {fds[0], POLLIN, 0};
        if (poll(&p, 1, 200) > 0) {
            ssize_t n = read(fds[0], buf + len, sizeof buf - 1 - len);
            if (n <= 0)
                break;
            len += (size_t)n;
            buf[len] = '\0';
            const char *l = strstr(buf, "listening on ");
            const char *nl = l ? strchr(l, '\n') : NULL;
            if (l && nl) {
                const char *colon = nl;
                while (colon > l && *colon != ':')
                    colon--;
                c->port = atoi(colon + 1);
                break;
            }
        }
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec > 10 || len + 1 >= sizeof buf)
            break;
    }
    /* keep the pipe open (child stdout writes must not SIGPIPE); leak the fd */
    return c->port > 0 ? 0 : -1;
}

/* SIGTERM, wait up to 5 s, then SIGKILL.  Returns the exit status or -1. */
__attribute__((unused)) static int pt_stop(pt_child_t *c)
{
    if (c->pid <= 0)
        return -1;
    kill(c->pid, SIGTERM);
    int st = 0;
    for (int i = 0; i < 100; i++) {
        if (waitpid(c->pid, &st, WNOHANG) == c->pid) {
            c->pid = -1;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        usleep(50000);
    }
    kill(c->pid, SIGKILL);
    waitpid(c->pid, &st, 0);
    c->pid = -1;
    return -1;
}

#endif
