/*
 * perf/bench_ring.c - the cost of writing one span through core's tracing
 * API into the ipc span ring, with a consumer process draining it; and the
 * consumer's own rate.  Baseline: bench_lttng (same harness, same payload).
 *
 * Usage:
 *   bench_ring [--producers N] [--spans M] [--warmup W] [--tsc-hz HZ] [--lane-size B]
 *       N producer processes (producer k pinned to CPU k % nproc) each write
 *       W untimed then M timed spans: trace_span_start (remote parent), five
 *       string and one int attribute, status OK, trace_span_end.  A consumer
 *       process (pinned to the last CPU) peeks, decodes with
 *       span_record_decode, walks every item as the exporter does, hands the
 *       decoded span to a batch array and releases.  Prints one JSON line.
 *   bench_ring --drain [--spans M] [--lanes L] [--lane-size B]
 *       L producer processes fill L lanes (default 4 of the product's 1 MiB);
 *       then this process, pinned to CPU 0, drains and validates them, timed;
 *       repeated until M records (default 1000000) were drained: records/s
 *       on one core.
 *   bench_ring --breakdown [--spans M]
 *       one process, no consumer: median TSC cost of each step of a span
 *       (start, the 6 attributes, status, end) for the ring's owners.
 *
 * perf/bench-ring.sh runs all of it against LTTng-UST (./shop bench ring).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_harness.h"
#include "bench_span.h"
#include "core.h"
#include "ring.h"

#define BENCH_RING_LIT(s) (s), (sizeof(s) - 1)
#define BENCH_RING_BATCH 64     /* records per peek */
#define BENCH_RING_QUEUE 512    /* the exporter's batch: decoded spans handed on */
#define BENCH_RING_MAX_RECORD (16u * 1024u)

static const trace_scope_t bench_ring_scope = TRACE_SCOPE("shop.gateway", "0.1.0");

/* ------------------------------------------------------------ the span */

/* The remote parent the span continues (as after extracting traceparent). */
static trace_context_t bench_ring_parent;

static void bench_ring__make_parent(uint32_t k)
{
    memset(&bench_ring_parent, 0, sizeof(bench_ring_parent));
    trace_id_new(bench_ring_parent.trace_id);
    trace_id_new_span(bench_ring_parent.span_id);
    bench_ring_parent.span_id[0] ^= (uint8_t)k;
    bench_ring_parent.flags = TRACE_FLAG_SAMPLED;
    bench_ring_parent.is_remote = true;
}

static inline void bench_ring__span(trace_span_t *s)
{
    trace_span_start(s, &bench_ring_scope, BENCH_RING_LIT(BENCH_SPAN_NAME), TRACE_KIND_SERVER,
                     &bench_ring_parent);
    trace_span_set_str_n(s, BENCH_RING_LIT(BENCH_K_METHOD), BENCH_RING_LIT(BENCH_V_METHOD));
    trace_span_set_str_n(s, BENCH_RING_LIT(BENCH_K_ROUTE), BENCH_RING_LIT(BENCH_V_ROUTE));
    trace_span_set_str_n(s, BENCH_RING_LIT(BENCH_K_PATH), BENCH_RING_LIT(BENCH_V_PATH));
    trace_span_set_str_n(s, BENCH_RING_LIT(BENCH_K_SCHEME), BENCH_RING_LIT(BENCH_V_SCHEME));
    trace_span_set_int_n(s, BENCH_RING_LIT(BENCH_K_STATUS_CODE), BENCH_V_STATUS_CODE);
    trace_span_set_str_n(s, BENCH_RING_LIT(BENCH_K_CLIENT), BENCH_RING_LIT(BENCH_V_CLIENT));
    trace_span_set_status(s, TRACE_STATUS_OK, NULL, 0);
    trace_span_end(s);
}

