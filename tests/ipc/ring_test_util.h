/*
 * tests/ipc/ring_test_util.h - helpers shared by the ring tests: unique shm
 * names, records whose every byte is derived from (producer, thread, seq),
 * and a wall clock for bounding loops (never for asserting speed).
 */
#ifndef SHOP_TESTS_RING_TEST_UTIL_H
#define SHOP_TESTS_RING_TEST_UTIL_H

#include "ring.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* Payload layout: u32 producer, u32 thread, u64 seq, u32 len, then bytes
 * derived from all four. */
#define RT_HDR 20u

__attribute__((unused)) static uint64_t rt_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

__attribute__((unused)) static void rt_name(char *buf, size_t len, const char *what)
{
    snprintf(buf, len, "/shop-trace-test-%s-%d", what, (int)getpid());
}

__attribute__((unused)) static uint32_t rt_len(uint32_t prod, uint32_t thread, uint64_t seq,
                                               uint32_t maxlen)
{
    uint32_t span = maxlen - RT_HDR + 1;
    return RT_HDR + (uint32_t)((seq * 2654435761u + prod * 40503u + thread * 977u) % span);
}

static uint8_t rt_byte(uint32_t prod, uint32_t thread, uint64_t seq, uint32_t i)
{
    return (uint8_t)(prod * 31u + thread * 17u + seq * 7u + i * 13u + (i >> 8));
}

__attribute__((unused)) static void rt_fill(uint8_t *p, uint32_t len, uint32_t prod,
                                            uint32_t thread, uint64_t seq)
{
    memcpy(p, &prod, 4);
    memcpy(p + 4, &thread, 4);
    memcpy(p + 8, &seq, 8);
    memcpy(p + 16, &len, 4);
    for (uint32_t i = RT_HDR; i < len; i++)
        p[i] = rt_byte(prod, thread, seq, i);
}

/* Checks a record byte for byte; returns 0 and the identity, or -1. */
__attribute__((unused)) static int rt_verify(const uint8_t *p, uint32_t len, uint32_t *prod,
                                             uint32_t *thread, uint64_t *seq)
{
    uint32_t l;
    if (len < RT_HDR)
        return -1;
    memcpy(prod, p, 4);
    memcpy(thread, p + 4, 4);
    memcpy(seq, p + 8, 8);
    memcpy(&l, p + 16, 4);
    if (l != len)
        return -1;
    for (uint32_t i = RT_HDR; i < len; i++)
        if (p[i] != rt_byte(*prod, *thread, *seq, i))
            return -1;
    return 0;
}

/* Anonymous shared memory the parent and its forked children all see. */
__attribute__((unused)) static void *rt_shared(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap(MAP_SHARED|MAP_ANONYMOUS)");
        _exit(99);
    }
    return p;
}

/* written == exported + consumer-side drops + in_ring */
__attribute__((unused)) static int rt_balanced(const ring_stats_t *s)
{
    uint64_t rhs = s->exported + s->in_ring + s->dropped[RING_DROP_CORRUPT] +
                   s->dropped[RING_DROP_REJECTED] + s->dropped[RING_DROP_EXPIRED] +
                   s->dropped[RING_DROP_SHUTDOWN];
    return s->written == rhs;
}

#endif
