/*
 * tests/core/test_ids.c - ids: never zero, no duplicates in 1e6 per thread,
 * distinct across threads, and a forked child does not repeat its parent's
 * sequence (pthread_atfork reseed); hex helpers.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core.h"
#include "tap.h"

#define N 1000000

static int cmp64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static size_t dups(uint64_t *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp64);
    size_t d = 0;
    for (size_t i = 1; i < n; i++)
        d += v[i] == v[i - 1];
    return d;
}

#define NT 4
#define PER 100000
static uint64_t thread_ids[NT * PER];

static void *worker(void *arg)
{
    uint64_t *out = arg;
    for (int i = 0; i < PER; i++)
        trace_id_new_span((uint8_t *)&out[i]);
    return NULL;
}

int main(void)
{
    uint64_t *v = malloc(N * sizeof *v);
    size_t zero = 0;
    for (size_t i = 0; i < N; i++) {
        trace_id_new_span((uint8_t *)&v[i]);
        zero += v[i] == 0;
    }
    tap_check(zero == 0, "1e6 span ids: none all-zero");
    tap_check(dups(v, N) == 0, "1e6 span ids: no duplicates");

    uint8_t t[16];
    size_t tz = 0;
    for (int i = 0; i < 100000; i++) {
        trace_id_new(t);
        tz += !trace_id_is_valid(t, 16);
    }
    tap_check(tz == 0, "1e5 trace ids: none all-zero");

    pthread_t th[NT];
    for (int i = 0; i < NT; i++)
        pthread_create(&th[i], NULL, worker, &thread_ids[i * PER]);
    for (int i = 0; i < NT; i++)
        pthread_join(th[i], NULL);
    tap_check(dups(thread_ids, NT * PER) == 0, "%d threads x %d ids: no duplicates across threads", NT, PER);

    /* fork: the child's next ids must differ from the parent's next ids */
    enum { K = 64 };
    int fd[2];
    if (pipe(fd) != 0)
        return 1;
    pid_t pid = fork();
    if (pid == 0) {
        uint64_t c[K];
        for (int i = 0; i < K; i++)
            trace_id_new_span((uint8_t *)&c[i]);
        ssize_t w = write(fd[1], c, sizeof c);
        _exit(w == (ssize_t)sizeof c ? 0 : 1);
    }
    uint64_t p[K], c[K + 1];
    for (int i = 0; i < K; i++)
        trace_id_new_span((uint8_t *)&p[i]);
    size_t got = 0;
    while (got < sizeof(uint64_t) * K) {
        ssize_t r = read(fd[0], (char *)c + got, sizeof(uint64_t) * K - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    int st;
    waitpid(pid, &st, 0);
    size_t same = 0;
    for (int i = 0; i < K; i++)
        for (int j = 0; j < K; j++)
            same += p[i] == c[j];
    tap_check(got == sizeof(uint64_t) * K && same == 0, "fork: child does not repeat the parent's ids (%zu equal)", same);

    /* hex helpers */
    uint8_t in[4] = {0x00, 0xab, 0x7f, 0xff}, back[4];
    char hx[8];
    trace_id_hex(in, 4, hx);
    tap_check(memcmp(hx, "00ab7fff", 8) == 0, "hex: lower-case encoding");
    tap_check(trace_id_unhex(hx, 4, back) == 0 && memcmp(back, in, 4) == 0, "hex: round trip");
    tap_check(trace_id_unhex("00AB7FFF", 4, back) == -1, "hex: upper case refused");
    tap_check(trace_id_unhex("00ag7fff", 4, back) == -1, "hex: non-hex refused");
    free(v);
    return tap_done();
}