/* Bytes of one encoded span record (the payload the ring carries). */
static int bench_ring__record_size(void)
{
    static trace_span_t s;
    static uint8_t buf[BENCH_RING_MAX_RECORD];
    trace_span_start(&s, &bench_ring_scope, BENCH_RING_LIT(BENCH_SPAN_NAME), TRACE_KIND_SERVER,
                     &bench_ring_parent);
    trace_span_set_str_n(&s, BENCH_RING_LIT(BENCH_K_METHOD), BENCH_RING_LIT(BENCH_V_METHOD));
    trace_span_set_str_n(&s, BENCH_RING_LIT(BENCH_K_ROUTE), BENCH_RING_LIT(BENCH_V_ROUTE));
    trace_span_set_str_n(&s, BENCH_RING_LIT(BENCH_K_PATH), BENCH_RING_LIT(BENCH_V_PATH));
    trace_span_set_str_n(&s, BENCH_RING_LIT(BENCH_K_SCHEME), BENCH_RING_LIT(BENCH_V_SCHEME));
    trace_span_set_int_n(&s, BENCH_RING_LIT(BENCH_K_STATUS_CODE), BENCH_V_STATUS_CODE);
    trace_span_set_str_n(&s, BENCH_RING_LIT(BENCH_K_CLIENT), BENCH_RING_LIT(BENCH_V_CLIENT));
    trace_span_set_status(&s, TRACE_STATUS_OK, NULL, 0);
    return trace_span_end_into(&s, 0, buf, sizeof(buf));
}

/* ------------------------------------------------------ ring plumbing */

static ring_t *bench_ring_r;           /* driver / consumer mapping */
static ring_geometry_t bench_ring_geo; /* what the driver created */

/* Smallest power of two >= x, clamped to the ring's lane limits. */
static uint64_t bench_ring__lane_size(uint64_t want)
{
    uint64_t sz = RING_LANE_SIZE_MIN;
    while (sz < want && sz < RING_LANE_SIZE_MAX) sz <<= 1;
    return sz;
}

/*
 * Maps every page of this process's view of the ring now.  A long-running
 * service has touched its lane many times over; a fresh benchmark process
 * has not, and would otherwise pay a shmem page fault every ~13 spans
 * inside the timed loop.  The mapping is found by its /dev/shm name.
 */
static void bench_ring__prefault(const char *name)
{
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return;
    char line[512], want[BENCH_NAME_MAX + 16];
    snprintf(want, sizeof(want), "/dev/shm%s", name);
    while (fgets(line, sizeof(line), f)) {
        unsigned long lo, hi;
        char perms[8];
        if (!strstr(line, want) || sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3) continue;
#ifdef MADV_POPULATE_WRITE
        int adv = perms[1] == 'w' ? MADV_POPULATE_WRITE : MADV_POPULATE_READ;
        if (madvise((void *)lo, hi - lo, adv) != 0)
            fprintf(stderr, "bench_ring: madvise(populate %s): %s (page faults may land in the loop)\n",
                    name, strerror(errno));
#endif
    }
    fclose(f);
}

static int bench_ring__create(const char *name, uint32_t lanes, uint64_t lane_size)
{
    char err[256];
    bench_ring_geo.lanes = lanes;
    bench_ring_geo.lane_size = lane_size;
    bench_ring_geo.max_record = BENCH_RING_MAX_RECORD;
    ring_unlink(name); /* a leftover of a killed run */
    int rc = ring_open(name, &bench_ring_geo, true, &bench_ring_r, err, sizeof(err));
    if (rc != 0) fprintf(stderr, "bench_ring: ring_open(%s, create): %s (%d)\n", name, err, rc);
    return rc;
}

static int bench_ring__trace_init(const char *name, const ring_geometry_t *g, uint32_t k)
{
    char err[256], inst[32];
    snprintf(inst, sizeof(inst), "bench-%u", k);
    trace_options_t o = {.service_name = "bench", .service_instance_id = inst,
                         .ring_name = name, .geometry = g};
    trace_sampler_t always = {.kind = TRACE_SAMPLER_ALWAYS_ON, .ratio = 1.0};
    o.sampler = &always;
    int rc = trace_init(&o, err, sizeof(err));
    if (rc != 0) fprintf(stderr, "bench_ring: trace_init(%s): %s (%d)\n", name, err, rc);
    return rc;
}

