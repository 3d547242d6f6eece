/*
 * tests/exporter/test_exp_metrics.c - exporter/metrics.c: the Prometheus
 * text passes `promtool check metrics` (Debian package prometheus), and the
 * HTTP responder: GET /metrics in pieces (partial reads), 404 for other
 * paths, 405 for other methods, 400 for junk.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "exporter.h"
#include "tap.h"

static uint16_t port;
static char replies[5][65536];

static void snap(void *arg, ring_stats_t *rs, exp_stats_t *es)
{
    (void)arg;
    memset(rs, 0, sizeof *rs);
    memset(es, 0, sizeof *es);
    rs->written = 10;
    rs->exported = 7;
    rs->dropped[RING_DROP_FULL] = 1;
    rs->in_ring = 2;
    rs->bytes_capacity = 1024;
    rs->bytes_used = 256;
    es->spans_exported = 7;
    es->batch_hist[3] = 1;
    es->batch_sum = 7;
    es->lat_hist[2] = 1;
    es->lat_sum = 0.004;
    es->lat_count = 1;
}

static int dial(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void slurp(int fd, char *out, size_t cap)
{
    size_t n = 0;
    ssize_t r;
    while (n + 1 < cap && (r = read(fd, out + n, cap - 1 - n)) > 0)
        n += (size_t)r;
    out[n] = 0;
    close(fd);
}

static void *client(void *arg)
{
    loop_t *loop = arg;
    /* 0: request in three pieces */
    int fd = dial();
    const char *parts[] = {"GET /met", "rics HTTP/1.1\r\nHost: x\r\n", "\r\n"};
    for (int i = 0; i < 3; i++) {
        if (write(fd, parts[i], strlen(parts[i])) < 0)
            break;
        usleep(20000);
    }
    slurp(fd, replies[0], sizeof replies[0]);
    const char *reqs[] = {NULL, "GET /other HTTP/1.1\r\n\r\n", "POST /metrics HTTP/1.1\r\n\r\n",
                          "garbage\r\n\r\n", "GET /metrics?x=1 HTTP/1.0\r\n\r\n"};
    for (int i = 1; i < 5; i++) {
        fd = dial();
        if (write(fd, reqs[i], strlen(reqs[i])) < 0)
            break;
        slurp(fd, replies[i], sizeof replies[i]);
    }
    loop_stop(loop);
    return NULL;
}

int main(void)
{
    ring_stats_t rs;
    exp_stats_t es;
    snap(NULL, &rs, &es);
    static char text[65536];
    long n = metrics_render(&rs, &es, text, sizeof text);
    tap_check(n > 0, "render: %ld bytes", n);
    tap_check(metrics_render(&rs, &es, text, 100) == -ENOSPC, "small buffer: -ENOSPC");
    n = metrics_render(&rs, &es, text, sizeof text);
    tap_check(strstr(text, "shop_ring_spans_written_total 10\n") && strstr(text, "shop_ring_spans_dropped_total{reason=\"full\"} 1\n") &&
                  strstr(text, "shop_ring_fill_ratio 0.25\n") &&
                  strstr(text, "shop_exporter_batch_size_spans_bucket{le=\"8\"} 1\n") &&
                  strstr(text, "shop_exporter_batch_size_spans_bucket{le=\"+Inf\"} 1\n") &&
                  strstr(text, "shop_exporter_export_duration_seconds_count 1\n"),
              "values: written, dropped by reason, fill ratio, cumulative buckets");
    char path[] = "/tmp/test_exp_metrics_XXXXXX";
    int fd = mkstemp(path);
    tap_check(fd >= 0 && write(fd, text, (size_t)n) == n, "text written to %s", path);
    close(fd);
    const char *promtool = NULL;
    static const char *where[] = {"/usr/bin/promtool", "/usr/local/bin/promtool", "/bin/promtool"};
    for (size_t i = 0; i < 3 && !promtool; i++)
        if (access(where[i], X_OK) == 0)
            promtool = where[i];
    if (!promtool) {
        tap_check(0, "promtool not found: install the Debian package 'prometheus' (./shop deps)");
    } else {
        char cmd[256];
        snprintf(cmd, sizeof cmd, "%s check metrics < %s 2>&1", promtool, path);
        FILE *p = popen(cmd, "r");
        char out[4096] = "";
        size_t got = p ? fread(out, 1, sizeof out - 1, p) : 0;
        out[got] = 0;
        int st = p ? pclose(p) : -1;
        tap_check(st == 0 && got == 0, "promtool check metrics: clean (status %d) %s", st, out);
    }
    unlink(path);

    loop_t *loop;
    loop_create(&loop, NULL);
    metrics_server_t *m;
    tap_check(metrics_server_new(loop, "127.0.0.1", 0, snap, NULL, &m) == 0, "metrics server on an ephemeral port");
    port = metrics_server_port(m);
    pthread_t th;
    pthread_create(&th, NULL, client, loop);
    loop_run(loop);
    pthread_join(th, NULL);
    tap_check(!strncmp(replies[0], "HTTP/1.1 200 OK\r\n", 17) && strstr(replies[0], "shop_ring_spans_written_total 10") &&
                  strstr(replies[0], "text/plain; version=0.0.4"),
              "GET /metrics sent in 3 pieces: 200 with the text");
    char *body = strstr(replies[0], "\r\n\r\n");
    char *cl = strstr(replies[0], "Content-Length: ");
    tap_check(body && cl && (size_t)atol(cl + 16) == strlen(body + 4), "Content-Length matches the body");
    tap_check(!strncmp(replies[1], "HTTP/1.1 404", 12), "other path: 404");
    tap_check(!strncmp(replies[2], "HTTP/1.1 405", 12), "POST /metrics: 405");
    tap_check(!strncmp(replies[3], "HTTP/1.1 400", 12), "junk request line: 400");
    tap_check(!strncmp(replies[4], "HTTP/1.1 200", 12), "query string ignored: 200");
    tap_check(metrics_http_route("GET /metrics HT", 15) == -2, "route: incomplete line -> -2");
    metrics_server_free(m);
    loop_destroy(loop);
    return tap_done();
}
