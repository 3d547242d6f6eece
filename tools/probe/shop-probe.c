/*
 * tools/probe/shop-probe.c - the container health check of the shop-trace
 * images (deploy/Dockerfile HEALTHCHECK, deploy/compose.yaml): one check, exit
 * status 0 when healthy, 1 when not (reason on stderr), 2 on bad usage.
 *
 *   shop-probe grpc 127.0.0.1:9091              grpc.health.v1.Health/Check = SERVING
 *   shop-probe grpc 127.0.0.1:9091 --service shop.v1.UserService
 *   shop-probe http 127.0.0.1:8080 /api/health  a 2xx answer to GET PATH
 *   shop-probe ... --timeout 2000               ms for the whole check (default 2000)
 *
 * The gRPC check is the core gRPC client (core/grpc.h) on a loop of its own,
 * untraced (grpc_call_unary): a probe writes no spans and never attaches to
 * the span ring.  The HTTP check is a blocking HTTP/1.0 GET (one request, the
 * status line is all it reads).  Targets are numeric IPv4 address:port, as
 * every shop-trace address is.  Kubernetes does not need this tool: its gRPC
 * and httpGet probes do the same from the kubelet (deploy/k8s).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "grpc.h"
#include "loop.h"
#include "shop_proto.h"

#define PROBE_NS_PER_MS 1000000ull

static void probe_usage(FILE *f)
{
    fputs("usage: shop-probe grpc IP:PORT [--service NAME] [--timeout MS]\n"
          "       shop-probe http IP:PORT PATH [--timeout MS]\n",
          f);
}

/* "IP:PORT" -> ip (NUL-terminated copy) and port; -1 when malformed. */
static int probe_split(const char *target, char *ip, size_t iplen, uint16_t *port)
{
    const char *c = strrchr(target, ':');
    if (c == NULL || c == target || (size_t)(c - target) >= iplen)
        return -1;
    char *end;
    long p = strtol(c + 1, &end, 10);
    if (*end != '\0' || p < 1 || p > 65535)
        return -1;
    memcpy(ip, target, (size_t)(c - target));
    ip[c - target] = '\0';
    struct in_addr a;
    if (inet_pton(AF_INET, ip, &a) != 1)
        return -1;
    *port = (uint16_t)p;
    return 0;
}

/* ---------------------------------------------------------------- gRPC */

typedef struct probe_grpc {
    loop_t *loop;
    int result; /* 0 SERVING, 1 anything else; -1 = not answered yet */
} probe_grpc_t;

static void probe_on_health(const grpc_result_t *res, void *arg)
{
    probe_grpc_t *p = arg;
    p->result = 1;
    if (res->status != GRPC_STATUS_OK) {
        fprintf(stderr, "shop-probe: Health/Check: %s %s\n", grpc_status_name(res->status), res->message);
    } else {
        Grpc__Health__V1__HealthCheckResponse *h =
            grpc__health__v1__health_check_response__unpack(NULL, res->response_len, res->response);
        if (h == NULL) {
            fprintf(stderr, "shop-probe: Health/Check: response does not decode\n");
        } else {
            if (h->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING)
                p->result = 0;
            else
                fprintf(stderr, "shop-probe: Health/Check: status %d, not SERVING\n", (int)h->status);
            grpc__health__v1__health_check_response__free_unpacked(h, NULL);
        }
    }
    loop_stop(p->loop);
}

static int probe_grpc(const char *ip, uint16_t port, const char *service, uint64_t timeout_ms)
{
    probe_grpc_t p = {.result = -1};
    grpc_channel_t *ch = NULL;
    char err[256] = "";
    int rc = loop_create(&p.loop, NULL);
    if (rc != 0) {
        fprintf(stderr, "shop-probe: loop_create: %s\n", strerror(-rc));
        return 1;
    }
    grpc_channel_opts_t o = {.connect_timeout_ns = timeout_ms * PROBE_NS_PER_MS};
    if (grpc_channel_new(p.loop, ip, port, &o, &ch, err, sizeof err) != 0) {
        fprintf(stderr, "shop-probe: grpc_channel_new(%s:%u): %s\n", ip, (unsigned)port, err);
        loop_destroy(p.loop);
        return 1;
    }
    Grpc__Health__V1__HealthCheckRequest q = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    q.service = (char *)service; /* protobuf-c's field is char *, only read */
    uint8_t buf[512];
    if (grpc__health__v1__health_check_request__get_packed_size(&q) > sizeof buf) {
        fprintf(stderr, "shop-probe: --service name too long\n");
        p.result = 1;
    } else {
        size_t n = grpc__health__v1__health_check_request__pack(&q, buf);
        rc = grpc_call_unary(ch, "/grpc.health.v1.Health/Check", buf, n, false,
                             timeout_ms * PROBE_NS_PER_MS, NULL, 0, probe_on_health, &p);
        if (rc != 0) {
            fprintf(stderr, "shop-probe: grpc_call_unary: %s\n", strerror(-rc));
            p.result = 1;
        } else {
            loop_run(p.loop); /* the call's deadline bounds it: the callback always runs */
        }
    }
    grpc_channel_free(ch);
    loop_destroy(p.loop);
    return p.result == 0 ? 0 : 1;
}

