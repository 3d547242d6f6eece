/*
 * perf/bench_harness.c - driver, children, timing and statistics shared by
 * the span-write benchmarks.  See bench_harness.h for the shape of a run.
 *
 * Options (every bench program):
 *   --producers N    producer processes (default 1)
 *   --spans M        timed spans per producer (default 750000)
 *   --warmup W       untimed spans per producer first (default 100000)
 *   --tsc-hz HZ      skip calibration, use this TSC rate
 *   --ncpu C         pin producer k to CPU k % C (default: online CPUs)
 *   --lane-size B    ring lane bytes (bench_ring only; default: sized to
 *                    hold warm-up + timed spans, at most the ring's maximum)
 *   --calibrate      print the calibrated TSC rate and exit
 * Internal (the re-executed children): --child producer|consumer
 *   --index K --ctl-fd FD
 */
#include "bench_harness.h"

#include <errno.h>
#include <getopt.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BENCH_CTL_BYTES (((sizeof(bench_ctl_t) + 4095u) / 4096u) * 4096u)
#define BENCH_WAIT_READY_NS (120ull * 1000000000ull)

uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t bench__raw_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_RAW, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int bench_pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set) != 0) {
        int e = errno;
        fprintf(stderr, "bench: sched_setaffinity(cpu %d): %s\n", cpu, strerror(e));
        return -e;
    }
    return 0;
}

/* One clock sample bracketed by two TSC reads; the TSC value is the middle
 * of the bracket.  Returns the bracket width so the caller can retry a
 * sample that was interrupted. */
static uint64_t bench__pair(uint64_t *tsc, uint64_t *ns)
{
    uint64_t a = bench_tsc_begin();
    *ns = bench__raw_ns();
    uint64_t b = bench_tsc_end();
    *tsc = a + (b - a) / 2;
    return b - a;
}

static void bench__pair_best(uint64_t *tsc, uint64_t *ns)
{
    uint64_t best = UINT64_MAX;
    for (int i = 0; i < 16; i++) {
        uint64_t t, n, w = bench__pair(&t, &n);
        if (w < best) {
            best = w;
            *tsc = t;
            *ns = n;
        }
    }
}

double bench_tsc_calibrate(unsigned ms)
{
#if BENCH_HAVE_TSC
    uint64_t t0, n0, t1, n1;
    bench__pair_best(&t0, &n0);
    /* Sleep rather than spin: on a shared machine a spin can be preempted
     * just as well, and the brackets make the endpoints exact anyway. */
    struct timespec d = {.tv_sec = ms / 1000u, .tv_nsec = (long)(ms % 1000u) * 1000000L};
    nanosleep(&d, NULL);
    bench__pair_best(&t1, &n1);
    return (double)(t1 - t0) * 1e9 / (double)(n1 - n0);
#else
    (void)ms;
    return 1e9; /* the "TSC" is CLOCK_MONOTONIC in ns */
#endif
}

static void bench__swap(uint32_t *a, uint32_t *b)
{
    uint32_t t = *a;
    *a = *b;
    *b = t;
}

uint32_t bench_nth(uint32_t *v, size_t lo, size_t hi, size_t k)
{
    /* Hoare selection with median-of-three pivots; the range shrinks to
     * the side holding k until it is tiny, then insertion sort. */
    while (hi - lo > 16) {
        size_t mid = lo + (hi - lo) / 2;
        if (v[mid] < v[lo]) bench__swap(&v[mid], &v[lo]);
        if (v[hi - 1] < v[lo]) bench__swap(&v[hi - 1], &v[lo]);
        if (v[hi - 1] < v[mid]) bench__swap(&v[hi - 1], &v[mid]);
        uint32_t pivot = v[mid];
        size_t i = lo, j = hi - 1;
        for (;;) {
            while (v[i] < pivot) i++;
            while (v[j] > pivot) j--;
            if (i >= j) break;
            bench__swap(&v[i], &v[j]);
            i++;
            j--;
        }
        /* now v[lo..j] <= pivot <= v[j+1..hi) */
        if (k <= j)
            hi = j + 1;
        else
            lo = j + 1;
    }
    for (size_t i = lo + 1; i < hi; i++) {
        uint32_t x = v[i];
        size_t j = i;
        while (j > lo && v[j - 1] > x) {
            v[j] = v[j - 1];
            j--;
        }
        v[j] = x;
    }
    return v[k];
}

