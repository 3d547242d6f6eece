/*
 * perf/ring_drain.c - a span ring's consumer for benchmarks: drains a ring
 * another process created as the exporter's reader does (peek, full record
 * decode and item walk, release) and sends nothing anywhere, so a benchmark
 * measures span writing at 100% sampling without a full ring (whose spans
 * would be dropped, which is cheaper than writing them) and without an
 * OTLP receiver's CPU.
 *
 * Usage:
 *   ring_drain --name /shop-gwbench-123      # waits up to 10 s for the ring
 *   taskset -c 0 ring_drain --name NAME &    # on the producer's CPU: its cost
 *                                            # is paid from that CPU's budget
 *
 * Polls every 2 ms when the ring is empty.  SIGTERM or SIGINT: prints the
 * spans drained and the ring's counters on stderr and exits 0.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core.h"
#include "drain.h"

static volatile sig_atomic_t ring_drain_stop;

static void ring_drain__term(int signo)
{
    (void)signo;
    ring_drain_stop = 1;
}

int main(int argc, char **argv)
{
    const char *name = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--name") == 0 && i + 1 < argc)
            name = argv[++i];
        else {
            fprintf(stderr, "usage: ring_drain --name RING\n");
            return 2;
        }
    }
    if (name == NULL) {
        fprintf(stderr, "usage: ring_drain --name RING\n");
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = ring_drain__term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    char err[256];
    ring_t *r = NULL;
    int rc = -1;
    for (int tries = 0; tries < 1000 && !ring_drain_stop; tries++) { /* 10 s */
        rc = ring_open(name, NULL, false, &r, err, sizeof err);
        if (rc == 0)
            break;
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    if (rc == 0)
        rc = ring_consumer_open(r, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "ring_drain: ring_open/consumer_open(%s): %s (%d)\n", name, err, rc);
        if (r != NULL)
            ring_close(r);
        return 1;
    }
    perf_drain(r, "ring_drain", &ring_drain_stop);
    return 0;
}
