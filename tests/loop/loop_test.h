/*
 * tests/loop/loop_test.h - helpers shared by the event loop tests: plain
 * blocking client sockets (the peer side runs outside the loop, in another
 * thread or process), a deterministic byte pattern and an fd counter.
 */
#ifndef SHOP_TESTS_LOOP_TEST_H
#define SHOP_TESTS_LOOP_TEST_H

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define LT_MS 1000000ull /* ns per ms */

/* Blocking TCP connect to 127.0.0.1:port; -errno on failure. */
__attribute__((unused)) static int lt_connect(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

__attribute__((unused)) static int lt_write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Reads exactly len bytes; returns bytes read (short on EOF/error). */
__attribute__((unused)) static size_t lt_read_all(int fd, void *buf, size_t len)
{
    char *p = buf;
    size_t got = 0;
    while (got < len) {
        ssize_t n = recv(fd, p + got, len - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    return got;
}

/* Byte i of stream `seed`: cheap, position-dependent, never constant. */
static inline uint8_t lt_pattern(uint32_t seed, uint64_t i)
{
    uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ ((uint64_t)seed << 32);
    return (uint8_t)(x >> 56) ^ (uint8_t)i;
}

__attribute__((unused)) static void lt_fill(uint8_t *buf, size_t len, uint32_t seed, uint64_t off)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = lt_pattern(seed, off + i);
}

/* Open file descriptors of this process (entries of /proc/self/fd). */
__attribute__((unused)) static int lt_fd_count(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the directory stream's own fd */
}

#endif
