/*
 * exporter/main.c - shop-exporter: drains the span ring, sends OTLP/gRPC
 * batches, serves /metrics.
 *
 * Usage:
 *   shop-exporter                      # ./shop.conf or $SHOP_CONFIG, env overrides
 *   shop-exporter --config shop.conf
 *   shop-exporter --check-config       # validate config + OTEL_* variables, exit 0/2
 *   OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 OTEL_BSP_SCHEDULE_DELAY=200 shop-exporter
 *
 * Exit status: 0 after SIGTERM/SIGINT (queued spans exported within the
 * export timeout, the rest released as dropped SHUTDOWN), 2 for a bad
 * configuration, 1 for any other start-up failure.
 */
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exporter.h"

typedef struct {
    loop_t *loop;
    const config_t *cfg;
    exp_settings_t s;
    ring_t *ring;
    exp_grpc_t *grpc;
    exp_batcher_t *batcher;
    metrics_server_t *metrics;
    loop_timer_t attach;
    bool stopping;
    int status;
} exp_main_t;

static void exp__log_line(void *u, const char *s)
{
    (void)u;
    if (!strncmp(s, "exporter.", 9) || !strncmp(s, "ring.", 5))
        fprintf(stderr, "shop-exporter: config: %s\n", s);
}

static void exp__snapshot(void *arg, ring_stats_t *rs, exp_stats_t *es)
{
    exp_main_t *m = arg;
    memset(rs, 0, sizeof *rs);
    memset(es, 0, sizeof *es);
    if (m->ring)
        ring_stats(m->ring, rs);
    if (m->batcher)
        exp_batcher_stats(m->batcher, es);
}

static void exp__shutdown_done(void *arg)
{
    exp_main_t *m = arg;
    loop_stop(m->loop);
}

static void exp__on_signal(loop_t *loop, int signo, void *arg)
{
    exp_main_t *m = arg;
    if (m->stopping)
        return;
    m->stopping = true;
    fprintf(stderr, "shop-exporter: %s: stopping, exporting what is queued\n", strsignal(signo));
    loop_timer_stop(loop, &m->attach);
    if (m->batcher)
        exp_batcher_shutdown(m->batcher, exp__shutdown_done, m);
    else
        loop_stop(loop);
}

/* Attaches to the ring (or creates it, ring_attach = create); with `wait`
 * retried every 200 ms from a timer, so the loop (and /metrics, SIGTERM)
 * runs meanwhile. */
static void exp__try_attach(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)t;
    exp_main_t *m = arg;
    char err[512];
    ring_geometry_t g = {
        .lanes = (uint32_t)config_int(m->cfg, CONFIG_RING_LANES),
        .max_record = (uint32_t)config_int(m->cfg, CONFIG_RING_MAX_RECORD),
        .lane_size = (uint64_t)config_int(m->cfg, CONFIG_RING_LANE_SIZE),
    };
    const char *name = config_str(m->cfg, CONFIG_RING_NAME);
    int rc = ring_open(name, m->s.ring_create ? &g : NULL, m->s.ring_create, &m->ring, err, sizeof err);
    if (rc == -ENOENT && !m->s.ring_create) {
        static bool said;
        if (!said)
            fprintf(stderr, "shop-exporter: waiting for ring %s to be created by a producer\n", name);
        said = true;
        loop_timer_start(loop, &m->attach, 200000000ull, 0, exp__try_attach, m);
        return;
    }
    if (rc < 0)
        goto fail;
    if ((rc = ring_consumer_open(m->ring, err, sizeof err)) < 0)
        goto fail;
    retry_policy_t rp;
    retry_policy_default(&rp);
    if ((rc = exp_batcher_new(loop, m->ring, &m->s, &rp, exp_grpc_send, m->grpc, &m->batcher)) < 0) {
        snprintf(err, sizeof err, "exp_batcher_new: %s", strerror(-rc));
        goto fail;
    }
    const ring_geometry_t *rg = ring_geometry(m->ring);
    fprintf(stderr, "shop-exporter: attached to ring %s (%u lanes x %llu bytes) as its consumer\n", name,
            rg->lanes, (unsigned long long)rg->lane_size);
    return;