/* ------------------------------------------------------------ consumer */

typedef struct st_bench_ring_drain_t {
    span_record_t queue[BENCH_RING_QUEUE]; /* handed-on spans (a batch) */
    uint32_t qlen;
    uint64_t ok, invalid, attrs;
} bench_ring_drain_t;

/* Decodes and validates one record as the exporter does before it turns it
 * into OTLP: the whole record (span_record_decode), then every item. */
static inline bool bench_ring__validate(bench_ring_drain_t *d, const ring_record_t *rec)
{
    span_record_t *sr = &d->queue[d->qlen];
    if (span_record_decode(rec->data, rec->len, sr) != 0) return false;
    uint32_t off = 0, n = 0;
    span_record_item_t it;
    int rc;
    while ((rc = span_record_next(sr->items, sr->items_len, &off, &it)) == 1)
        if (it.tag == SPAN_ITEM_ATTR) n++;
    if (rc != 0 || n != sr->n_attrs) return false;
    d->attrs += n;
    d->qlen = (d->qlen + 1) % BENCH_RING_QUEUE; /* hand on: the exporter's batch slot */
    return true;
}

/* One peek/validate/release round; returns records seen. */
static int bench_ring__drain_once(ring_t *r, bench_ring_drain_t *d)
{
    ring_record_t recs[BENCH_RING_BATCH];
    int n = ring_consumer_peek(r, recs, BENCH_RING_BATCH);
    if (n <= 0) return n;
    uint64_t bad = 0;
    for (int i = 0; i < n; i++) {
        if (bench_ring__validate(d, &recs[i]))
            d->ok++;
        else
            bad++;
    }
    d->invalid += bad;
    ring_consumer_release(r, (uint64_t)n, (uint64_t)n - bad, RING_DROP_CORRUPT);
    return n;
}

static int bench_ring__attach_consumer(const char *name)
{
    char err[256];
    int rc = ring_open(name, NULL, false, &bench_ring_r, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "bench_ring: ring_open(%s): %s (%d)\n", name, err, rc);
        return rc;
    }
    rc = ring_consumer_open(bench_ring_r, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "bench_ring: ring_consumer_open(%s): %s (%d)\n", name, err, rc);
        ring_close(bench_ring_r);
        return rc;
    }
    bench_ring__prefault(name);
    return 0;
}

static int bench_ring__consumer(bench_ctl_t *ctl)
{
    static bench_ring_drain_t d;
    bench_pin((int)(ctl->ncpu - 1));
    int rc = bench_ring__attach_consumer(ctl->name);
    if (rc != 0) return rc;
    atomic_store(&ctl->consumer_ready, 1);
    uint32_t idle = 0;
    for (;;) {
        int n = bench_ring__drain_once(bench_ring_r, &d);
        if (n > 0) {
            idle = 0;
            continue;
        }
        if (atomic_load(&ctl->stop) && bench_ring__drain_once(bench_ring_r, &d) == 0) break;
        ctl->empty_polls++;
        /* Empty: spin a little, then sleep like an exporter's poll would,
         * so a consumer sharing a CPU with a producer yields it. */
        if (++idle < 256) {
            _mm_pause();
        } else {
            struct timespec ts = {0, 20000};
            nanosleep(&ts, NULL);
        }
    }
    ctl->consumed = d.ok;
    ctl->invalid = d.invalid;
    ring_close(bench_ring_r);
    return 0;
}

/* ------------------------------------------------------- harness hooks */