uint64_t bench_timer_overhead(uint32_t *scratch, size_t n)
{
    BENCH_TIMED_LOOP(scratch, n, i, (void)0);
    return bench_nth(scratch, 0, n, n / 2);
}

void bench_barrier(bench_ctl_t *ctl)
{
    atomic_fetch_add_explicit(&ctl->ready, 1, memory_order_acq_rel);
    while (!atomic_load_explicit(&ctl->go, memory_order_acquire))
        _mm_pause();
}

/* ------------------------------------------------------------ children */

static int bench__map_ctl(int fd, bench_ctl_t **ctl, size_t *len)
{
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        perror("bench: fstat(ctl memfd)");
        return -e;
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        int e = errno;
        perror("bench: mmap(ctl memfd)");
        return -e;
    }
    *ctl = p;
    *len = (size_t)st.st_size;
    return 0;
}

static uint32_t *bench__samples(bench_ctl_t *ctl, uint32_t k)
{
    /* BENCH_CTL_BYTES keeps the sample area 64-byte aligned in the mapping */
    return (uint32_t *)(void *)((char *)ctl + BENCH_CTL_BYTES) + (size_t)k * ctl->spans;
}

static int bench__producer_child(bench_ctl_t *ctl, uint32_t k, const bench_ops_t *ops)
{
    int cpu = (int)(k % ctl->ncpu);
    int rc = bench_pin(cpu);
    ctl->prod[k].cpu = cpu;
    if (rc == 0) rc = ops->producer_init(ctl, k);
    if (rc != 0) {
        ctl->prod[k].status = rc;
        atomic_fetch_add(&ctl->ready, 1); /* do not hold the others up */
        return rc;
    }
    uint32_t *samples = bench__samples(ctl, k);
    size_t probe = ctl->spans < 100000 ? (size_t)ctl->spans : 100000;
    ctl->prod[k].overhead_cyc = bench_timer_overhead(samples, probe);
    /* Touch every sample slot now so no page fault lands in the loop. */
    memset(samples, 0, ctl->spans * sizeof(uint32_t));
    rc = ops->producer_run(ctl, k, NULL, ctl->warmup);
    bench_barrier(ctl);
    ctl->prod[k].begin_ns = bench_now_ns();
    if (rc == 0) rc = ops->producer_run(ctl, k, samples, ctl->spans);
    ctl->prod[k].end_ns = bench_now_ns();
    atomic_fetch_add(&ctl->producers_done, 1);
    ops->producer_fini(ctl, k);
    ctl->prod[k].status = rc;
    return rc;
}

static int bench__child(const char *role, uint32_t k, int fd, const bench_ops_t *ops)
{
    bench_ctl_t *ctl = NULL;
    size_t len = 0;
    int rc = bench__map_ctl(fd, &ctl, &len);
    if (rc != 0) return 2;
    if (strcmp(role, "producer") == 0) {
        if (k >= ctl->producers) {
            fprintf(stderr, "bench: producer index %u out of range\n", k);
            return 2;
        }
        rc = bench__producer_child(ctl, k, ops);
    } else if (strcmp(role, "consumer") == 0 && ops->consumer) {
        rc = ops->consumer(ctl);
        ctl->consumer_status = rc;
    } else {
        fprintf(stderr, "bench: unknown child role '%s'\n", role);
        return 2;
    }
    munmap(ctl, len);
    return rc == 0 ? 0 : 1;
}

/* -------------------------------------------------------------- driver */