/* ---------------------------------------------------------------- HTTP */

static int probe_http(const char *ip, uint16_t port, const char *path, uint64_t timeout_ms)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("shop-probe: socket");
        return 1;
    }
    /* SO_SNDTIMEO bounds connect() and send(), SO_RCVTIMEO each recv(). */
    struct timeval tv = {.tv_sec = (time_t)(timeout_ms / 1000), .tv_usec = (long)(timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, ip, &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        fprintf(stderr, "shop-probe: connect(%s:%u): %s\n", ip, (unsigned)port, strerror(errno));
        close(fd);
        return 1;
    }
    char req[1024];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s:%u\r\nUser-Agent: shop-probe\r\n\r\n",
                     path, ip, (unsigned)port);
    if (n < 0 || (size_t)n >= sizeof req) {
        fprintf(stderr, "shop-probe: path too long\n");
        close(fd);
        return 2;
    }
    if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        fprintf(stderr, "shop-probe: send: %s\n", strerror(errno));
        close(fd);
        return 1;
    }
    char line[256];
    size_t got = 0;
    while (got < sizeof line - 1 && memchr(line, '\n', got) == NULL) {
        ssize_t r = recv(fd, line + got, sizeof line - 1 - got, 0);
        if (r <= 0) {
            if (got == 0) {
                fprintf(stderr, "shop-probe: no answer from %s:%u: %s\n", ip, (unsigned)port,
                        r == 0 ? "connection closed" : strerror(errno));
                close(fd);
                return 1;
            }
            break;
        }
        got += (size_t)r;
    }
    close(fd);
    line[got] = '\0';
    line[strcspn(line, "\r\n")] = '\0';
    int code = 0;
    if (sscanf(line, "HTTP/%*d.%*d %d", &code) != 1) {
        fprintf(stderr, "shop-probe: not an HTTP status line: %.80s\n", line);
        return 1;
    }
    if (code < 200 || code > 299) {
        fprintf(stderr, "shop-probe: GET %s: %s\n", path, line);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
        probe_usage(stdout);
        return 0;
    }
    if (argc < 3) {
        probe_usage(stderr);
        return 2;
    }
    const char *kind = argv[1], *target = argv[2], *path = NULL, *service = "";
    uint64_t timeout_ms = 2000;
    int i = 3;
    if (!strcmp(kind, "http")) {
        if (argc < 4 || argv[3][0] != '/') {
            fprintf(stderr, "shop-probe: http needs a PATH starting with '/'\n");
            return 2;
        }
        path = argv[3];
        i = 4;
    } else if (strcmp(kind, "grpc") != 0) {
        fprintf(stderr, "shop-probe: unknown check '%s' (grpc, http)\n", kind);
        return 2;
    }
    for (; i < argc; i++) {
        if (!strcmp(argv[i], "--timeout") && i + 1 < argc) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end != '\0' || v < 1 || v > 600000) {
                fprintf(stderr, "shop-probe: --timeout %s: must be 1 to 600000 ms\n", argv[i]);
                return 2;
            }
            timeout_ms = (uint64_t)v;
        } else if (!strcmp(argv[i], "--service") && i + 1 < argc && path == NULL) {
            service = argv[++i];
        } else {
            fprintf(stderr, "shop-probe: unexpected argument '%s'\n", argv[i]);
            probe_usage(stderr);
            return 2;
        }
    }
    char ip[64];
    uint16_t port;
    if (probe_split(target, ip, sizeof ip, &port) != 0) {
        fprintf(stderr, "shop-probe: target '%s': want numeric IPv4 address:port\n", target);
        return 2;
    }
    return path ? probe_http(ip, port, path, timeout_ms) : probe_grpc(ip, port, service, timeout_ms);
}
