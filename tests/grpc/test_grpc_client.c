/*
 * tests/grpc/test_grpc_client.c - the gRPC client (core/grpc.c, core/h2.c)
 * against a real gRPC server: the grpcio OTLP capture server of
 * tests/py/otlp_capture.py, driven through its --control file so one server
 * process answers every case as scripted.
 *
 * Usage: test_grpc_client REPO_ROOT   (meson passes project_source_root();
 * the venv comes from tests/py/setup.sh, which ./shop test runs first)
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "grpc.h"
#include "otlp_proto.h"
#include "tap.h"
#include "grpc_test.h"

#define EXPORT_PATH "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
#define MS 1000000ull

static const char *g_root;
static char g_dir[64], g_out[128], g_ctl[128], g_log[128];
static pid_t g_srv = -1;
static unsigned g_script_gen;
static loop_t *g_loop;
static int g_port;

/* ------------------------------------------------------------- the server */

/* Runs argv until it prints "listening on PORT" (tests/grpc/grpc_test.h). */
static int spawn_listener(char *const argv[], pid_t *pid_out)
{
    return spawn_listener_log(argv, g_log, pid_out);
}

static int server_start(uint16_t port)
{
    char py[1024], script[1024], listen[64];
    snprintf(py, sizeof py, "%s/var/venv/bin/python", g_root);
    snprintf(script, sizeof script, "%s/tests/py/otlp_capture.py", g_root);
    snprintf(listen, sizeof listen, "127.0.0.1:%u", port);
    int fds[2];
    if (pipe(fds) < 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1);
        int logfd = open(g_log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (logfd >= 0)
            dup2(logfd, 2);
        close(fds[0]);
        execl(py, py, script, "--listen", listen, "--out", g_out, "--control", g_ctl, "--script", "OK",
              "--workers", "128", (char *)NULL);
        perror("execl(otlp_capture.py)");
        _exit(127);
    }
    close(fds[1]);
    g_srv = pid;
    FILE *f = fdopen(fds[0], "r");
    char line[256];
    int got = -1;
    while (f && fgets(line, sizeof line, f)) {
        unsigned p;
        if (sscanf(line, "listening on %u", &p) == 1) {
            got = (int)p;
            break;
        }
    }
    if (f)
        fclose(f); /* the server's later prints go to a closed pipe: it prints none */
    return got;
}

static void server_kill(void)
{
    if (g_srv > 0) {
        kill(g_srv, SIGKILL);
        waitpid(g_srv, NULL, 0);
        g_srv = -1;
    }
}

/* Replaces the server's script; trailing empty steps make each write
 * differ, since the server reloads only on a content change. */
static void set_script(const char *s)
{
    char tmp[160];
    snprintf(tmp, sizeof tmp, "%s.tmp", g_ctl);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return;
    fprintf(f, "%s", s);
    g_script_gen++;
    for (unsigned i = 0; i < g_script_gen; i++)
        fputc(',', f);
    fputc('\n', f);
    fclose(f);
    rename(tmp, g_ctl);
}

static bool capture_contains(const char *needle)
{
    FILE *f = fopen(g_out, "r");
    if (!f)
        return false;
    static char buf[1 << 16];
    bool found = false;
    size_t nl = strlen(needle), keep = 0;
    for (;;) {
        size_t n = fread(buf + keep, 1, sizeof buf - 1 - keep, f);
        if (n == 0)
            break;
        buf[keep + n] = 0;
        if (strstr(buf, needle)) {
            found = true;
            break;
        }
        size_t tot = keep + n;
        keep = tot < nl ? tot : nl;
        memmove(buf, buf + tot - keep, keep);
    }
    fclose(f);
    return found;
}

/* ---------------------------------------------------------------- calling */

typedef struct {
    bool done;
    int status;
    char message[256];
    uint8_t details[512];
    size_t details_len;
    size_t response_len;
    uint64_t t_done;
} result_t;

static int g_pending;