static pid_t bench__spawn(const char *role, uint32_t k, int fd)
{
    pid_t pid = fork();
    if (pid < 0) {
        perror("bench: fork");
        return -1;
    }
    if (pid == 0) {
        char idx[16], fds[16];
        snprintf(idx, sizeof(idx), "%u", k);
        snprintf(fds, sizeof(fds), "%d", fd);
        char *args[] = {(char *)"bench-child", (char *)"--child", (char *)role,
                        (char *)"--index", idx, (char *)"--ctl-fd", fds, NULL};
        execv("/proc/self/exe", args);
        perror("bench: execv(/proc/self/exe)");
        _exit(127);
    }
    return pid;
}

static double bench__ns(const bench_ctl_t *ctl, double cyc)
{
    return cyc * 1e9 / ctl->tsc_hz;
}

static int bench__cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void bench__report(bench_ctl_t *ctl, const bench_ops_t *ops, FILE *out)
{
    uint32_t np = ctl->producers;
    size_t m = ctl->spans, n = (size_t)np * m;
    uint32_t *all = bench__samples(ctl, 0);

    uint64_t ovh[BENCH_MAX_PRODUCERS];
    double p50k[BENCH_MAX_PRODUCERS];
    uint64_t begin = UINT64_MAX, end = 0, written = 0, dropped = 0;
    bool own_count = ops->finish != NULL; /* the buffer counted for us */
    for (uint32_t k = 0; k < np; k++) {
        ovh[k] = ctl->prod[k].overhead_cyc;
        uint32_t *s = bench__samples(ctl, k);
        p50k[k] = (double)bench_nth(s, 0, m, (m - 1) / 2);
        if (ctl->prod[k].begin_ns < begin) begin = ctl->prod[k].begin_ns;
        if (ctl->prod[k].end_ns > end) end = ctl->prod[k].end_ns;
        written += ctl->prod[k].written;
        dropped += ctl->prod[k].dropped;
    }
    qsort(ovh, np, sizeof(ovh[0]), bench__cmp_u64);
    double overhead = (double)ovh[np / 2];

    /* nearest-rank percentiles, each selection on the part right of the
     * previous one */
    size_t k50 = (n - 1) / 2, k99 = (size_t)((double)n * 0.99), k999 = (size_t)((double)n * 0.999);
    if (k99 >= n) k99 = n - 1;
    if (k999 >= n) k999 = n - 1;
    double c50 = bench_nth(all, 0, n, k50);
    double c99 = bench_nth(all, k50, n, k99);
    double c999 = bench_nth(all, k99, n, k999);
    uint32_t cmax = 0;
    for (size_t i = k999; i < n; i++)
        if (all[i] > cmax) cmax = all[i];

    double secs = (double)(end - begin) / 1e9;
    fprintf(out,
            "{\"impl\":\"%s\",\"mode\":\"write\",\"producers\":%u,\"spans_per_producer\":%zu,"
            "\"warmup_per_producer\":%llu,\"tsc_hz\":%.0f,\"timer_overhead_ns\":%.2f,"
            "\"p50_ns\":%.2f,\"p99_ns\":%.2f,\"p999_ns\":%.2f,\"max_ns\":%.1f,"
            "\"p50_raw_ns\":%.2f,\"seconds\":%.4f,\"spans_per_s\":%.0f,"
            "\"written\":%llu,\"dropped\":%llu,\"per_producer_p50_ns\":[",
            ops->impl, np, m, (unsigned long long)ctl->warmup, ctl->tsc_hz,
            bench__ns(ctl, overhead), bench__ns(ctl, c50 - overhead),
            bench__ns(ctl, c99 - overhead), bench__ns(ctl, c999 - overhead),
            bench__ns(ctl, (double)cmax - overhead), bench__ns(ctl, c50), secs,
            (double)n / secs, (unsigned long long)(own_count ? ctl->buf_written : written),
            (unsigned long long)(own_count ? ctl->buf_dropped : dropped));
    for (uint32_t k = 0; k < np; k++)
        fprintf(out, "%s%.2f", k ? "," : "", bench__ns(ctl, p50k[k] - overhead));
    fprintf(out, "],\"cpus\":[");
    for (uint32_t k = 0; k < np; k++) fprintf(out, "%s%d", k ? "," : "", ctl->prod[k].cpu);
    fprintf(out, "]");
    if (ops->consumer)
        fprintf(out, ",\"consumed\":%llu,\"invalid\":%llu,\"consumer_empty_polls\":%llu",
                (unsigned long long)ctl->consumed, (unsigned long long)ctl->invalid,
                (unsigned long long)ctl->empty_polls);
    ctl->extra_json[sizeof(ctl->extra_json) - 1] = 0;
    fputs(ctl->extra_json, out);
}