static int bench_ring__setup(bench_ctl_t *ctl)
{
    snprintf(ctl->name, sizeof(ctl->name), "/shop-bench-%d", (int)getpid());
    bench_ring__make_parent(0);
    if (ctl->lane_size == 0) {
        int rs = bench_ring__record_size();
        if (rs <= 0) {
            fprintf(stderr, "bench_ring: trace_span_end_into: %d\n", rs);
            return rs < 0 ? rs : -EINVAL;
        }
        /* room for every span of the run plus per-record overhead: no drop
         * even if the consumer stalls (it shares a CPU from 2 producers on) */
        ctl->lane_size = bench_ring__lane_size((ctl->spans + ctl->warmup) * ((uint64_t)rs + 32));
    }
    uint32_t lanes = ctl->producers < RING_LANES_MIN ? RING_LANES_MIN : ctl->producers;
    int rs = bench_ring__record_size();
    uint64_t slot = ((uint64_t)RING_RECORD_HEADER + (uint64_t)(rs > 0 ? rs : 0) + 15u) & ~(uint64_t)15u;
    if (ctl->spans * slot > ctl->lane_size)
        fprintf(stderr, "bench_ring: a %" PRIu64 "-byte lane holds %" PRIu64 " of the %" PRIu64
                        " timed spans: spans drop if the consumer falls behind\n",
                ctl->lane_size, ctl->lane_size / slot, ctl->spans);
    return bench_ring__create(ctl->name, lanes, ctl->lane_size);
}

static int bench_ring__before_go(bench_ctl_t *ctl)
{
    (void)ctl;
    /* Start the timed loop on an empty ring: wait for the warm-up drain. */
    uint64_t t0 = bench_now_ns();
    for (;;) {
        ring_stats_t st;
        ring_stats(bench_ring_r, &st);
        if (st.in_ring == 0) return 0;
        if (bench_now_ns() - t0 > 30ull * 1000000000ull) {
            fprintf(stderr, "bench_ring: warm-up not drained after 30 s (%" PRIu64 " in ring)\n",
                    st.in_ring);
            return -ETIMEDOUT;
        }
        usleep(1000);
    }
}

static void bench_ring__finish(bench_ctl_t *ctl)
{
    ring_stats_t st;
    ring_stats(bench_ring_r, &st);
    uint64_t dropped = 0;
    for (int i = 0; i < RING_DROP__COUNT; i++) dropped += st.dropped[i];
    uint64_t expect = (uint64_t)ctl->producers * (ctl->spans + ctl->warmup);
    ctl->buf_written = st.written;
    ctl->buf_dropped = dropped;
    bool acct = st.written == st.exported + st.dropped[RING_DROP_CORRUPT] + st.in_ring &&
                st.written + st.dropped[RING_DROP_FULL] + st.dropped[RING_DROP_NO_LANE] == expect;
    snprintf(ctl->extra_json, sizeof(ctl->extra_json),
             ",\"ring\":{\"lanes\":%u,\"lane_size\":%" PRIu64 ",\"written\":%" PRIu64
             ",\"exported\":%" PRIu64 ",\"dropped_full\":%" PRIu64 ",\"dropped_no_lane\":%" PRIu64
             ",\"dropped_corrupt\":%" PRIu64 ",\"truncated\":%" PRIu64 ",\"torn\":%" PRIu64
             ",\"in_ring\":%" PRIu64 ",\"spans_attempted\":%" PRIu64 ",\"accounting_ok\":%s}",
             bench_ring_geo.lanes, bench_ring_geo.lane_size, st.written, st.exported,
             st.dropped[RING_DROP_FULL], st.dropped[RING_DROP_NO_LANE],
             st.dropped[RING_DROP_CORRUPT], st.truncated, st.torn, st.in_ring, expect,
             acct ? "true" : "false");
}

static void bench_ring__teardown(bench_ctl_t *ctl)
{
    if (bench_ring_r) ring_close(bench_ring_r);
    bench_ring_r = NULL;
    ring_unlink(ctl->name);
}

static int bench_ring__producer_init(bench_ctl_t *ctl, uint32_t k)
{
    ring_geometry_t g = {.lanes = ctl->producers < RING_LANES_MIN ? RING_LANES_MIN : ctl->producers,
                         .max_record = BENCH_RING_MAX_RECORD, .lane_size = ctl->lane_size};
    int rc = bench_ring__trace_init(ctl->name, &g, k);
    if (rc != 0) return rc;
    bench_ring__make_parent(k);
    bench_ring__prefault(ctl->name);
    return 0;
}