static void on_result(const grpc_result_t *r, void *arg)
{
    result_t *o = arg;
    o->done = true;
    o->status = r->status;
    snprintf(o->message, sizeof o->message, "%s", r->message);
    o->details_len = r->details_len < sizeof o->details ? r->details_len : 0;
    if (o->details_len)
        memcpy(o->details, r->details, o->details_len);
    o->response_len = r->response_len;
    o->t_done = loop_now_ns();
    if (--g_pending == 0)
        loop_stop(g_loop);
}

static int call(grpc_channel_t *ch, const uint8_t *msg, size_t len, bool gzip, uint64_t timeout_ns, result_t *out)
{
    memset(out, 0, sizeof *out);
    out->status = -1;
    int rc = grpc_call_unary(ch, EXPORT_PATH, msg, len, gzip, timeout_ns, NULL, 0, on_result, out);
    if (rc < 0)
        return rc;
    g_pending = 1;
    loop_run(g_loop);
    return 0;
}

/* call() through grpc_call_unary_borrowed(): msg must stay valid until the
 * callback, which call_borrowed() waits for. */
static int call_borrowed(grpc_channel_t *ch, const uint8_t *msg, size_t len, bool gzip, uint64_t timeout_ns,
                         result_t *out)
{
    memset(out, 0, sizeof *out);
    out->status = -1;
    int rc = grpc_call_unary_borrowed(ch, EXPORT_PATH, msg, len, gzip, timeout_ns, NULL, 0, on_result, out);
    if (rc < 0)
        return rc;
    g_pending = 1;
    loop_run(g_loop);
    return 0;
}

/* ----------------------------------------------------------- OTLP request */

/* Encodes an ExportTraceServiceRequest with one span (span id from seed)
 * and, if pad > 0, a string attribute of pad bytes. */
/* make_request's pad: 'x' repeated (a string), or, when set, pseudo-random
 * bytes (bytes_value) that do not compress. */
static bool g_pad_random;

static uint8_t *make_request(uint8_t seed, size_t pad, size_t *len, char *span_b64, size_t b64cap)
{
    uint8_t tid[16], sid[8];
    for (int i = 0; i < 16; i++)
        tid[i] = (uint8_t)(seed + i + 1);
    for (int i = 0; i < 8; i++)
        sid[i] = (uint8_t)(seed * 7 + i * 13 + 3);
    Opentelemetry__Proto__Trace__V1__Span span = OPENTELEMETRY__PROTO__TRACE__V1__SPAN__INIT;
    span.trace_id = (ProtobufCBinaryData){16, tid};
    span.span_id = (ProtobufCBinaryData){8, sid};
    static char name[] = "grpc-test", padkey[] = "pad";
    span.name = name;
    span.kind = OPENTELEMETRY__PROTO__TRACE__V1__SPAN__SPAN_KIND__SPAN_KIND_CLIENT;
    span.start_time_unix_nano = 1000;
    span.end_time_unix_nano = 2000;
    Opentelemetry__Proto__Common__V1__AnyValue av = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__INIT;
    Opentelemetry__Proto__Common__V1__KeyValue kv = OPENTELEMETRY__PROTO__COMMON__V1__KEY_VALUE__INIT;
    Opentelemetry__Proto__Common__V1__KeyValue *kvs[1] = {&kv};
    char *padstr = NULL;
    if (pad) {
        padstr = malloc(pad + 1);
        memset(padstr, 'x', pad);
        padstr[pad] = 0;
        if (g_pad_random) {
            uint64_t x = 0x9e3779b97f4a7c15ull ^ seed;
            for (size_t i = 0; i < pad; i++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                padstr[i] = (char)(x >> 32);
            }
            av.value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_BYTES_VALUE;
            av.bytes_value = (ProtobufCBinaryData){pad, (uint8_t *)padstr};
        } else {
            av.value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_STRING_VALUE;
            av.string_value = padstr;
        }
        kv.key = padkey;
        kv.value = &av;
        span.n_attributes = 1;
        span.attributes = kvs;
    }
    Opentelemetry__Proto__Trace__V1__Span *spans[1] = {&span};
    Opentelemetry__Proto__Trace__V1__ScopeSpans ss = OPENTELEMETRY__PROTO__TRACE__V1__SCOPE_SPANS__INIT;
    ss.n_spans = 1;
    ss.spans = spans;
    Opentelemetry__Proto__Trace__V1__ScopeSpans *sss[1] = {&ss};
    Opentelemetry__Proto__Trace__V1__ResourceSpans rs = OPENTELEMETRY__PROTO__TRACE__V1__RESOURCE_SPANS__INIT;
    rs.n_scope_spans = 1;
    rs.scope_spans = sss;
    Opentelemetry__Proto__Trace__V1__ResourceSpans *rss[1] = {&rs};
    Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceRequest req =
        OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_SERVICE_REQUEST__INIT;
    req.n_resource_spans = 1;
    req.resource_spans = rss;
    *len = opentelemetry__proto__collector__trace__v1__export_trace_service_request__get_packed_size(&req);
    uint8_t *buf = malloc(*len);
    opentelemetry__proto__collector__trace__v1__export_trace_service_request__pack(&req, buf);
    free(padstr);
    /* The capture records bytes as padded base64; ours is unpadded, and
     * 8 bytes -> 11 chars + "=", so the unpadded form is a prefix. */
    grpc_base64_encode(sid, 8, span_b64, b64cap);
    return buf;
}