static void bench_usage(FILE *f)
{
    fprintf(f,
            "usage: bench [--producers N] [--spans M] [--warmup W] [--tsc-hz HZ]\n"
            "             [--ncpu C] [--lane-size BYTES] [--calibrate]\n");
}

static int bench__wait_all(pid_t *pids, int n)
{
    int bad = 0;
    for (int i = 0; i < n; i++) {
        if (pids[i] <= 0) continue;
        int st;
        if (waitpid(pids[i], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "bench: child %d failed (status 0x%x)\n", (int)pids[i], st);
            bad++;
        }
        pids[i] = 0;
    }
    return bad;
}

/* True while no child in pids[] has exited yet. */
static bool bench__all_alive(pid_t *pids, int n)
{
    for (int i = 0; i < n; i++) {
        int st;
        if (pids[i] > 0 && waitpid(pids[i], &st, WNOHANG) == pids[i]) {
            fprintf(stderr, "bench: child %d exited early (status 0x%x)\n", (int)pids[i], st);
            pids[i] = 0;
            return false;
        }
    }
    return true;
}

static int bench__driver(const bench_ctl_t *opt, const bench_ops_t *ops)
{
    int rc = 1;
    size_t len = BENCH_CTL_BYTES + (size_t)opt->producers * opt->spans * sizeof(uint32_t);
    pid_t pids[BENCH_MAX_PRODUCERS + 1] = {0};
    int npids = 0;
    bench_ctl_t *ctl = MAP_FAILED;
    bool set_up = false;

    /* No MFD_CLOEXEC: the re-executed children inherit the descriptor. */
    int fd = memfd_create("shop-bench-ctl", 0);
    if (fd < 0) {
        perror("bench: memfd_create");
        return 1;
    }
    if (ftruncate(fd, (off_t)len) != 0) {
        perror("bench: ftruncate(ctl memfd)");
        goto err;
    }
    ctl = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (ctl == MAP_FAILED) {
        perror("bench: mmap(ctl memfd)");
        goto err;
    }
    *ctl = *opt;
    if (ops->setup(ctl) != 0) goto err;
    set_up = true;

    if (ops->consumer) {
        pids[npids++] = bench__spawn("consumer", 0, fd);
        uint64_t t0 = bench_now_ns();
        while (!atomic_load(&ctl->consumer_ready)) {
            if (!bench__all_alive(pids, npids) || bench_now_ns() - t0 > BENCH_WAIT_READY_NS) {
                fprintf(stderr, "bench: consumer did not attach\n");
                goto err;
            }
            usleep(1000);
        }
    }
    int first_producer = npids;
    for (uint32_t k = 0; k < ctl->producers; k++) {
        pids[npids] = bench__spawn("producer", k, fd);
        if (pids[npids++] < 0) goto err;
    }
    uint64_t t0 = bench_now_ns();
    while (atomic_load(&ctl->ready) < ctl->producers) {
        if (!bench__all_alive(pids, npids) || bench_now_ns() - t0 > BENCH_WAIT_READY_NS) {
            fprintf(stderr, "bench: producers did not get ready\n");
            goto err;
        }
        usleep(1000);
    }
    if (ops->before_go && ops->before_go(ctl) != 0) goto err;
    atomic_store(&ctl->go, 1);
    int bad = bench__wait_all(pids + first_producer, npids - first_producer);
    atomic_store(&ctl->stop, 1);
    bad += bench__wait_all(pids, first_producer);
    for (uint32_t k = 0; k < ctl->producers; k++)
        if (ctl->prod[k].status != 0) bad++;
    if (bad) {
        fprintf(stderr, "bench: %d child(ren) failed; no result\n", bad);
        goto err;
    }
    if (ops->finish) ops->finish(ctl);
    bench__report(ctl, ops, stdout);
    fputs("}\n", stdout);
    fflush(stdout);
    rc = 0;
err:
    atomic_store(&ctl->stop, 1);
    atomic_store(&ctl->go, 1);
    for (int i = 0; i < npids; i++)
        if (pids[i] > 0) kill(pids[i], SIGTERM);
    bench__wait_all(pids, npids);
    if (set_up && ops->teardown) ops->teardown(ctl);
    if (ctl != MAP_FAILED) munmap(ctl, len);
    close(fd);
    return rc;
}

