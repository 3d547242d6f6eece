/*
 * perf/bench_grpc_server.c - shop.test.v1.EchoService on core's gRPC server
 * (core/grpc_server.c), the "ours" side of the gRPC benchmark
 * (perf/bench-grpc.sh, ./shop bench grpc).  Its peer is the grpc-go server
 * in perf/peers/echo-go with the same Echo semantics.
 *
 * Usage:
 *   bench_grpc_server [--port P] [--trace on|off]
 *   taskset -c 0 bench_grpc_server --trace on     # prints "listening on 40123"
 *
 *   --trace on   (default) spans go to a private span ring (/shop-gbench-PID,
 *                created here, 4 lanes x 1 MiB, unlinked at exit) with every
 *                call sampled (always_on, whatever OTEL_TRACES_SAMPLER says),
 *                and a forked child drains that ring as the exporter's reader
 *                does (peek, full record decode and item walk, release), so
 *                the ring never fills.  It inherits the CPU affinity, so the
 *                drain is paid from the server's own CPU budget.  It polls
 *                every 200 us when the ring is empty (a lane holds ~3,000
 *                spans; at 100 k calls/s that is 20 spans a poll).
 *   --trace off  no ring, sampler always_off: spans are started and ended as
 *                non-recording (the cost of tracing "compiled in, switched
 *                off").
 *
 * Echo semantics (proto/shop/test/v1/echo.proto), the same as
 * tests/grpc/echo_server.c and perf/peers/echo-go: the payload is echoed
 * back, or response_size bytes instead; a non-zero status_code answers with
 * that status and status_message; echo_metadata copies the custom metadata
 * into the response.  delay_ms is not served (answered at once): the
 * benchmark never sets it.  trace_id/parent_span_id stay empty so the
 * response bytes are the same as the Go peer's.
 *
 * SIGTERM or SIGINT: graceful shutdown (5 s), counters on stderr, exit 0.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core.h"
#include "drain.h"
#include "grpc.h"
#include "shop/test/v1/echo.pb-c.h"

#define BENCH_GRPC_MS 1000000ull
#define BENCH_GRPC_META_MAX 64

static loop_t *bench_grpc_loop;
static grpc_server_t *bench_grpc_srv;

/* ------------------------------------------------------------ ring drain */

static volatile sig_atomic_t bench_grpc_drain_stop;

static void bench_grpc__drain_term(int signo)
{
    (void)signo;
    bench_grpc_drain_stop = 1;
}

/* The child: attach as the ring's consumer and drain until SIGTERM (sent by
 * the parent at exit) or the parent's death (PR_SET_PDEATHSIG). */
static int bench_grpc__drain(const char *name)
{
    char err[256];
    ring_t *r = NULL;
    signal(SIGTERM, bench_grpc__drain_term);
    signal(SIGINT, SIG_IGN);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    int rc = ring_open(name, NULL, false, &r, err, sizeof err);
    if (rc == 0) rc = ring_consumer_open(r, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "bench_grpc_server: drain: ring_open/consumer_open(%s): %s (%d)\n", name, err, rc);
        if (r) ring_close(r);
        return 1;
    }
    perf_drain(r, "bench_grpc_server: drain", &bench_grpc_drain_stop);
    return 0;
}

/* -------------------------------------------------------------- service */

static void bench_grpc__echo(grpc_server_call_t *call, const ProtobufCMessage *msg, void *arg)
{
    (void)arg;
    const Shop__Test__V1__EchoRequest *req = (const Shop__Test__V1__EchoRequest *)msg;
    if (req->status_code != 0) {
        grpc_server_reply(call, (grpc_status_t)req->status_code, req->status_message, NULL);
        return;
    }
    Shop__Test__V1__EchoResponse resp = SHOP__TEST__V1__ECHO_RESPONSE__INIT;
    uint8_t *big = NULL;
    if (req->response_size > 0) {
        big = malloc(req->response_size);
        if (!big) {
            grpc_server_reply(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "echo: out of memory", NULL);
            return;
        }
        memset(big, 'x', req->response_size);
        resp.payload.data = big;
        resp.payload.len = req->response_size;
    } else {
        resp.payload = req->payload;
    }
    Shop__Test__V1__MetadataEntry ents[BENCH_GRPC_META_MAX], *ptrs[BENCH_GRPC_META_MAX];
    if (req->echo_metadata) {
        size_t n = 0;
        const grpc_md_t *md = grpc_server_call_metadata(call, &n);
        if (n > BENCH_GRPC_META_MAX) n = BENCH_GRPC_META_MAX;
        for (size_t i = 0; i < n; i++) {
            shop__test__v1__metadata_entry__init(&ents[i]);
            ents[i].key = (char *)(uintptr_t)md[i].key;
            ents[i].value.data = (uint8_t *)(uintptr_t)md[i].value;
            ents[i].value.len = md[i].value_len;
            ptrs[i] = &ents[i];
        }
        resp.n_metadata = n;
        resp.metadata = ptrs;
    }
    grpc_server_reply(call, GRPC_STATUS_OK, NULL, &resp.base);
    free(big);
}

