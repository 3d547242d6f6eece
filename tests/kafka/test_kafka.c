/*
 * tests/kafka/test_kafka.c - core/kafka end to end against shop-kafka-mock.
 *
 * Usage: test_kafka <path to shop-kafka-mock>         (suite integration)
 *        test_kafka --kraft <tools/kafka/kafka-kraft.sh> (suite e2e: a real
 *        Apache Kafka in KRaft mode; phase 1 only; skips (77) without jars)
 *
 *  1. 1000 messages, keys spread over 20 order ids, produced on the loop and
 *     consumed back with a librdkafka consumer: every message once, per-key
 *     order kept, traceparent header equal to what was sent, one PRODUCER
 *     span per message with the semconv attributes and a link to the
 *     order's context;
 *  2. brokers down (SIGUSR1 to the mock): kafka_produce still returns at
 *     once, nothing is acknowledged while down, everything is after SIGUSR2;
 *     consumed again: still once each, in order; then an outage that starts
 *     while messages are in flight (retried by the idempotent producer);
 *  3. a producer with a 1.5 s delivery timeout and the brokers down: every
 *     message fails with -ETIMEDOUT/_MSG_TIMED_OUT, spans are ERROR with
 *     error.type; kafka_destroy reports queued messages as -ECANCELED;
 *  4. the mock exits 0 on SIGTERM.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "core.h"
#include "kafka.h"
#include "loop.h"
#include "tap.h"

#define N_ORDERS 20
#define N_MSG 1000
#define N_DOWN 200
#define N_MID 300 /* produced just before an outage: some are in flight */
#define N_TIMEOUT 20
#define N_PURGE 3
#define PARTITIONS 4
#define TOPIC KAFKA_TOPIC_ORDER_EVENTS

/* ------------------------------------------------------------ the mock */

typedef struct {
    pid_t pid;
    FILE *out; /* its stdout */
    char dir[64], file[128];
    char bootstrap[256];
} mock_t;

static int mock_start(mock_t *m, const char *exe)
{
    snprintf(m->dir, sizeof m->dir, "/tmp/shop-kafka-test-XXXXXX");
    if (!mkdtemp(m->dir))
        return -errno;
    snprintf(m->file, sizeof m->file, "%s/bootstrap", m->dir);
    int p[2];
    if (pipe(p) != 0)
        return -errno;
    m->pid = fork();
    if (m->pid < 0)
        return -errno;
    if (m->pid == 0) {
        dup2(p[1], 1);
        close(p[0]);
        close(p[1]);
        execl(exe, exe, "--partitions", "4", "--bootstrap-file", m->file, (char *)NULL);
        perror("exec shop-kafka-mock");
        _exit(127);
    }
    close(p[1]);
    m->out = fdopen(p[0], "r");
    if (!m->out || !fgets(m->bootstrap, sizeof m->bootstrap, m->out))
        return -EIO;
    m->bootstrap[strcspn(m->bootstrap, "\n")] = 0;
    return 0;
}

/* A real broker through kafka-kraft.sh: start prints the bootstrap. */
static int kraft_start(mock_t *m, const char *script)
{
    memset(m, 0, sizeof *m);
    snprintf(m->dir, sizeof m->dir, "/tmp/shop-kafka-kraft-XXXXXX");
    if (!mkdtemp(m->dir))
        return -errno;
    snprintf(m->file, sizeof m->file, "%s/bootstrap", m->dir);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "'%s' start '%s'", script, m->dir);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -errno;
    if (!fgets(m->bootstrap, sizeof m->bootstrap, p))
        m->bootstrap[0] = 0;
    int st = pclose(p);
    m->bootstrap[strcspn(m->bootstrap, "\n")] = 0;
    return st == 0 && m->bootstrap[0] ? 0 : -EIO;
}

static int kraft_stop(mock_t *m, const char *script)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "'%s' stop '%s' && rm -rf '%s'", script, m->dir, m->dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Sends sig and waits for the mock's acknowledgement line. */
static int mock_ctl(mock_t *m, int sig, const char *expect)
{
    char line[64];
    if (kill(m->pid, sig) != 0 || !fgets(line, sizeof line, m->out))
        return -1;
    line[strcspn(line, "\n")] = 0;
    return strcmp(line, expect) == 0 ? 0 : -1;
}