/* ------------------------------------------------------------ pure checks */

static void test_helpers(void)
{
    char b[16];
    grpc_timeout_format(1000000000ull, b, sizeof b);
    tap_check(strcmp(b, "1S") == 0, "grpc-timeout 1 s -> %s (want 1S)", b);
    grpc_timeout_format(300 * MS, b, sizeof b);
    tap_check(strcmp(b, "300m") == 0, "grpc-timeout 300 ms -> %s (want 300m)", b);
    grpc_timeout_format(7200000000000ull, b, sizeof b);
    tap_check(strcmp(b, "2H") == 0, "grpc-timeout 2 h -> %s (want 2H)", b);
    grpc_timeout_format(123456789012ull, b, sizeof b);
    uint64_t ns = 0;
    tap_check(grpc_timeout_parse(b, strlen(b), &ns) == 0 && ns >= 123456789012ull && ns - 123456789012ull < 1000000,
              "grpc-timeout inexact 123456789012 ns -> %s rounds up by < 1 ms", b);
    char m[64];
    long n = grpc_percent_decode("a%20b%zz%E2%9C%93", 17, m, sizeof m);
    tap_check(n == 9 && memcmp(m, "a b%zz\xe2\x9c\x93", 9) == 0, "percent-decoding keeps malformed escapes");
    uint8_t raw[5] = {0, 1, 2, 0xfe, 0xff}, back[8];
    char enc[16];
    grpc_base64_encode(raw, 5, enc, sizeof enc);
    tap_check(grpc_base64_decode(enc, strlen(enc), back, sizeof back) == 5 && memcmp(raw, back, 5) == 0 &&
                  grpc_base64_decode("AAEC/v8=", 8, back, sizeof back) == 5,
              "base64 round trip, padded and unpadded (%s)", enc);
    tap_check(grpc_status_from_http(503) == GRPC_STATUS_UNAVAILABLE &&
                  grpc_status_from_http(404) == GRPC_STATUS_UNIMPLEMENTED &&
                  grpc_status_from_http(500) == GRPC_STATUS_UNKNOWN,
              "HTTP status mapping 503/404/500");
}

/* ------------------------------------------------------------------ cases */

/* TLS: certificates made with the openssl CLI in the temp dir, servers
 * from tests/grpc/tls_server.py (grpcio with ssl_server_credentials). */