static void bench_grpc__done(grpc_server_t *srv, void *arg)
{
    (void)srv;
    (void)arg;
    loop_stop(bench_grpc_loop);
}

static void bench_grpc__term(loop_t *loop, int signo, void *arg)
{
    (void)loop;
    (void)signo;
    (void)arg;
    if (grpc_server_shutdown(bench_grpc_srv, 5000 * BENCH_GRPC_MS, bench_grpc__done, NULL) == -EALREADY)
        loop_stop(bench_grpc_loop);
}

static void bench_grpc__usage(void)
{
    fprintf(stderr, "usage: bench_grpc_server [--port P] [--trace on|off]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    unsigned port = 0;
    bool tracing = true;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            port = (unsigned)strtoul(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--trace") == 0 && i + 1 < argc) {
            const char *v = argv[++i];
            if (strcmp(v, "on") == 0) tracing = true;
            else if (strcmp(v, "off") == 0) tracing = false;
            else bench_grpc__usage();
        } else {
            bench_grpc__usage();
        }
    }
    signal(SIGPIPE, SIG_IGN);

    char err[256];
    char ring_name[64];
    snprintf(ring_name, sizeof ring_name, "/shop-gbench-%d", (int)getpid());
    ring_t *ring = NULL;
    pid_t drainer = -1;
    trace_sampler_t sampler = {.kind = tracing ? TRACE_SAMPLER_ALWAYS_ON : TRACE_SAMPLER_ALWAYS_OFF};
    trace_options_t o = {.service_name = "bench-grpc-server", .sampler = &sampler};
    ring_geometry_t geo = {.lanes = 4, .lane_size = 1024u * 1024u, .max_record = TRACE_RING_MAX_RECORD_DEFAULT};
    if (tracing) {
        /* Created here, before the fork, so the drainer can attach at once;
         * trace_init then opens the same object. */
        ring_unlink(ring_name);
        int rc = ring_open(ring_name, &geo, true, &ring, err, sizeof err);
        if (rc != 0) {
            fprintf(stderr, "bench_grpc_server: ring_open(%s, create): %s (%d)\n", ring_name, err, rc);
            return 1;
        }
        fflush(NULL);
        drainer = fork();
        if (drainer < 0) {
            perror("fork(drainer)");
            ring_close(ring);
            ring_unlink(ring_name);
            return 1;
        }
        if (drainer == 0) {
            ring_close(ring);
            _exit(bench_grpc__drain(ring_name));
        }
        o.ring_name = ring_name;
        o.geometry = &geo;
    } else {
        o.no_ring = true;
    }
    if (trace_init(&o, err, sizeof err) != 0) {
        fprintf(stderr, "bench_grpc_server: trace_init: %s\n", err);
        return 1;
    }
    int rc = loop_create(&bench_grpc_loop, NULL);
    if (rc < 0) {
        fprintf(stderr, "bench_grpc_server: loop_create: %s\n", strerror(-rc));
        return 1;
    }
    static const grpc_server_handler_cb handlers[] = {bench_grpc__echo};
    uint16_t bound = 0;
    if ((rc = grpc_server_new(bench_grpc_loop, NULL, &bench_grpc_srv)) < 0 ||
        (rc = grpc_server_add_service(bench_grpc_srv, &shop__test__v1__echo_service__descriptor, handlers, NULL)) <
            0 ||
        (rc = grpc_server_listen(bench_grpc_srv, "127.0.0.1", (uint16_t)port, &bound)) < 0 ||
        (rc = loop_signal(bench_grpc_loop, SIGTERM, bench_grpc__term, NULL)) < 0 ||
        (rc = loop_signal(bench_grpc_loop, SIGINT, bench_grpc__term, NULL)) < 0) {
        fprintf(stderr, "bench_grpc_server: start-up: %s\n", strerror(-rc));
        return 1;
    }
    char desc[512];
    if (trace_describe(desc, sizeof desc) > 0) fprintf(stderr, "bench_grpc_server: tracing: %s\n", desc);
    printf("listening on %u\n", bound);
    fflush(stdout);
    rc = loop_run(bench_grpc_loop);
    grpc_server_stats_t st;
    grpc_server_stats(bench_grpc_srv, &st);
    fprintf(stderr,
            "bench_grpc_server: exit: %llu conns, calls: %llu started, %llu finished, %llu cancelled, %llu bad, "
            "%llu protocol errors\n",
            (unsigned long long)st.conns_accepted, (unsigned long long)st.calls_started,
            (unsigned long long)st.calls_finished, (unsigned long long)st.calls_cancelled,
            (unsigned long long)st.bad_requests, (unsigned long long)st.protocol_errors);
    grpc_server_free(bench_grpc_srv);
    loop_destroy(bench_grpc_loop);
    trace_shutdown();
    if (drainer > 0) {
        kill(drainer, SIGTERM);
        waitpid(drainer, NULL, 0);
    }
    if (ring) {
        ring_close(ring);
        ring_unlink(ring_name);
    }
    return rc == 0 ? 0 : 1;
}
