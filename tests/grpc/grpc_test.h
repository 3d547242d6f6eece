/*
 * tests/grpc/grpc_test.h - process helpers shared by the gRPC test programs.
 */
#ifndef SHOP_TESTS_GRPC_TEST_H
#define SHOP_TESTS_GRPC_TEST_H

#include <fcntl.h>
#include <stdio.h>
#include <sys/types.h>
#include <unistd.h>

/* Runs argv (NULL-terminated) with stdout on a pipe and stderr appended to
 * `log` until it prints "listening on PORT"; returns PORT or -1.  *pid_out
 * gets the child. */
__attribute__((unused)) static int spawn_listener_log(char *const argv[], const char *log, pid_t *pid_out)
{
    int fds[2];
    if (pipe(fds) < 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1);
        int logfd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (logfd >= 0)
            dup2(logfd, 2);
        close(fds[0]);
        execv(argv[0], argv);
        perror("execv");
        _exit(127);
    }
    close(fds[1]);
    *pid_out = pid;
    FILE *f = fdopen(fds[0], "r");
    char line[256];
    int got = -1;
    while (f && fgets(line, sizeof line, f)) {
        unsigned p;
        if (sscanf(line, "listening on %u", &p) == 1) {
            got = (int)p;
            break;
        }
    }
    if (f)
        fclose(f);
    return got;
}

#endif