static void test_tls(const uint8_t *req, size_t len)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "cd '%s' && exec >>server.log 2>&1 && "
             "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca && "
             "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > san.ext && "
             "openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj /CN=localhost && "
             "openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile san.ext && "
             "openssl req -newkey rsa:2048 -nodes -keyout cli.key -out cli.csr -subj /CN=client && "
             "openssl x509 -req -in cli.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cli.pem -days 2",
             g_dir);
    if (!tap_check(system(cmd) == 0, "test certificates made with openssl"))
        return;
    char py[1024], srv[1024], cert[160], key[160], ca[160], ccert[160], ckey[160];
    snprintf(py, sizeof py, "%s/var/venv/bin/python", g_root);
    snprintf(srv, sizeof srv, "%s/tests/grpc/tls_server.py", g_root);
    snprintf(cert, sizeof cert, "%s/srv.pem", g_dir);
    snprintf(key, sizeof key, "%s/srv.key", g_dir);
    snprintf(ca, sizeof ca, "%s/ca.pem", g_dir);
    snprintf(ccert, sizeof ccert, "%s/cli.pem", g_dir);
    snprintf(ckey, sizeof ckey, "%s/cli.key", g_dir);
    pid_t p1 = -1, p2 = -1;
    char *a1[] = {py, srv, (char *)"--cert", cert, (char *)"--key", key, NULL};
    char *a2[] = {py, srv, (char *)"--cert", cert, (char *)"--key", key, (char *)"--client-ca", ca, NULL};
    int port1 = spawn_listener(a1, &p1), port2 = spawn_listener(a2, &p2);
    if (tap_check(port1 > 0 && port2 > 0, "TLS servers listening on %d and %d (mTLS)", port1, port2)) {
        struct {
            const char *what;
            uint16_t port;
            grpc_channel_opts_t o;
            int want;
            const char *msg;
        } cases[] = {
            {"TLS, CA file, IP SAN", (uint16_t)port1, {.tls = true, .tls_ca_file = ca}, GRPC_STATUS_OK, NULL},
            {"TLS, authority localhost (SNI + DNS SAN)", (uint16_t)port1,
             {.tls = true, .tls_ca_file = ca, .authority = "localhost:4317"}, GRPC_STATUS_OK, NULL},
            {"TLS, system store rejects the test CA", (uint16_t)port1, {.tls = true}, GRPC_STATUS_UNAVAILABLE,
             "certificate verify failed"},
            {"TLS, wrong name", (uint16_t)port1, {.tls = true, .tls_ca_file = ca, .authority = "other.example:1"},
             GRPC_STATUS_UNAVAILABLE, "certificate verify failed"},
            {"TLS, insecure_skip_verify", (uint16_t)port1, {.tls = true, .tls_insecure_skip_verify = true},
             GRPC_STATUS_OK, NULL},
            {"mTLS with a client certificate", (uint16_t)port2,
             {.tls = true, .tls_ca_file = ca, .tls_cert_file = ccert, .tls_key_file = ckey}, GRPC_STATUS_OK, NULL},
            {"mTLS server, no client certificate", (uint16_t)port2, {.tls = true, .tls_ca_file = ca},
             GRPC_STATUS_UNAVAILABLE, NULL},
            {"TLS client to a plaintext server", (uint16_t)g_port, {.tls = true, .tls_insecure_skip_verify = true},
             GRPC_STATUS_UNAVAILABLE, NULL},
        };
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            grpc_channel_t *ch;
            char err[256];
            result_t r = {.status = -1};
            int rc = grpc_channel_new(g_loop, "127.0.0.1", cases[i].port, &cases[i].o, &ch, err, sizeof err);
            if (rc == 0) {
                call(ch, req, len, false, 5000 * MS, &r);
                grpc_channel_free(ch);
            }
            tap_check(rc == 0 && r.status == cases[i].want && (!cases[i].msg || strstr(r.message, cases[i].msg)),
                      "%s -> %s '%s' %s", cases[i].what, grpc_status_name(r.status), r.message, err);
        }
        grpc_channel_opts_t bad = {.tls = true, .tls_ca_file = "/nonexistent/ca.pem"};
        grpc_channel_t *ch;
        char err[256];
        int rc = grpc_channel_new(g_loop, "127.0.0.1", (uint16_t)port1, &bad, &ch, err, sizeof err);
        tap_check(rc == -ENOENT && strstr(err, "tls_ca_file"), "missing CA file refused: %d '%s'", rc, err);
    }
    if (p1 > 0)
        kill(p1, SIGKILL), waitpid(p1, NULL, 0);
    if (p2 > 0)
        kill(p2, SIGKILL), waitpid(p2, NULL, 0);
}