fail:
    fprintf(stderr, "shop-exporter: ring %s: %s\n", name, err[0] ? err : strerror(-rc));
    m->status = 1;
    loop_stop(loop);
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    bool check = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            path = argv[++i];
        else if (!strcmp(argv[i], "--check-config"))
            check = true;
        else {
            fprintf(stderr, "usage: %s [--config FILE] [--check-config]\n", argv[0]);
            return strcmp(argv[i], "--help") ? 2 : 0;
        }
    }
    /* Every Export allocates and frees request-sized buffers (the gRPC
     * call's copy of the message, ~136 KiB at 512 spans).  glibc's defaults
     * give those back to the kernel after each free: a brk (or an mmap and
     * munmap) per Export, about one system call per batch beside the one
     * io_uring_enter (strace -c -f, perf/RESULTS.md "Exporter").  Keep up to
     * 4 MiB of freed heap and serve blocks up to 1 MiB from it instead; the
     * memory stays within the 64 MiB target.  Best effort: mallopt is glibc's. */
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    mallopt(M_TRIM_THRESHOLD, 4 << 20);
    static exp_main_t m; /* static: settings outlive the gRPC channel's header pointers */
    char err[512] = "";
    config_t *cfg = NULL;
    int rc = config_load(path, &cfg, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "shop-exporter: %s\n", err);
        return rc == -EINVAL ? 2 : 1;
    }
    m.cfg = cfg;
    if (exp_settings_load(cfg, &m.s, err, sizeof err) < 0) {
        fprintf(stderr, "shop-exporter: %s\n", err);
        config_free(cfg);
        return 2;
    }
    if (check) {
        printf("shop-exporter: configuration ok (%s)\n", config_path(cfg) ? config_path(cfg) : "defaults");
        config_free(cfg);
        return 0;
    }
    config_dump(cfg, exp__log_line, NULL);
    char line[1024];
    exp_settings_describe(&m.s, line, sizeof line);
    fprintf(stderr, "shop-exporter: effective: %s\n", line);
    signal(SIGPIPE, SIG_IGN);

    m.status = 0;
    if ((rc = loop_create(&m.loop, NULL)) < 0) {
        fprintf(stderr, "shop-exporter: loop_create: %s\n", strerror(-rc));
        config_free(cfg);
        return 1;
    }
    if ((rc = loop_signal(m.loop, SIGTERM, exp__on_signal, &m)) < 0 ||
        (rc = loop_signal(m.loop, SIGINT, exp__on_signal, &m)) < 0) {
        fprintf(stderr, "shop-exporter: loop_signal: %s\n", strerror(-rc));
        goto out;
    }
    if ((rc = exp_grpc_new(m.loop, &m.s, &m.grpc, err, sizeof err)) < 0) {
        fprintf(stderr, "shop-exporter: grpc_channel_new(%s:%u): %s\n", m.s.host, m.s.port,
                err[0] ? err : strerror(-rc));
        goto out;
    }
    if ((rc = metrics_server_new(m.loop, m.s.metrics_addr, m.s.metrics_port, exp__snapshot, &m, &m.metrics)) < 0) {
        fprintf(stderr, "shop-exporter: listen(%s:%u) for /metrics: %s\n", m.s.metrics_addr, m.s.metrics_port,
                strerror(-rc));
        goto out;
    }
    fprintf(stderr, "shop-exporter: /metrics on %s:%u\n", m.s.metrics_addr, metrics_server_port(m.metrics));
    loop_timer_init(&m.attach);
    loop_timer_start(m.loop, &m.attach, 0, 0, exp__try_attach, &m);
    rc = loop_run(m.loop);
    if (rc < 0 && m.status == 0) {
        fprintf(stderr, "shop-exporter: loop_run: %s\n", strerror(-rc));
        m.status = 1;
    }
    if (m.batcher) {
        exp_stats_t es;
        exp_batcher_stats(m.batcher, &es);
        fprintf(stderr,
                "shop-exporter: exit: exported %llu spans in %llu batches, %llu exports (%llu failed, %llu retries), "
                "dropped rejected %llu expired %llu shutdown %llu corrupt %llu\n",
                (unsigned long long)es.spans_exported, (unsigned long long)es.batches,
                (unsigned long long)es.exports, (unsigned long long)es.export_failures,
                (unsigned long long)es.retries, (unsigned long long)es.spans_dropped[RING_DROP_REJECTED],
                (unsigned long long)es.spans_dropped[RING_DROP_EXPIRED],
                (unsigned long long)es.spans_dropped[RING_DROP_SHUTDOWN],
                (unsigned long long)es.spans_dropped[RING_DROP_CORRUPT]);
    }
    rc = m.status;
    goto done;
out:
    rc = 1;
done:
    metrics_server_free(m.metrics);
    exp_batcher_free(m.batcher);
    exp_grpc_free(m.grpc);
    loop_destroy(m.loop);
    if (m.ring)
        ring_close(m.ring);
    config_free(cfg);
    return rc;
}