static int bench_ring__producer_run(bench_ctl_t *ctl, uint32_t k, uint32_t *samples, uint64_t n)
{
    static trace_span_t s; /* caller-owned span storage, reused */
    if (samples) {
        BENCH_TIMED_LOOP(samples, n, i, bench_ring__span(&s));
        ctl->prod[k].written += n;
    } else {
        for (uint64_t i = 0; i < n; i++) bench_ring__span(&s);
    }
    return 0;
}

static void bench_ring__producer_fini(bench_ctl_t *ctl, uint32_t k)
{
    (void)ctl;
    (void)k;
    trace_shutdown();
}

static const bench_ops_t bench_ring_ops = {
    .impl = "ours",
    .setup = bench_ring__setup,
    .before_go = bench_ring__before_go,
    .finish = bench_ring__finish,
    .teardown = bench_ring__teardown,
    .producer_init = bench_ring__producer_init,
    .producer_run = bench_ring__producer_run,
    .producer_fini = bench_ring__producer_fini,
    .consumer = bench_ring__consumer,
};

/* ------------------------------------------------------------- --drain */

/* Fills every lane: one producer process per lane, in parallel, `per`
 * spans each.  Returns 0 or -1. */
static int bench_ring__fill(const char *name, uint32_t lanes, uint64_t per)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    for (uint32_t k = 0; k < lanes; k++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("bench_ring: fork");
            return -1;
        }
        if (pid == 0) {
            bench_pin((int)(k % (uint32_t)(ncpu > 0 ? ncpu : 1)));
            if (bench_ring__trace_init(name, &bench_ring_geo, k) != 0) _exit(1);
            bench_ring__make_parent(k);
            static trace_span_t s;
            for (uint64_t i = 0; i < per; i++) bench_ring__span(&s);
            trace_shutdown();
            _exit(0);
        }
    }
    int bad = 0;
    for (uint32_t k = 0; k < lanes; k++) {
        int st;
        if (wait(&st) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) bad++;
    }
    if (bad) fprintf(stderr, "bench_ring: %d fill producer(s) failed\n", bad);
    return bad ? -1 : 0;
}

/*
 * --drain: fill `lanes` lanes of `lane_size` bytes (about 90 %), then drain
 * them on CPU 0, timed, and repeat until `spans` records were drained.  With
 * the product's lane size (TRACE_RING_LANE_SIZE_DEFAULT) the records were
 * written just before, as when the exporter keeps up; with lanes as large as
 * the whole run (--lane-size 268435456) every record comes from DRAM.
 */