static int mock_stop(mock_t *m)
{
    int st = 0;
    kill(m->pid, SIGTERM);
    if (waitpid(m->pid, &st, 0) != m->pid)
        return -1;
    fclose(m->out);
    unlink(m->file);
    rmdir(m->dir);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* --------------------------------------------------------- span capture */

typedef struct {
    void *rec;
    uint32_t len;
} captured_t;

static captured_t *spans;
static size_t n_spans, cap_spans;

static void sink(void *arg, const void *record, uint32_t len, bool truncated)
{
    (void)arg;
    (void)truncated;
    if (n_spans == cap_spans) {
        cap_spans = cap_spans ? cap_spans * 2 : 1024;
        spans = realloc(spans, cap_spans * sizeof *spans);
        if (!spans)
            abort();
    }
    void *c = malloc(len);
    if (!c)
        abort();
    memcpy(c, record, len);
    spans[n_spans++] = (captured_t){c, len};
}

static void spans_clear(void)
{
    for (size_t i = 0; i < n_spans; i++)
        free(spans[i].rec);
    n_spans = 0;
}

/* What a span says, for the checks. */
typedef struct {
    span_record_t r;
    char traceparent[TRACE_TRACEPARENT_LEN + 1];
    trace_str_t system, optype, opname, dest, key, error_type;
    int64_t offset;
    int n_links;
    const uint8_t *link_trace, *link_span;
} span_view_t;

static bool str_eq(trace_str_t s, const char *lit)
{
    return s.p && s.len == strlen(lit) && memcmp(s.p, lit, s.len) == 0;
}

static int span_view(const captured_t *c, span_view_t *v)
{
    memset(v, 0, sizeof *v);
    v->offset = -1;
    if (span_record_decode(c->rec, c->len, &v->r) != 0)
        return -1;
    trace_context_t ctx = {.flags = (uint8_t)v->r.trace_flags};
    memcpy(ctx.trace_id, v->r.trace_id, TRACE_ID_SIZE);
    memcpy(ctx.span_id, v->r.span_id, TRACE_SPAN_ID_SIZE);
    trace_w3c_traceparent_format(&ctx, v->traceparent);
    uint32_t off = 0;
    span_record_item_t it;
    while (span_record_next(v->r.items, v->r.items_len, &off, &it) == 1) {
        if (it.tag == SPAN_ITEM_LINK) {
            v->n_links++;
            v->link_trace = it.trace_id;
            v->link_span = it.span_id;
            continue;
        }
        if (it.tag != SPAN_ITEM_ATTR)
            continue;
        trace_str_t sv = {(const char *)it.value, it.value_len};
        if (str_eq(it.key, "messaging.system"))
            v->system = sv;
        else if (str_eq(it.key, "messaging.operation.type"))
            v->optype = sv;
        else if (str_eq(it.key, "messaging.operation.name"))
            v->opname = sv;
        else if (str_eq(it.key, "messaging.destination.name"))
            v->dest = sv;
        else if (str_eq(it.key, "messaging.kafka.message.key"))
            v->key = sv;
        else if (str_eq(it.key, "error.type"))
            v->error_type = sv;
        else if (str_eq(it.key, "messaging.kafka.offset") && it.value_len == 8)
            memcpy(&v->offset, it.value, 8);
    }
    return 0;
}

/* -------------------------------------------------------- the producer */

typedef struct {
    int order, seq;
    bool reported;
    int status;
    const char *error_name;
    int64_t offset;
    char traceparent[TRACE_TRACEPARENT_LEN + 1];
} sent_t;

static sent_t sent[N_MSG + N_DOWN + N_MID];
static int n_sent;
static int next_seq[N_ORDERS];
static trace_context_t order_ctx[N_ORDERS];
static unsigned reports;
static int kafka_errors;

static void on_delivery(kafka_t *k, const kafka_report_t *r, void *arg)
{
    (void)k;
    sent_t *s = arg;
    s->reported = true;
    s->status = r->status;
    s->error_name = r->error_name;
    s->offset = r->offset;
    reports++;
}

static void on_kafka_error(kafka_t *k, int err, bool fatal, const char *reason, void *arg)
{
    (void)k;
    (void)arg;
    if (kafka_errors++ < 3)
        tap_diag("kafka error (expected while down): %s%s: %s", fatal ? "FATAL " : "",
                 rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

static void key_of(int order, char *out, size_t cap) { snprintf(out, cap, "ord-%04d", order); }

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Produces one event of `order`; returns kafka_produce's status and adds
 * the worst call time to *max_ns. */
static int produce_one(kafka_t *k, int order, sent_t *s, uint64_t *max_ns)
{
    char key[32], val[128];
    key_of(order, key, sizeof key);
    s->order = order;
    s->seq = next_seq[order]++;
    s->offset = -1;
    int vl = snprintf(val, sizeof val, "{\"order_id\":\"%s\",\"seq\":%d,\"type\":\"order.completed\"}",
                      key, s->seq);
    static const char src[] = "order-svc";
    kafka_header_t h = {.name = "source", .value = src, .len = sizeof src - 1};
    kafka_message_t m = {.topic = TOPIC, .key = key, .key_len = strlen(key), .value = val,
                         .value_len = (size_t)vl, .headers = &h, .n_headers = 1,
                         .link = &order_ctx[order]};
    uint64_t t0 = now_ns();
    int rc = kafka_produce(k, &m, on_delivery, s, s->traceparent);
    uint64_t dt = now_ns() - t0;
    if (dt > *max_ns)
        *max_ns = dt;
    return rc;
}

/* ------------------------------------------------------- loop helpers */

static unsigned want_reports;
static uint64_t deadline;

static void on_tick(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)t;
    (void)arg;
    if ((want_reports && reports >= want_reports) || now_ns() >= deadline)
        loop_stop(loop);
}

/* Runs the loop until `want` reports in total (0 = just for ms). */
static void run_until(loop_t *loop, unsigned want, unsigned ms)
{
    loop_timer_t t;
    loop_timer_init(&t);
    want_reports = want;
    deadline = now_ns() + (uint64_t)ms * 1000000u;
    loop_timer_start(loop, &t, 5000000u, 5000000u, on_tick, NULL);
    loop_run(loop);
    loop_timer_stop(loop, &t);
}

/* Phase 2b's producer tick: one message per call, brokers down half-way. */
static struct {
    kafka_t *k;
    mock_t *mock;
    int left;
    bool down_ok;
} mid;

static void on_mid_tick(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)arg;
    uint64_t max_ns = 0;
    if (mid.left == 0) {
        loop_timer_stop(loop, t);
        return;
    }
    produce_one(mid.k, n_sent % N_ORDERS, &sent[n_sent], &max_ns);
    n_sent++;
    if (--mid.left == N_MID / 2)
        mid.down_ok = mock_ctl(mid.mock, SIGUSR1, "down") == 0;
}

/* ---------------------------------------------------------- consumer */

typedef struct {
    int count, dup, bad, order_breaks, tp_missing, tp_mismatch, source_missing;
} consumed_t;

/* Reads the whole topic from the beginning and checks it against sent[0..n). */
static int consume_check(const char *bootstrap, int n, consumed_t *out)
{
    memset(out, 0, sizeof *out);
    char e[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, e, sizeof e) ||
        rd_kafka_conf_set(conf, "group.id", "test-kafka", e, sizeof e) ||
        rd_kafka_conf_set(conf, "enable.auto.commit", "false", e, sizeof e) ||
        rd_kafka_conf_set(conf, "enable.partition.eof", "false", e, sizeof e)) {
        tap_diag("consumer conf: %s", e);
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, e, sizeof e);
    if (!rk) {
        tap_diag("consumer: %s", e);
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    rd_kafka_topic_partition_list_t *tp = rd_kafka_topic_partition_list_new(PARTITIONS);
    for (int p = 0; p < PARTITIONS; p++)
        rd_kafka_topic_partition_list_add(tp, TOPIC, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(rk, tp);
    rd_kafka_topic_partition_list_destroy(tp);

    static unsigned char seen[N_MSG + N_DOWN + N_MID];
    memset(seen, 0, sizeof seen);
    int last_seq[N_ORDERS];
    for (int i = 0; i < N_ORDERS; i++)
        last_seq[i] = -1;
    uint64_t end = now_ns() + 15000000000u, quiet_end = 0;
    while (now_ns() < end && (quiet_end == 0 || now_ns() < quiet_end)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 50);
        if (!m)
            continue;
        if (m->err) {
            tap_diag("consume: %s", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        int order = -1, seq = -1;
        if (m->key_len < 32) {
            char key[32];
            memcpy(key, m->key, m->key_len);
            key[m->key_len] = 0;
            sscanf(key, "ord-%d", &order);
        }
        const char *sp = m->len < 200 ? memmem(m->payload, m->len, "\"seq\":", 6) : NULL;
        if (sp)
            seq = atoi(sp + 6);
        int idx = -1;
        if (order >= 0 && order < N_ORDERS && seq >= 0) {
            for (int i = 0; i < n; i++)
                if (sent[i].order == order && sent[i].seq == seq) {
                    idx = i;
                    break;
                }
        }
        if (idx < 0) {
            out->bad++;
        } else {
            out->count++;
            if (seen[idx]++) {
                out->dup++; /* order is judged on first deliveries */
            } else {
                if (seq <= last_seq[order])
                    out->order_breaks++;
                last_seq[order] = seq;
            }
            rd_kafka_headers_t *h = NULL;
            const void *v;
            size_t vl;
            if (rd_kafka_message_headers(m, &h) ||
                rd_kafka_header_get_last(h, "traceparent", &v, &vl))
                out->tp_missing++;
            else if (vl != TRACE_TRACEPARENT_LEN || memcmp(v, sent[idx].traceparent, vl) != 0)
                out->tp_mismatch++;
            if (!h || rd_kafka_header_get_last(h, "source", &v, &vl) || vl != 9 ||
                memcmp(v, "order-svc", 9) != 0)
                out->source_missing++;
        }
        rd_kafka_message_destroy(m);
        if (out->count + out->bad >= n && quiet_end == 0)
            quiet_end = now_ns() + 300000000u; /* a little longer: duplicates? */
    }
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return 0;
}

/* Every message once (allow_dup: at least once), none unknown, per-key order,
 * headers. */
static void check_consumed(const char *what, const consumed_t *c, int n, bool allow_dup)
{
    tap_check(c->count - c->dup == n && (allow_dup || c->dup == 0) && c->bad == 0,
              "%s: consumed %d of %d messages, %d duplicates%s, %d unknown", what, c->count - c->dup, n,
              c->dup, allow_dup ? " (allowed here)" : "", c->bad);
    tap_check(c->order_breaks == 0, "%s: per-key order kept (%d breaks)", what, c->order_breaks);
    tap_check(c->tp_missing == 0 && c->tp_mismatch == 0,
              "%s: traceparent header on every message, equal to the one sent (%d missing, %d differ)",
              what, c->tp_missing, c->tp_mismatch);
    tap_check(c->source_missing == 0, "%s: the caller's extra header arrives (%d missing)", what,
              c->source_missing);
}

/* Checks the PRODUCER spans captured for sent[from..to). */
static void check_spans(const char *what, int from, int to, bool expect_error)
{
    int n_producer = 0, bad_attrs = 0, bad_link = 0, unmatched = 0, bad_status = 0, bad_offset = 0;
    for (size_t i = 0; i < n_spans; i++) {
        span_view_t v;
        if (span_view(&spans[i], &v) != 0) {
            bad_attrs++;
            continue;
        }
        if (v.r.kind != TRACE_KIND_PRODUCER)
            continue;
        n_producer++;
        if (!(str_eq(v.r.name, "send order-events") && str_eq(v.system, "kafka") &&
              str_eq(v.optype, "send") && str_eq(v.opname, "send") && str_eq(v.dest, TOPIC)))
            bad_attrs++;
        int idx = -1;
        for (int j = from; j < to; j++)
            if (strcmp(sent[j].traceparent, v.traceparent) == 0) {
                idx = j;
                break;
            }
        if (idx < 0) {
            unmatched++;
            continue;
        }
        char key[32];
        key_of(sent[idx].order, key, sizeof key);
        if (!str_eq(v.key, key))
            bad_attrs++;
        const trace_context_t *oc = &order_ctx[sent[idx].order];
        if (v.n_links != 1 || memcmp(v.link_trace, oc->trace_id, TRACE_ID_SIZE) != 0 ||
            memcmp(v.link_span, oc->span_id, TRACE_SPAN_ID_SIZE) != 0)
            bad_link++;
        if (expect_error) {
            if (v.r.status != TRACE_STATUS_ERROR || !str_eq(v.error_type, "_MSG_TIMED_OUT"))
                bad_status++;
        } else {
            if (v.r.status == TRACE_STATUS_ERROR || v.error_type.p)
                bad_status++;
            if (v.offset != sent[idx].offset)
                bad_offset++;
        }
    }
    tap_check(n_producer == to - from && unmatched == 0,
              "%s: one PRODUCER span per message (%d spans for %d messages, %d unmatched)", what,
              n_producer, to - from, unmatched);
    tap_check(bad_attrs == 0,
              "%s: spans named 'send order-events' with messaging.system/operation.type/"
              "operation.name/destination.name/kafka.message.key (%d wrong)",
              what, bad_attrs);
    tap_check(bad_link == 0, "%s: every span links to its order's context (%d wrong)", what,
              bad_link);
    if (expect_error)
        tap_check(bad_status == 0, "%s: spans are ERROR with error.type=_MSG_TIMED_OUT (%d wrong)",
                  what, bad_status);
    else
        tap_check(bad_status == 0 && bad_offset == 0,
                  "%s: spans not in error, messaging.kafka.offset = acknowledged offset (%d/%d wrong)",
                  what, bad_status, bad_offset);
}

int main(int argc, char **argv)
{
    bool kraft = argc == 3 && strcmp(argv[1], "--kraft") == 0;
    if (argc != 2 && !kraft) {
        fprintf(stderr, "usage: test_kafka <shop-kafka-mock> | --kraft <kafka-kraft.sh>\n");
        return 2;
    }
    alarm(kraft ? 170 : 110); /* a hung broker must not hang the suite past meson's timeout */
    signal(SIGPIPE, SIG_IGN);

    mock_t mock;
    int rc;
    if (kraft) {
        char libs[600];
        snprintf(libs, sizeof libs, "%s", argv[2]);
        char *slash = strrchr(libs, '/');
        if (slash)
            *slash = 0;
        /* <repo>/tools/kafka -> <repo>/var/kafka/libs, as the script looks */
        char probe[700];
        snprintf(probe, sizeof probe, "ls %s/../../var/kafka/libs/kafka_2.13-*.jar >/dev/null 2>&1",
                 libs);
        if (!getenv("KAFKA_HOME") && system(probe) != 0) {
            printf("1..0 # SKIP no Kafka jars: run tools/kafka/fetch-kafka.sh\n");
            return 77;
        }
        rc = kraft_start(&mock, argv[2]);
        if (!tap_check(rc == 0, "Apache Kafka (KRaft) starts at %s", mock.bootstrap))
            return tap_done();
    } else {
        rc = mock_start(&mock, argv[1]);
        if (!tap_check(rc == 0 && mock.bootstrap[0],
                       "shop-kafka-mock starts and prints its bootstrap (%s)", mock.bootstrap))
            return tap_done();
    }
    char filebuf[256] = "";
    FILE *bf = fopen(mock.file, "r");
    if (bf) {
        if (!fgets(filebuf, sizeof filebuf, bf))
            filebuf[0] = 0;
        fclose(bf);
    }
    filebuf[strcspn(filebuf, "\n")] = 0;
    tap_check(strcmp(filebuf, mock.bootstrap) == 0, "the bootstrap file holds the same servers");

    char err[256] = "";
    trace_options_t to = {.service_name = "test-kafka", .no_ring = true, .sink = sink};
    rc = trace_init(&to, err, sizeof err);
    if (!tap_check(rc == 0, "trace_init (sink): %s", rc ? err : "ok"))
        return tap_done();
    for (int i = 0; i < N_ORDERS; i++) {
        trace_id_new(order_ctx[i].trace_id);
        trace_id_new_span(order_ctx[i].span_id);
        order_ctx[i].flags = TRACE_FLAG_SAMPLED;
    }

    loop_t *loop;
    rc = loop_create(&loop, NULL);
    if (!tap_check(rc == 0, "loop_create"))
        return tap_done();

    kafka_options_t ko;
    kafka_options_default(&ko);
    ko.bootstrap_servers = mock.bootstrap;
    ko.reconnect_backoff_max_ms = 300;
    ko.on_error = on_kafka_error;
    kafka_t *k;
    rc = kafka_create(loop, &ko, &k, err, sizeof err);
    if (!tap_check(rc == 0, "kafka_create: %s", rc ? err : "ok"))
        return tap_done();
    char desc[512];
    kafka_describe(k, desc, sizeof desc);
    tap_diag("%s", desc);

    /* 1. 1000 messages over 20 orders. */
    uint64_t max_ns = 0, t0 = now_ns();
    int refused = 0;
    for (int i = 0; i < N_MSG; i++)
        refused += produce_one(k, i % N_ORDERS, &sent[n_sent++], &max_ns) != 0;
    tap_check(refused == 0, "1000 kafka_produce calls accepted (%d refused), slowest %.3f ms",
              refused, (double)max_ns / 1e6);
    run_until(loop, N_MSG, 20000);
    int ok = 0;
    for (int i = 0; i < N_MSG; i++)
        ok += sent[i].reported && sent[i].status == 0 && sent[i].offset >= 0;
    tap_check(ok == N_MSG && kafka_pending(k) == 0,
              "every message acknowledged with an offset (%d of %d) in %.2f s", ok, N_MSG,
              (double)(now_ns() - t0) / 1e9);
    consumed_t c;
    consume_check(mock.bootstrap, n_sent, &c);
    check_consumed("1000 messages", &c, N_MSG, false);
    check_spans("1000 messages", 0, N_MSG, false);
    spans_clear();

    if (kraft) {
        kafka_destroy(k);
        loop_destroy(loop);
        trace_shutdown();
        free(spans);
        tap_check(kraft_stop(&mock, argv[2]) == 0, "kafka-kraft.sh stop");
        return tap_done();
    }

    /* 2. brokers down, then up. */
    tap_check(mock_ctl(&mock, SIGUSR1, "down") == 0, "mock: brokers down");
    max_ns = 0;
    refused = 0;
    unsigned before = reports;
    t0 = now_ns();
    for (int i = 0; i < N_DOWN; i++)
        refused += produce_one(k, i % N_ORDERS, &sent[n_sent++], &max_ns) != 0;
    uint64_t produce_ns = now_ns() - t0;
    tap_check(refused == 0 && produce_ns < 200000000u,
              "broker down: %d kafka_produce calls return at once (%d refused, %.3f ms in all, "
              "slowest %.3f ms)",
              N_DOWN, refused, (double)produce_ns / 1e6, (double)max_ns / 1e6);
    run_until(loop, 0, 1500);
    tap_check(reports == before && kafka_pending(k) == N_DOWN,
              "broker down: nothing acknowledged in 1.5 s, %u waiting", kafka_pending(k));
    tap_check(mock_ctl(&mock, SIGUSR2, "up") == 0, "mock: brokers up");
    t0 = now_ns();
    run_until(loop, before + N_DOWN, 20000);
    ok = 0;
    for (int i = N_MSG; i < n_sent; i++)
        ok += sent[i].reported && sent[i].status == 0;
    tap_check(ok == N_DOWN, "broker back: the %d waiting messages acknowledged (%d) in %.2f s",
              N_DOWN, ok, (double)(now_ns() - t0) / 1e9);
    consume_check(mock.bootstrap, n_sent, &c);
    check_consumed("after the outage", &c, N_MSG + N_DOWN, false);
    check_spans("after the outage", N_MSG, n_sent, false);
    spans_clear();

    /* 2b. the outage starts while messages are being produced: one per
     * millisecond from a loop timer, brokers down half-way. */
    before = reports;
    int from = n_sent;
    mid.k = k;
    mid.mock = &mock;
    mid.left = N_MID;
    loop_timer_t pt;
    loop_timer_init(&pt);
    loop_timer_start(loop, &pt, 1000000u, 1000000u, on_mid_tick, NULL);
    run_until(loop, 0, 1200); /* ~300 ms producing, then the outage */
    loop_timer_stop(loop, &pt);
    tap_check(mid.down_ok && n_sent == from + N_MID,
              "mock: brokers down half-way through %d produces (down acknowledged: %d)", N_MID,
              mid.down_ok);
    unsigned during = reports - before;
    tap_check(mock_ctl(&mock, SIGUSR2, "up") == 0, "mock: brokers up");
    run_until(loop, before + N_MID, 20000);
    ok = 0;
    for (int i = from; i < n_sent; i++)
        ok += sent[i].reported && sent[i].status == 0;
    tap_check(ok == N_MID, "mid-flight outage: all %d acknowledged (%d; %u before the outage ended)",
              N_MID, ok, during);
    consume_check(mock.bootstrap, n_sent, &c);
    /* Brokers cut while produce requests are in flight: every message must
     * arrive, in order per key, but librdkafka's mock cluster now and then
     * appends a retried batch twice (the idempotent producer's sequence
     * check is the broker's job, and the mock's is partial; librdkafka
     * issue 4953 shows the same with real brokers during leader changes).  The real broker's log is checked for
     * stored duplicates in order_kraft_e2e. */
    check_consumed("mid-flight outage", &c, n_sent, true);
    spans_clear();
    kafka_destroy(k);

    /* 3. delivery timeout: a second producer, created while the brokers
     * are down, never gets through. */
    tap_check(mock_ctl(&mock, SIGUSR1, "down") == 0, "mock: brokers down again");
    ko.delivery_timeout_ms = 1500;
    ko.linger_ms = 0;
    rc = kafka_create(loop, &ko, &k, err, sizeof err);
    tap_check(rc == 0, "kafka_create while the brokers are down: %s", rc ? err : "ok");
    if (rc == 0) {
        /* sent[] is reused from 0: phases 1-2 are checked already. */
        int save_n = n_sent;
        n_sent = 0;
        max_ns = 0;
        refused = 0;
        before = reports;
        t0 = now_ns();
        for (int i = 0; i < N_TIMEOUT; i++)
            refused += produce_one(k, i % N_ORDERS, &sent[n_sent++], &max_ns) != 0;
        run_until(loop, before + N_TIMEOUT, 15000);
        double took = (double)(now_ns() - t0) / 1e9;
        int timed_out = 0;
        for (int i = 0; i < N_TIMEOUT; i++)
            timed_out += sent[i].reported && sent[i].status == -ETIMEDOUT && sent[i].error_name &&
                         strcmp(sent[i].error_name, "_MSG_TIMED_OUT") == 0;
        tap_check(refused == 0 && timed_out == N_TIMEOUT && took >= 1.0 && took < 10.0,
                  "delivery timeout 1.5 s: %d of %d fail with -ETIMEDOUT/_MSG_TIMED_OUT after %.2f s",
                  timed_out, N_TIMEOUT, took);
        check_spans("timed out", 0, N_TIMEOUT, true);
        spans_clear();
        /* Queued messages at destroy: reported, as cancelled, inside it. */
        before = reports;
        for (int i = 0; i < N_PURGE; i++)
            produce_one(k, i, &sent[n_sent++], &max_ns);
        kafka_destroy(k);
        int cancelled = 0;
        for (int i = N_TIMEOUT; i < n_sent; i++)
            cancelled += sent[i].reported && sent[i].status == -ECANCELED;
        tap_check(cancelled == N_PURGE && reports == before + N_PURGE,
                  "kafka_destroy reports queued messages as -ECANCELED (%d of %d)", cancelled,
                  N_PURGE);
        spans_clear();
        n_sent = save_n;
    }
    tap_check(mock_ctl(&mock, SIGUSR2, "up") == 0, "mock: brokers up again");

    loop_destroy(loop);
    trace_shutdown();
    spans_clear();
    free(spans);
    tap_check(mock_stop(&mock) == 0, "shop-kafka-mock exits 0 on SIGTERM");
    return tap_done();
}