static int bench__u64(const char *s, uint64_t *v)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 0);
    if (errno || end == s || *end) return -1;
    *v = x;
    return 0;
}

int bench_main(int argc, char **argv, const bench_ops_t *ops)
{
    static const struct option longopts[] = {
        {"producers", required_argument, NULL, 'p'}, {"spans", required_argument, NULL, 'n'},
        {"warmup", required_argument, NULL, 'w'},    {"tsc-hz", required_argument, NULL, 'h'},
        {"ncpu", required_argument, NULL, 'c'},      {"lane-size", required_argument, NULL, 'l'},
        {"calibrate", no_argument, NULL, 'C'},       {"child", required_argument, NULL, 'R'},
        {"index", required_argument, NULL, 'i'},     {"ctl-fd", required_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'H'},            {NULL, 0, NULL, 0}};
    bench_ctl_t opt;
    memset(&opt, 0, sizeof(opt));
    opt.producers = 1;
    opt.spans = 750000;
    opt.warmup = 100000;
    long on = sysconf(_SC_NPROCESSORS_ONLN);
    opt.ncpu = on > 0 ? (uint32_t)on : 1;
    const char *role = NULL;
    uint64_t idx = 0, fd = 0, v;
    bool calibrate_only = false;
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        const char *a = optarg;
        switch (c) {
        case 'p':
            if (bench__u64(a, &v) || v < 1 || v > BENCH_MAX_PRODUCERS) goto bad;
            opt.producers = (uint32_t)v;
            break;
        case 'n':
            if (bench__u64(a, &opt.spans) || opt.spans < 1000 || opt.spans > (1u << 26)) goto bad;
            break;
        case 'w':
            if (bench__u64(a, &opt.warmup)) goto bad;
            break;
        case 'h':
            opt.tsc_hz = strtod(a, NULL);
            if (!(opt.tsc_hz > 1e6)) goto bad;
            break;
        case 'c':
            if (bench__u64(a, &v) || v < 1 || v > 4096) goto bad;
            opt.ncpu = (uint32_t)v;
            break;
        case 'l':
            if (bench__u64(a, &opt.lane_size)) goto bad;
            break;
        case 'C':
            calibrate_only = true;
            break;
        case 'R':
            role = a;
            break;
        case 'i':
            if (bench__u64(a, &idx)) goto bad;
            break;
        case 'f':
            if (bench__u64(a, &fd)) goto bad;
            break;
        case 'H':
            bench_usage(stdout);
            return 0;
        default:
            bench_usage(stderr);
            return 2;
        }
        continue;
    bad:
        fprintf(stderr, "bench: bad option value '%s'\n", a);
        bench_usage(stderr);
        return 2;
    }
    if (role) return bench__child(role, (uint32_t)idx, (int)fd, ops);
    if (opt.tsc_hz == 0) opt.tsc_hz = bench_tsc_calibrate(200);
    if (calibrate_only) {
        printf("%.0f\n", opt.tsc_hz);
        return 0;
    }
    return bench__driver(&opt, ops);
}