static int bench_ring__drain_main(uint64_t spans, uint32_t lanes, uint64_t lane_size)
{
    static bench_ring_drain_t d;
    char name[BENCH_NAME_MAX];
    snprintf(name, sizeof(name), "/shop-bench-drain-%d", (int)getpid());
    bench_ring__make_parent(0);
    int rs = bench_ring__record_size();
    if (rs <= 0) return 1;
    uint64_t slot = ((uint64_t)RING_RECORD_HEADER + (uint64_t)rs + 15u) & ~(uint64_t)15u;
    uint64_t per = lane_size / slot * 9 / 10; /* spans per lane per fill */
    if (per == 0) {
        fprintf(stderr, "bench_ring: lane size %" PRIu64 " holds no span\n", lane_size);
        return 2;
    }
    if (per * lanes > spans) per = (spans + lanes - 1) / lanes;
    if (bench_ring__create(name, lanes, lane_size) != 0) return 1;
    ring_close(bench_ring_r);
    bench_ring_r = NULL;
    int rc = 1;
    uint64_t filled = 0, fill_dropped = 0, ns = 0, cycles = 0;
    bench_pin(0);
    if (bench_ring__attach_consumer(name) != 0) goto out;
    while (d.ok + d.invalid < spans) {
        if (bench_ring__fill(name, lanes, per) != 0) goto out;
        ring_stats_t st;
        ring_stats(bench_ring_r, &st);
        uint64_t t0 = bench_now_ns();
        while (bench_ring__drain_once(bench_ring_r, &d) > 0) {
        }
        ns += bench_now_ns() - t0;
        filled = st.written;
        fill_dropped = st.dropped[RING_DROP_FULL] + st.dropped[RING_DROP_NO_LANE];
        cycles++;
    }
    double secs = (double)ns / 1e9;
    uint64_t total = d.ok + d.invalid;
    printf("{\"impl\":\"ours\",\"mode\":\"drain\",\"lanes\":%u,\"lane_size\":%" PRIu64
           ",\"record_bytes\":%d,\"fill_cycles\":%" PRIu64 ",\"filled\":%" PRIu64
           ",\"dropped_on_fill\":%" PRIu64 ",\"records\":%" PRIu64 ",\"invalid\":%" PRIu64
           ",\"attrs_seen\":%" PRIu64 ",\"seconds\":%.4f,\"records_per_s\":%.0f,"
           "\"ns_per_record\":%.2f,\"peek_batch\":%d}\n",
           lanes, lane_size, rs, cycles, filled, fill_dropped, total, d.invalid, d.attrs, secs,
           (double)total / secs, secs * 1e9 / (double)total, BENCH_RING_BATCH);
    rc = total == filled && d.invalid == 0 && fill_dropped == 0 ? 0 : 1;
    if (rc)
        fprintf(stderr, "bench_ring: drained %" PRIu64 " of %" PRIu64 " written, %" PRIu64
                        " invalid, %" PRIu64 " dropped on fill\n",
                total, filled, d.invalid, fill_dropped);
out:
    if (bench_ring_r) ring_close(bench_ring_r);
    bench_ring_r = NULL;
    ring_unlink(name);
    return rc;
}

/* --------------------------------------------------------- --breakdown */

static int bench_ring__breakdown_main(uint64_t spans, double hz)
{
    enum { START, ATTR0, ATTR5 = ATTR0 + 5, STATUS, END, STEPS };
    static const char *names[STEPS] = {"start", "attr_method", "attr_route", "attr_path",
                                       "attr_scheme", "attr_status_code", "attr_client",
                                       "status", "end"};
    char name[BENCH_NAME_MAX];
    snprintf(name, sizeof(name), "/shop-bench-bd-%d", (int)getpid());
    bench_ring__make_parent(0);
    int rs = bench_ring__record_size();
    if (rs <= 0) return 1;
    if (bench_ring__create(name, 1, bench_ring__lane_size((spans + 1000) * ((uint64_t)rs + 32))) != 0)
        return 1;
    int rc = 1;
    uint32_t *v = calloc((size_t)STEPS * spans, sizeof(uint32_t));
    uint32_t *ov = calloc(spans, sizeof(uint32_t));
    if (!v || !ov) goto out;
    bench_pin(0);
    if (bench_ring__trace_init(name, &bench_ring_geo, 0) != 0) goto out;
    bench_ring__prefault(name);
    static trace_span_t s;
    for (int i = 0; i < 1000; i++) bench_ring__span(&s); /* lane acquired, warm */
    for (uint64_t i = 0; i < spans; i++) {
        uint64_t t[STEPS + 1];
        t[0] = bench_tsc_begin();
        trace_span_start(&s, &bench_ring_scope, BENCH_RING_LIT(BENCH_SPAN_NAME), TRACE_KIND_SERVER,
                         &bench_ring_parent);
        t[1] = bench_tsc_end();
        trace_span_set_str_n(&s, BENCH_RING_LIT(BENCH_K_METHOD), BENCH_RING_LIT(BENCH_V_METHOD));
        t[2] = bench_tsc_end();
        trace_span_set_str_n(&s, BENCH_RING_LIT(BENCH_K_ROUTE), BENCH_RING_LIT(BENCH_V_ROUTE));
        t[3] = bench_tsc_end();
        trace_span_set_str_n(&s, BENCH_RING_LIT(BENCH_K_PATH), BENCH_RING_LIT(BENCH_V_PATH));
        t[4] = bench_tsc_end();
        trace_span_set_str_n(&s, BENCH_RING_LIT(BENCH_K_SCHEME), BENCH_RING_LIT(BENCH_V_SCHEME));
        t[5] = bench_tsc_end();
        trace_span_set_int_n(&s, BENCH_RING_LIT(BENCH_K_STATUS_CODE), BENCH_V_STATUS_CODE);
        t[6] = bench_tsc_end();
        trace_span_set_str_n(&s, BENCH_RING_LIT(BENCH_K_CLIENT), BENCH_RING_LIT(BENCH_V_CLIENT));
        t[7] = bench_tsc_end();
        trace_span_set_status(&s, TRACE_STATUS_OK, NULL, 0);
        t[8] = bench_tsc_end();
        trace_span_end(&s);
        t[9] = bench_tsc_end();
        for (int j = 0; j < STEPS; j++) v[(size_t)j * spans + i] = (uint32_t)(t[j + 1] - t[j]);
    }
    /* the cost of one rdtscp;lfence step between two marks */
    for (uint64_t i = 0; i < spans; i++) {
        uint64_t a = bench_tsc_end();
        ov[i] = (uint32_t)(bench_tsc_end() - a);
    }
    double o = bench_nth(ov, 0, spans, spans / 2);
    printf("{\"impl\":\"ours\",\"mode\":\"breakdown\",\"spans\":%" PRIu64 ",\"record_bytes\":%d,"
           "\"mark_overhead_ns\":%.2f,\"median_ns\":{",
           spans, rs, o * 1e9 / hz);
    double sum = 0;
    for (int j = 0; j < STEPS; j++) {
        double m = bench_nth(v + (size_t)j * spans, 0, spans, spans / 2) - o;
        sum += m;
        printf("%s\"%s\":%.2f", j ? "," : "", names[j], m * 1e9 / hz);
    }
    printf("},\"sum_ns\":%.2f}\n", sum * 1e9 / hz);
    trace_shutdown();
    rc = 0;
out:
    free(v);
    free(ov);
    if (bench_ring_r) ring_close(bench_ring_r);
    bench_ring_r = NULL;
    ring_unlink(name);
    return rc;
}