static uint16_t free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    bind(fd, (struct sockaddr *)&sa, sizeof sa);
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    close(fd);
    return ntohs(sa.sin_port);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (argc < 2) {
        fprintf(stderr, "usage: %s REPO_ROOT\n", argv[0]);
        return 2;
    }
    g_root = argv[1];
    char py[1024];
    snprintf(py, sizeof py, "%s/var/venv/bin/python", g_root);
    if (access(py, X_OK) != 0) {
        printf("Bail out! %s missing: run tests/py/setup.sh (./shop test does) to create the venv\n", py);
        return 1;
    }
    test_helpers();

    snprintf(g_dir, sizeof g_dir, "/tmp/shop-grpc-XXXXXX");
    if (!mkdtemp(g_dir)) {
        printf("Bail out! mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    snprintf(g_out, sizeof g_out, "%s/capture.jsonl", g_dir);
    snprintf(g_ctl, sizeof g_ctl, "%s/control", g_dir);
    snprintf(g_log, sizeof g_log, "%s/server.log", g_dir);
    set_script("OK");
    int port = server_start(0);
    if (port <= 0) {
        printf("Bail out! otlp_capture.py did not start (log %s)\n", g_log);
        return 1;
    }
    tap_diag("capture server on port %d, files in %s", port, g_dir);
    g_port = port;
    if (loop_create(&g_loop, NULL) < 0) {
        printf("Bail out! loop_create\n");
        return 1;
    }
    char err[256] = "";
    grpc_channel_t *ch;
    int rc = grpc_channel_new(g_loop, "127.0.0.1", (uint16_t)port, NULL, &ch, err, sizeof err);
    tap_check(rc == 0, "grpc_channel_new plaintext: %d %s", rc, err);
    result_t r;
    char b64[32];
    size_t len;
    uint8_t *req;

    /* 1. plain Export */
    req = make_request(1, 0, &len, b64, sizeof b64);
    call(ch, req, len, false, 5000 * MS, &r);
    tap_check(r.status == GRPC_STATUS_OK, "Export OK: %s %s", grpc_status_name(r.status), r.message);
    tap_check(capture_contains(b64), "capture shows span id %s", b64);
    free(req);

    /* 2. gzip */
    req = make_request(2, 2000, &len, b64, sizeof b64);
    call(ch, req, len, true, 5000 * MS, &r);
    tap_check(r.status == GRPC_STATUS_OK, "gzip Export OK: %s %s", grpc_status_name(r.status), r.message);
    tap_check(capture_contains(b64), "gzip request recorded with span id %s", b64);
    free(req);
    /* The channel's deflate state is reset, not rebuilt, per message: a
     * second, larger one must decode on its own at the receiver. */
    req = make_request(7, 60000, &len, b64, sizeof b64);
    call(ch, req, len, true, 5000 * MS, &r);
    tap_check(r.status == GRPC_STATUS_OK && capture_contains(b64),
              "second gzip Export on the channel (%zu bytes) OK and recorded with span id %s: %s", len, b64,
              grpc_status_name(r.status));
    free(req);
    /* From 64 KiB on the message is compressed at igzip level 1 (a Huffman
     * table of its own), below at level 0; random bytes do not compress and
     * go out as stored blocks. Each must decode at the receiver. */
    grpc_channel_stats_t gz0, gz1;
    req = make_request(8, 300000, &len, b64, sizeof b64);
    grpc_channel_stats(ch, &gz0);
    call(ch, req, len, true, 5000 * MS, &r);
    grpc_channel_stats(ch, &gz1);
    tap_check(r.status == GRPC_STATUS_OK && capture_contains(b64),
              "gzip Export of %zu bytes (level 1) OK and recorded with span id %s: %s", len, b64,
              grpc_status_name(r.status));
    tap_check(gz1.bytes_sent - gz0.bytes_sent < len / 20, "... and it went out compressed: %llu bytes sent",
              (unsigned long long)(gz1.bytes_sent - gz0.bytes_sent));
    free(req);
    g_pad_random = true;
    for (size_t pad = 1000; pad <= 200000; pad *= 200) {
        req = make_request((uint8_t)(9 + pad / 1000), pad, &len, b64, sizeof b64);
        grpc_channel_stats(ch, &gz0);
        call(ch, req, len, true, 5000 * MS, &r);
        grpc_channel_stats(ch, &gz1);
        unsigned long long sent = gz1.bytes_sent - gz0.bytes_sent;
        tap_check(r.status == GRPC_STATUS_OK && capture_contains(b64),
                  "gzip Export of %zu incompressible bytes OK and recorded with span id %s: %s", len, b64,
                  grpc_status_name(r.status));
        /* stored blocks: the message, 5 bytes a block, gzip's 18, HTTP/2's frames */
        tap_check(sent >= len && sent < len + len / 100 + 600, "... sent as stored blocks: %llu bytes for %zu",
                  sent, len);
        free(req);
    }
    g_pad_random = false;

    req = make_request(3, 0, &len, b64, sizeof b64);
    /* 3. errors with codes and messages */
    set_script("UNAVAILABLE");
    call(ch, req, len, false, 5000 * MS, &r);
    tap_check(r.status == GRPC_STATUS_UNAVAILABLE && strstr(r.message, "scripted UNAVAILABLE"),
              "UNAVAILABLE reported: %s '%s'", grpc_status_name(r.status), r.message);
    set_script("INVALID_ARGUMENT");
    call(ch, req, len, false, 5000 * MS, &r);
    tap_check(r.status == GRPC_STATUS_INVALID_ARGUMENT && strstr(r.message, "scripted INVALID_ARGUMENT"),
              "INVALID_ARGUMENT reported: %s '%s'", grpc_status_name(r.status), r.message);

    /* 4. RESOURCE_EXHAUSTED with RetryInfo */
    set_script("RESOURCE_EXHAUSTED:2.5");
    call(ch, req, len, false, 5000 * MS, &r);
    bool retry_ok = false;
    Google__Rpc__Status *st = r.details_len ? google__rpc__status__unpack(NULL, r.details_len, r.details) : NULL;
    if (st && st->n_details == 1 && strstr(st->details[0]->type_url, "google.rpc.RetryInfo")) {
        Google__Rpc__RetryInfo *ri =
            google__rpc__retry_info__unpack(NULL, st->details[0]->value.len, st->details[0]->value.data);
        retry_ok = ri && ri->retry_delay && ri->retry_delay->seconds == 2 && ri->retry_delay->nanos == 500000000;
        if (ri)
            google__rpc__retry_info__free_unpacked(ri, NULL);
    }
    tap_check(r.status == GRPC_STATUS_RESOURCE_EXHAUSTED && st && st->code == 8,
              "RESOURCE_EXHAUSTED with google.rpc.Status details (%zu bytes)", r.details_len);
    tap_check(retry_ok, "details carry RetryInfo retry_delay 2.5 s");
    if (st)
        google__rpc__status__free_unpacked(st, NULL);

    /* 5. deadline */
    set_script("HANG:5");
    uint64_t t0 = loop_now_ns();
    call(ch, req, len, false, 300 * MS, &r);
    uint64_t el = (r.t_done - t0) / MS;
    tap_check(r.status == GRPC_STATUS_DEADLINE_EXCEEDED, "HANG past 300 ms -> %s", grpc_status_name(r.status));
    tap_check(el >= 290 && el < 800, "deadline reported after %llu ms (~300)", (unsigned long long)el);
    set_script("OK");

    /* 6. response over max_message: RESOURCE_EXHAUSTED */
    {
        grpc_channel_opts_t o = {.max_message = 4};
        grpc_channel_t *small;
        grpc_channel_new(g_loop, "127.0.0.1", (uint16_t)port, &o, &small, err, sizeof err);
        rc = grpc_call_unary(small, EXPORT_PATH, req, len, false, 0, NULL, 0, on_result, &r);
        tap_check(rc == -EMSGSIZE, "request over max_message refused with -EMSGSIZE (%d)", rc);
        set_script("PARTIAL:3:too old");
        call(small, NULL, 0, false, 5000 * MS, &r);
        tap_check(r.status == GRPC_STATUS_RESOURCE_EXHAUSTED, "response over max_message -> %s '%s'",
                  grpc_status_name(r.status), r.message);
        grpc_channel_free(small);
        set_script("PARTIAL:3:too old");
        call(ch, NULL, 0, false, 5000 * MS, &r);
        tap_check(r.status == GRPC_STATUS_OK && r.response_len > 0, "PARTIAL answer decodes: %zu response bytes",
                  r.response_len);
    }
    free(req);

    /* 7. 3 MiB request: flow control over many windows */
    req = make_request(4, 3u << 20, &len, b64, sizeof b64);
    call(ch, req, len, false, 20000 * MS, &r);
    tap_check(r.status == GRPC_STATUS_OK, "3 MiB Export OK: %s %s", grpc_status_name(r.status), r.message);
    tap_check(capture_contains(b64), "3 MiB request recorded (span id %s)", b64);
    free(req);

    /* 7b. borrowed (grpc_call_unary_borrowed): the body goes from this buffer
     * into the DATA frames with no copy of its own; 3 MiB over many windows,
     * then gzip, then a deadline whose buffer is freed as soon as the
     * callback ran (the sanitizer build catches any later read of it) */
    req = make_request(14, 3u << 20, &len, b64, sizeof b64);
    call_borrowed(ch, req, len, false, 20000 * MS, &r);
    tap_check(r.status == GRPC_STATUS_OK, "borrowed 3 MiB Export OK: %s %s", grpc_status_name(r.status), r.message);
    tap_check(capture_contains(b64), "borrowed 3 MiB request recorded intact (span id %s)", b64);
    free(req);
    req = make_request(15, 5000, &len, b64, sizeof b64);
    call_borrowed(ch, req, len, true, 5000 * MS, &r);
    tap_check(r.status == GRPC_STATUS_OK && capture_contains(b64), "borrowed gzip Export OK and recorded: %s",
              grpc_status_name(r.status));
    set_script("HANG:5");
    call_borrowed(ch, req, len, false, 200 * MS, &r);
    tap_check(r.status == GRPC_STATUS_DEADLINE_EXCEEDED, "borrowed call past its deadline -> %s",
              grpc_status_name(r.status));
    free(req);
    set_script("OK");
    req = make_request(16, 0, &len, b64, sizeof b64);
    call(ch, req, len, false, 5000 * MS, &r);
    tap_check(r.status == GRPC_STATUS_OK && capture_contains(b64), "the connection serves the next call: %s",
              grpc_status_name(r.status));
    free(req);

    /* 8. 100 concurrent calls on one connection */
    grpc_channel_stats_t s0, s1;
    grpc_channel_stats(ch, &s0);
    req = make_request(5, 100, &len, b64, sizeof b64);
    static result_t many[100];
    g_pending = 0;
    for (int i = 0; i < 100; i++) {
        many[i].status = -1;
        if (grpc_call_unary(ch, EXPORT_PATH, req, len, i % 2, 20000 * MS, NULL, 0, on_result, &many[i]) == 0)
            g_pending++;
    }
    loop_run(g_loop);
    int nok = 0;
    for (int i = 0; i < 100; i++)
        nok += many[i].status == GRPC_STATUS_OK;
    grpc_channel_stats(ch, &s1);
    tap_check(nok == 100, "100 concurrent calls OK: %d", nok);
    tap_check(s1.connects == s0.connects && s1.connects == 1, "one TCP connection for all (connects %llu)",
              (unsigned long long)s1.connects);
    free(req);

    /* 9. server killed -> UNAVAILABLE; restarted -> reconnect */
    req = make_request(6, 0, &len, b64, sizeof b64);
    server_kill();
    call(ch, req, len, false, 5000 * MS, &r);
    tap_check(r.status == GRPC_STATUS_UNAVAILABLE, "server killed -> %s '%s'", grpc_status_name(r.status), r.message);
    int port2 = server_start((uint16_t)port);
    tap_check(port2 == port, "server restarted on port %d", port2);
    int tries = 0;
    uint64_t tr0 = loop_now_ns();
    do {
        call(ch, req, len, false, 5000 * MS, &r);
        if (r.status != GRPC_STATUS_OK) {
            loop_timer_t t;
            loop_timer_init(&t);
            usleep(100000);
        }
    } while (r.status != GRPC_STATUS_OK && ++tries < 100 && loop_now_ns() - tr0 < 10000 * MS);
    grpc_channel_stats(ch, &s1);
    tap_check(r.status == GRPC_STATUS_OK, "call OK after restart (%d failed tries, %llu ms)", tries,
              (unsigned long long)((loop_now_ns() - tr0) / MS));
    tap_check(s1.connects == 2, "reconnected: connects %llu, connect failures %llu", (unsigned long long)s1.connects,
              (unsigned long long)s1.connect_failures);
    tap_check(s1.calls_started == s1.calls_finished, "calls started %llu == finished %llu",
              (unsigned long long)s1.calls_started, (unsigned long long)s1.calls_finished);

    /* 10. connection refused */
    grpc_channel_t *dead;
    uint16_t fp = free_port();
    grpc_channel_new(g_loop, "127.0.0.1", fp, NULL, &dead, err, sizeof err);
    t0 = loop_now_ns();
    call(dead, req, len, false, 5000 * MS, &r);
    el = (loop_now_ns() - t0) / MS;
    tap_check(r.status == GRPC_STATUS_UNAVAILABLE && el < 1000, "connection refused -> %s in %llu ms '%s'",
              grpc_status_name(r.status), (unsigned long long)el, r.message);
    call(dead, req, len, false, 5000 * MS, &r);
    tap_check(r.status == GRPC_STATUS_UNAVAILABLE, "during backoff -> %s fast '%s'", grpc_status_name(r.status),
              r.message);
    grpc_channel_free(dead);
    free(req);

    /* 11. TLS */
    req = make_request(8, 0, &len, b64, sizeof b64);
    test_tls(req, len);
    free(req);

    /* 12. free with a call in flight: CANCELLED, exactly once */
    set_script("HANG:5");
    req = make_request(7, 0, &len, b64, sizeof b64);
    result_t rf = {.status = -1};
    g_pending = 1;
    grpc_call_unary(ch, EXPORT_PATH, req, len, false, 0, NULL, 0, on_result, &rf);
    grpc_channel_free(ch);
    tap_check(rf.done && rf.status == GRPC_STATUS_CANCELLED, "grpc_channel_free cancels pending calls: %s",
              grpc_status_name(rf.status));
    free(req);
    loop_destroy(g_loop);
    server_kill();
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (tap__failed == 0 && system(cmd) != 0)
        tap_diag("could not remove %s", g_dir);
    return tap_done();
}