int main(int argc, char **argv)
{
    /* --drain and --breakdown are this program's own modes; everything
     * else is the harness's (bench_harness.c). */
    bool drain = false, breakdown = false;
    uint64_t spans = 1000000, lane_size = TRACE_RING_LANE_SIZE_DEFAULT;
    uint32_t lanes = 4;
    double hz = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--drain") == 0) drain = true;
        if (strcmp(argv[i], "--breakdown") == 0) breakdown = true;
    }
    if (!drain && !breakdown) return bench_main(argc, argv, &bench_ring_ops);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--drain") == 0 || strcmp(argv[i], "--breakdown") == 0) continue;
        if (i + 1 < argc && strcmp(argv[i], "--spans") == 0) {
            spans = strtoull(argv[++i], NULL, 0);
        } else if (i + 1 < argc && strcmp(argv[i], "--lanes") == 0) {
            lanes = (uint32_t)strtoul(argv[++i], NULL, 0);
        } else if (i + 1 < argc && strcmp(argv[i], "--lane-size") == 0) {
            lane_size = strtoull(argv[++i], NULL, 0);
        } else if (i + 1 < argc && strcmp(argv[i], "--tsc-hz") == 0) {
            hz = strtod(argv[++i], NULL);
        } else {
            fprintf(stderr, "bench_ring: unknown argument '%s' (--spans M, --lanes L, --lane-size B, --tsc-hz HZ)\n",
                    argv[i]);
            return 2;
        }
    }
    if (spans < 1000 || spans > (1u << 26) || lanes < 1 || lanes > 64) {
        fprintf(stderr, "bench_ring: --spans 1000..2^26, --lanes 1..64\n");
        return 2;
    }
    if (drain) return bench_ring__drain_main(spans, lanes, lane_size);
    if (!(hz > 1e6)) hz = bench_tsc_calibrate(200);
    return bench_ring__breakdown_main(spans, hz);
}
