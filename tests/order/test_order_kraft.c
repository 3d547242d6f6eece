/*
 * tests/order/test_order_kraft.c - order-svc's outbox relay against a real
 * Apache Kafka broker in KRaft mode (suite e2e), read back with Kafka's own
 * console consumer, and its PRODUCER spans read back from Jaeger.
 *
 * Usage (meson passes these):
 *   test_order_kraft PG_HARNESS SHOP_MIGRATE MIGRATIONS SEED KAFKA_KRAFT_SH INVENTORY_SVC
 *                    PAYMENT_SVC PAYMENT_SIM ORDER_SVC SHOP_EXPORTER JAEGER JAEGER_CONFIG
 * Skips (77) without the Kafka jars (tools/kafka/fetch-kafka.sh), java or
 * Jaeger (tools/go/build.sh).
 *
 * The stack: a private PostgreSQL (migrated, seeded), Apache Kafka through
 * tools/kafka/kafka-kraft.sh (log.message.timestamp.type=LogAppendTime, so
 * every record carries the time the broker appended it), Jaeger v2 (memory
 * storage), shop-exporter draining a private span ring into Jaeger,
 * shop-payment-sim, inventory-svc, payment-svc and order-svc with its
 * [kafka] bootstrap_servers on the broker; every port free and below 32768.
 *
 *  1. 8 orders, each under a traceparent of its own: all complete; every
 *     outbox row gets sent_at; kafka.tools.ConsoleConsumer (headers, keys,
 *     partitions, offsets, timestamps printed) reads exactly one record per
 *     order: key = order id, traceparent header valid with the order's
 *     trace id, the JSON payload's fields equal to the order's row, and
 *     sent_at not before the broker's append time (marked after the ack).
 *  2. The broker stopped: 6 orders still complete (OK, COMPLETED), their 6
 *     rows and 3 later rows of 3 of those orders (inserted by the test) stay
 *     unsent; the saga's database invariants hold.
 *  3. The broker restarted (same data): every row goes out and is marked
 *     sent, each event exactly once (attempts = 1: the idempotent producer's
 *     retries made no duplicate and the relay sent nothing twice), an
 *     order's four events on one partition in outbox order.
 *  4. Jaeger holds, in an order's trace, the PRODUCER span "send
 *     order-events" of service order-svc, referencing the CreateOrder
 *     SERVER span (FOLLOWS_FROM: Jaeger's form of parent + link to the
 *     same span), messaging.system = kafka,
 *     messaging.destination.name = order-events, messaging.operation.type =
 *     send, messaging.kafka.message.key = the order id, a partition and an
 *     offset; its span id is the parent-id of the record's traceparent
 *     header.  The same for an order placed while the broker was down.
 *  5. An outage longer than the producer's delivery timeout (order-svc
 *     restarted with [kafka] delivery_timeout = 1500 ms): 4 orders
 *     complete; their messages time out (rows unsent, attempts >= 2,
 *     last_error _MSG_TIMED_OUT) and the relay holds their later rows back;
 *     after the restart every row goes out, each event once, an order's
 *     events in outbox order on one partition.
 *     The broker's own segment files (kafka.tools.DumpLogSegments): every
 *     batch has a producer id and sequence numbers, contiguous per
 *     producer id and epoch, and the records number what was sent.
 *  6. order-svc exits 0 on SIGTERM; the broker stops.
 */
#include <jansson.h>

#include "order_test.h"
#include "ring.h"

#define N_FIRST 8
#define N_DOWN 6
#define N_LATER 3 /* of the N_DOWN orders get 3 more outbox rows each */
#define N_LONG 4  /* orders during an outage longer than the delivery timeout */
#define N_LONG_LATER 2 /* of them get 2 more outbox rows each */
#define D(s) ((s) ? (s) : "-")

static const char *g_harness, *g_kraft;
static char g_kdir[320], g_bootstrap[128], g_libs[600];
static int g_jaeger_query;

static proc_t p_sim = {.name = "payment-sim"}, p_inv = {.name = "inventory-svc"},
              p_pay = {.name = "payment-svc"}, p_ord = {.name = "order-svc"};
static pid_t g_jaeger_pid, g_exporter_pid;

/* ------------------------------------------------------------ processes */

/* Starts argv with stdout and stderr to DIR/NAME.log and the env entries
 * ("K=V") added.  Returns the pid or -1. */
static pid_t spawn_log(const char *name, const char *const *argv, const char *const *env)
{
    pid_t pid = fork();
    if (pid == 0) {
        char log[400];
        snprintf(log, sizeof log, "%s/%s.log", g_dir, name);
        int l = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (l >= 0) {
            dup2(l, 1);
            dup2(l, 2);
        }
        for (int i = 0; env && env[i]; i++)
            putenv((char *)(uintptr_t)env[i]);
        execv(argv[0], (char *const *)(uintptr_t)argv);
        _exit(127);
    }
    return pid;
}

static void stop_pid(pid_t *pid)
{
    if (*pid <= 0)
        return;
    kill(*pid, SIGTERM);
    for (int i = 0; i < 100; i++) {
        if (waitpid(*pid, NULL, WNOHANG) == *pid) {
            *pid = 0;
            return;
        }
        usleep(50000);
    }
    kill(*pid, SIGKILL);
    waitpid(*pid, NULL, 0);
    *pid = 0;
}

/* Waits up to ms for `want` in DIR/NAME.log. */
static int wait_log(const char *name, const char *want, int ms)
{
    char log[400], buf[65536];
    snprintf(log, sizeof log, "%s/%s.log", g_dir, name);
    uint64_t end = loop_now_ns() + (uint64_t)ms * MS;
    while (loop_now_ns() < end) {
        FILE *f = fopen(log, "r");
        if (f) {
            size_t n = fread(buf, 1, sizeof buf - 1, f);
            fclose(f);
            buf[n] = '\0';
            if (strstr(buf, want))
                return 0;
        }
        usleep(100000);
    }
    return -1;
}

/* Runs cmd and returns its whole stdout (malloc'd, NUL-terminated), or NULL. */
static char *run_capture(const char *cmd)
{
    FILE *f = popen(cmd, "r");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, len = 0;
    char *out = malloc(cap);
    size_t n;
    while (out && (n = fread(out + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len < 4096) {
            char *o = realloc(out, cap * 2);
            if (!o) {
                free(out);
                out = NULL;
                break;
            }
            out = o;
            cap *= 2;
        }
    }
    int st = pclose(f);
    if (out)
        out[len] = '\0';
    if (st != 0) {
        free(out);
        return NULL;
    }
    return out;
}

static json_t *http_json(const char *path)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "curl -fsS --max-time 3 'http://127.0.0.1:%d%s' 2>/dev/null", g_jaeger_query, path);
    char *body = run_capture(cmd);
    if (!body)
        return NULL;
    json_t *j = json_loads(body, 0, NULL);
    free(body);
    return j;
}

static int kraft(const char *verb)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "'%s' %s '%s' >>'%s/kraft.out' 2>&1", g_kraft, verb, g_kdir, g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void cleanup(void)
{
    proc_t *all[] = {&p_ord, &p_pay, &p_inv, &p_sim};
    for (int i = 0; i < 4; i++)
        if (all[i]->pid > 0)
            proc_stop(all[i], SIGKILL);
    stop_pid(&g_exporter_pid);
    stop_pid(&g_jaeger_pid);
    if (g_kdir[0])
        kraft("stop");
    if (g_db)
        PQfinish(g_db);
    if (g_harness && g_dir[0]) {
        char cmd[800];
        snprintf(cmd, sizeof cmd, "'%s' stop '%s/pg' >/dev/null 2>&1", g_harness, g_dir);
        if (system(cmd) != 0)
            tap_diag("pg-harness stop failed");
        if (getenv("TEST_ORDER_KEEP") == NULL) {
            snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
            if (system(cmd) != 0)
                tap_diag("rm failed");
        } else {
            tap_diag("kept %s", g_dir);
        }
    }
    if (g_ring[0])
        ring_unlink(g_ring);
}

/* ------------------------------------------------------------ the consumer */

/* The string member `key` of object o, "" when absent or not a string. */
static const char *js(json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v ? v : "";
}


typedef struct {
    long long ts; /* LogAppendTime, ms */
    int partition;
    long long offset;
    char tp[64];
    char key[72];
    char value[1024];
} rec_t;

static rec_t g_rec[256];
static int g_nrec;

/* Reads order-events from the beginning with kafka.tools.ConsoleConsumer
 * (a new consumer group each time) until it saw `want` records or nothing
 * for 30 s: the wait covers the group coordinator loading
 * __consumer_offsets after a broker restart on a busy machine; with all
 * `want` records it returns at once.  It exits 1 at the timeout, so its
 * status is ignored and what it printed is parsed.  Lines look like
 *   LogAppendTime:1700000000000\tPartition:2\tOffset:0\ttraceparent:00-...\tKEY\tVALUE */
static int consume_all(int want)
{
    char cmd[2000];
    snprintf(cmd, sizeof cmd,
             "java -Xms64m -Xmx256m -Dlog4j.configuration=file:/dev/null -cp '%s/*' "
             "kafka.tools.ConsoleConsumer --bootstrap-server %s --topic order-events "
             "--from-beginning --max-messages %d --timeout-ms 30000 "
             "--property print.timestamp=true --property print.partition=true "
             "--property print.offset=true --property print.headers=true "
             "--property print.key=true 2>>'%s/console-consumer.log'; true",
             g_libs, g_bootstrap, want, g_dir);
    char *out = run_capture(cmd);
    g_nrec = 0;
    if (out == NULL)
        return -1;
    char *save = NULL;
    for (char *line = strtok_r(out, "\n", &save); line && g_nrec < 256; line = strtok_r(NULL, "\n", &save)) {
        char *f[6] = {NULL};
        int nf = 0;
        char *fs = NULL;
        for (char *t = strtok_r(line, "\t", &fs); t && nf < 6; t = strtok_r(NULL, "\t", &fs))
            f[nf++] = t;
        if (nf != 6 || strncmp(f[0], "LogAppendTime:", 14) != 0 || strncmp(f[1], "Partition:", 10) != 0 ||
            strncmp(f[2], "Offset:", 7) != 0) {
            tap_diag("console consumer line not understood: %.200s", nf ? f[0] : "");
            continue;
        }
        rec_t *r = &g_rec[g_nrec++];
        r->ts = atoll(f[0] + 14);
        r->partition = atoi(f[1] + 10);
        r->offset = atoll(f[2] + 7);
        r->tp[0] = '\0';
        /* headers: name:value,name:value (or NO_HEADERS) */
        char *h = strstr(f[3], "traceparent:");
        if (h)
            snprintf(r->tp, sizeof r->tp, "%.55s", h + 12);
        snprintf(r->key, sizeof r->key, "%s", f[4]);
        snprintf(r->value, sizeof r->value, "%s", f[5]);
    }
    free(out);
    return g_nrec;
}

static int recs_for(const char *key, const rec_t **first)
{
    int n = 0;
    for (int i = 0; i < g_nrec; i++)
        if (strcmp(g_rec[i].key, key) == 0) {
            if (n++ == 0 && first)
                *first = &g_rec[i];
        }
    return n;
}

/* The record's JSON payload against the order's row in PostgreSQL. */
static bool payload_matches(const rec_t *r)
{
    json_t *j = json_loads(r->value, 0, NULL);
    if (!j)
        return false;
    char q[512];
    snprintf(q, sizeof q,
             "SELECT count(*) FROM orders WHERE id = '%s' AND status = 'completed' AND user_id = '%s' "
             "AND product_id = '%s' AND quantity = %lld AND amount_cents = %lld",
             r->key, js(j, "user_id"),
             js(j, "product_id"),
             (long long)json_integer_value(json_object_get(j, "quantity")),
             (long long)json_integer_value(json_object_get(j, "amount_cents")));
    char event_id[128];
    snprintf(event_id, sizeof event_id, "%s:order.completed", r->key);
    const char *eid = json_string_value(json_object_get(j, "event_id"));
    const char *type = json_string_value(json_object_get(j, "type"));
    const char *oid = json_string_value(json_object_get(j, "order_id"));
    const char *st = json_string_value(json_object_get(j, "status"));
    bool ok = eid && strcmp(eid, event_id) == 0 && type && strcmp(type, "order.completed") == 0 && oid &&
              strcmp(oid, r->key) == 0 && st && strcmp(st, "completed") == 0 &&
              json_is_integer(json_object_get(j, "amount_cents")) &&
              json_is_integer(json_object_get(j, "quantity")) &&
              json_integer_value(json_object_get(j, "occurred_at_ms")) > 1600000000000LL && sql_int(q) == 1;
    json_decref(j);
    return ok;
}

/* ------------------------------------------------------------ the broker's log */

typedef struct {
    int partition, count, base_seq, last_seq, epoch;
    long long pid;
} batch_t;

/* What the broker stored, read from its segment files with
 * kafka.tools.DumpLogSegments: every batch of order-events must carry a
 * producer id and sequence numbers (written by an idempotent producer), the
 * sequences of one producer id and epoch in a partition must follow each
 * other without a gap or a repeat (no batch written twice), and the batches
 * must hold `want` records in all. */
static void check_broker_log(int want)
{
    char cmd[2000];
    snprintf(cmd, sizeof cmd,
             "java -Xms64m -Xmx256m -Dlog4j.configuration=file:/dev/null -cp '%s/*' kafka.tools.DumpLogSegments "
             "--files $(ls %s/data/order-events-*/*.log | paste -sd,) 2>/dev/null",
             g_libs, g_kdir);
    char *out = run_capture(cmd);
    static batch_t b[1024];
    int nb = 0, part = -1, records = 0, idem = 0, seq_ok = 0;
    char *save = NULL;
    for (char *line = out ? strtok_r(out, "\n", &save) : NULL; line && nb < 1024; line = strtok_r(NULL, "\n", &save)) {
        const char *d = strstr(line, "/order-events-");
        if (strncmp(line, "Dumping ", 8) == 0 && d) {
            part = atoi(d + 14);
            continue;
        }
        batch_t x = {.partition = part};
        long long bo, lo;
        if (sscanf(line, "baseOffset: %lld lastOffset: %lld count: %d baseSequence: %d lastSequence: %d "
                         "producerId: %lld producerEpoch: %d", &bo, &lo, &x.count, &x.base_seq, &x.last_seq,
                   &x.pid, &x.epoch) != 7)
            continue;
        b[nb++] = x;
        records += x.count;
    }
    free(out);
    for (int i = 0; i < nb; i++) {
        idem += b[i].pid >= 0 && b[i].base_seq >= 0 && b[i].last_seq - b[i].base_seq + 1 == b[i].count;
        int prev = -1;
        for (int k = i - 1; k >= 0 && prev < 0; k--)
            if (b[k].partition == b[i].partition && b[k].pid == b[i].pid && b[k].epoch == b[i].epoch)
                prev = k;
        seq_ok += prev < 0 ? b[i].base_seq == 0 : b[i].base_seq == b[prev].last_seq + 1;
    }
    tap_check(nb > 0 && idem == nb, "broker log: all %d batches of order-events carry a producer id and "
              "sequence numbers (an idempotent producer wrote them; %d do)", nb, idem);
    tap_check(nb > 0 && seq_ok == nb, "broker log: per partition, producer id and epoch the sequences follow "
              "each other with no gap and no repeat (%d/%d batches)", seq_ok, nb);
    tap_check(records == want, "broker log: %d records stored (want %d: nothing written twice)", records, want);
}

/* ------------------------------------------------------------ Jaeger */


static const char *tag_str(json_t *span, const char *key, char *buf, size_t cap)
{
    json_t *tags = json_object_get(span, "tags");
    size_t i;
    json_t *t;
    json_array_foreach(tags, i, t)
    {
        if (strcmp(js(t, "key"), key) != 0)
            continue;
        json_t *v = json_object_get(t, "value");
        if (json_is_string(v))
            snprintf(buf, cap, "%s", json_string_value(v));
        else if (json_is_integer(v))
            snprintf(buf, cap, "%lld", (long long)json_integer_value(v));
        else
            snprintf(buf, cap, "?");
        return buf;
    }
    return NULL;
}

static bool has_ref(json_t *span, const char *type, const char *trace, const char *sid)
{
    json_t *refs = json_object_get(span, "references");
    size_t i;
    json_t *r;
    json_array_foreach(refs, i, r)
    {
        if (strcmp(js(r, "refType"), type) == 0 &&
            strcmp(js(r, "traceID"), trace) == 0 &&
            strcmp(js(r, "spanID"), sid) == 0)
            return true;
    }
    return false;
}

/* Checks the PRODUCER span of order `id` in its trace `trace` (32 hex) and
 * that its span id is the parent-id of the record's traceparent `tp`. */
static void check_producer_span(const char *what, const char *trace, const char *id, const char *tp)
{
    char path[128];
    snprintf(path, sizeof path, "/api/traces/%s", trace);
    json_t *t = NULL, *srv = NULL, *prod = NULL;
    const char *prod_service = "";
    uint64_t end = loop_now_ns() + 20000 * MS;
    while (loop_now_ns() < end) {
        json_decref(t);
        t = http_json(path);
        json_t *tr = json_array_get(json_object_get(t, "data"), 0);
        json_t *spans = json_object_get(tr, "spans");
        srv = prod = NULL;
        size_t i;
        json_t *s;
        char b[128];
        json_array_foreach(spans, i, s)
        {
            const char *op = js(s, "operationName");
            const char *kind = tag_str(s, "span.kind", b, sizeof b);
            if (strcmp(op, "shop.v1.OrderService/CreateOrder") == 0 && kind && strcmp(kind, "server") == 0)
                srv = s;
            if (strcmp(op, "send order-events") == 0 && kind && strcmp(kind, "producer") == 0) {
                prod = s;
                const char *pid = js(s, "processID");
                json_t *proc = json_object_get(json_object_get(tr, "processes"), pid);
                prod_service = js(proc, "serviceName");
            }
        }
        if (srv && prod)
            break;
        usleep(300000);
    }
    if (!tap_check(srv && prod, "%s: Jaeger has the order's trace with CreateOrder SERVER and a PRODUCER span "
                   "'send order-events'", what)) {
        json_decref(t);
        return;
    }
    const char *srv_id = js(srv, "spanID");
    const char *prod_id = js(prod, "spanID");
    tap_check(strcmp(prod_service, "order-svc") == 0, "%s: the PRODUCER span's service.name is order-svc (%s)",
              what, prod_service);
    /* OTLP carries both a parent and a link to CreateOrder (test_order reads
     * them from the ring); Jaeger's OTLP translator folds a link to the
     * parent into the parent reference, typed FOLLOWS_FROM, which is what
     * an asynchronous send is in Jaeger's terms. */
    if (!tap_check(json_array_size(json_object_get(prod, "references")) == 1 &&
                       has_ref(prod, "FOLLOWS_FROM", trace, srv_id),
                   "%s: the PRODUCER span's one reference is FOLLOWS_FROM CreateOrder in the order's trace "
                   "(parent + link to it)", what)) {
        char *refs = json_dumps(json_object_get(prod, "references"), JSON_COMPACT);
        tap_diag("CreateOrder %s, references %s", srv_id, refs ? refs : "-");
        free(refs);
    }
    char b1[128], b2[128], b3[128], b4[128], b5[64], b6[64];
    const char *sys = tag_str(prod, "messaging.system", b1, sizeof b1);
    const char *dest = tag_str(prod, "messaging.destination.name", b2, sizeof b2);
    const char *op = tag_str(prod, "messaging.operation.type", b3, sizeof b3);
    const char *key = tag_str(prod, "messaging.kafka.message.key", b4, sizeof b4);
    const char *part = tag_str(prod, "messaging.destination.partition.id", b5, sizeof b5);
    const char *off = tag_str(prod, "messaging.kafka.offset", b6, sizeof b6);
    tap_check(sys && strcmp(sys, "kafka") == 0 && dest && strcmp(dest, "order-events") == 0 && op &&
                  strcmp(op, "send") == 0 && key && strcmp(key, id) == 0,
              "%s: messaging.system=%s, destination.name=%s, operation.type=%s, message.key=%s", what,
              D(sys), D(dest), D(op), D(key));
    const rec_t *r = NULL;
    recs_for(id, &r);
    char po[64];
    if (r)
        snprintf(po, sizeof po, "%d/%lld", r->partition, r->offset);
    char got[160];
    snprintf(got, sizeof got, "%s/%s", D(part), D(off));
    tap_check(r && strcmp(got, po) == 0, "%s: the span's partition/offset %s are the record's", what, got);
    tap_check(strlen(tp) == 55 && strncmp(tp + 36, prod_id, 16) == 0,
              "%s: the record's traceparent %s names the PRODUCER span %s as parent", what, tp, prod_id);
    json_decref(t);
}

/* ------------------------------------------------------------ main */

static const char *const *cfg_args(void)
{
    static const char *a[3];
    a[0] = "--config";
    a[1] = g_cfg;
    a[2] = NULL;
    return a;
}

static int wait_unsent(long long want, int ms)
{
    uint64_t end = loop_now_ns() + (uint64_t)ms * MS;
    long long n;
    while ((n = sql_int("SELECT count(*) FROM outbox WHERE sent_at IS NULL")) != want && loop_now_ns() < end)
        usleep(100000);
    return n == want ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc < 13) {
        fprintf(stderr, "usage: %s PG_HARNESS SHOP_MIGRATE MIGRATIONS SEED KAFKA_KRAFT_SH INVENTORY_SVC "
                        "PAYMENT_SVC PAYMENT_SIM ORDER_SVC SHOP_EXPORTER JAEGER JAEGER_CONFIG\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    g_harness = argv[1];
    g_kraft = argv[5];
    p_inv.exe = argv[6];
    p_pay.exe = argv[7];
    p_sim.exe = argv[8];
    p_ord.exe = argv[9];
    const char *exporter = argv[10], *jaeger = argv[11], *jaeger_cfg = argv[12];

    /* <repo>/tools/kafka/kafka-kraft.sh -> <repo>/var/kafka/libs, as the script looks. */
    if (getenv("KAFKA_HOME"))
        snprintf(g_libs, sizeof g_libs, "%s/libs", getenv("KAFKA_HOME"));
    else
        snprintf(g_libs, sizeof g_libs, "%.*s/../../var/kafka/libs",
                 (int)(strrchr(g_kraft, '/') ? strrchr(g_kraft, '/') - g_kraft : 1), g_kraft);
    char probe[800];
    snprintf(probe, sizeof probe, "ls %s/kafka_2.13-*.jar >/dev/null 2>&1 && command -v java >/dev/null", g_libs);
    if (system(probe) != 0) {
        printf("1..0 # SKIP no Kafka jars or no java: run tools/kafka/fetch-kafka.sh\n");
        return 77;
    }
    if (access(jaeger, X_OK) != 0 || access(p_inv.exe, X_OK) != 0 || access(p_pay.exe, X_OK) != 0) {
        printf("1..0 # SKIP Jaeger (tools/go/build.sh) or a service is not built\n");
        return 77;
    }
    alarm(580); /* a hung broker must not hang the suite past meson's timeout (600 s) */
    /* A broker (re)start took 40 s on a loaded 2-CPU machine: room for that. */
    setenv("KAFKA_START_TIMEOUT", "150", 0);
    snprintf(g_dir, sizeof g_dir, "/tmp/shop-order-kraft-XXXXXX");
    if (!mkdtemp(g_dir) || chmod(g_dir, 0711) != 0)
        return 1;
    atexit(cleanup);

    /* PostgreSQL, schema, seed, test products. */
    char conninfo[256];
    if (!ot_start_db(g_harness, g_dir, argv[2], argv[3], argv[4], conninfo, sizeof conninfo))
        return tap_done();
    sql_exec("INSERT INTO products (id, name, price_cents, stock) VALUES "
             "('tk-main', 'main', 500, 1000), ('tk-down', 'down', 700, 100)");
    sql_exec("CREATE TABLE test_initial AS SELECT id, stock FROM products WHERE id LIKE 'tk-%'");

    /* Apache Kafka, KRaft mode. */
    snprintf(g_kdir, sizeof g_kdir, "%s/kafka", g_dir);
    setenv("KAFKA_EXTRA_PROPERTIES", "log.message.timestamp.type=LogAppendTime", 1);
    uint64_t t0 = loop_now_ns();
    int krc = kraft("start");
    char bpath[400];
    snprintf(bpath, sizeof bpath, "%s/bootstrap", g_kdir);
    FILE *bf = fopen(bpath, "r");
    if (bf) {
        if (!fgets(g_bootstrap, sizeof g_bootstrap, bf))
            g_bootstrap[0] = '\0';
        fclose(bf);
    }
    g_bootstrap[strcspn(g_bootstrap, "\n")] = '\0';
    if (!tap_check(krc == 0 && g_bootstrap[0], "Apache Kafka (KRaft) started at %s in %.1f s", g_bootstrap,
                   (double)(loop_now_ns() - t0) / 1e9))
        return tap_done();
    int bport = atoi(strrchr(g_bootstrap, ':') + 1);
    tap_check(bport >= 20000 && bport < 32768, "the broker's port %d is below the ephemeral range", bport);

    /* Jaeger v2: OTLP in, query API out. */
    int j_otlp = free_port(), j_http = free_port(), j_qgrpc = free_port();
    g_jaeger_query = free_port();
    char e1[64], e2[64], e3[64], e4[64];
    snprintf(e1, sizeof e1, "JAEGER_OTLP_GRPC=127.0.0.1:%d", j_otlp);
    snprintf(e2, sizeof e2, "JAEGER_OTLP_HTTP=127.0.0.1:%d", j_http);
    snprintf(e3, sizeof e3, "JAEGER_QUERY_HTTP=127.0.0.1:%d", g_jaeger_query);
    snprintf(e4, sizeof e4, "JAEGER_QUERY_GRPC=127.0.0.1:%d", j_qgrpc);
    const char *jenv[] = {e1, e2, e3, e4, "JAEGER_LOG_LEVEL=warn", NULL};
    const char *jargv[] = {jaeger, "--config", jaeger_cfg, NULL};
    g_jaeger_pid = spawn_log("jaeger", jargv, jenv);
    json_t *svcs = NULL;
    for (int i = 0; i < 600 && !(svcs = http_json("/api/services")); i++)
        usleep(100000);
    if (!tap_check(svcs != NULL, "Jaeger's query API answers on %d", g_jaeger_query))
        return tap_done();
    json_decref(svcs);

    /* One config for everything. */
    int inv_port = free_port(), pay_port = free_port(), sim_port = free_port(), ord_port = free_port();
    snprintf(g_ring, sizeof g_ring, "/shop-test-order-kraft-%d", (int)getpid());
    snprintf(g_cfg, sizeof g_cfg, "%s/shop.conf", g_dir);
    char pgport[16] = "5432";
    const char *hp = strstr(conninfo, "port=");
    if (hp)
        snprintf(pgport, sizeof pgport, "%d", atoi(hp + 5));
    FILE *c = fopen(g_cfg, "w");
    fprintf(c,
            "[ring]\nname = %s\nlanes = 16\nlane_size = 1M\n"
            "[exporter]\nendpoint = http://127.0.0.1:%d\nschedule_delay = 200\nmetrics_address = 127.0.0.1\n"
            "metrics_port = 0\nring_attach = create\n"
            "[postgres]\nhost = 127.0.0.1\nport = %s\ndbname = postgres\nuser = postgres\npool_size = 4\n"
            "[kafka]\nbootstrap_servers = %s\nlinger = 1\nreconnect_backoff_max = 200\n"
            "[payment_sim]\nport = %d\nlatency_ms = 2\njitter_ms = 0\ndecline_rate = 0\nerror_rate = 0\n"
            "[inventory_svc]\naddress = 127.0.0.1\nport = %d\n"
            "[payment_svc]\naddress = 127.0.0.1\nport = %d\nprocessor_port = %d\nprocessor_timeout = 2000\n"
            "[order_svc]\naddress = 127.0.0.1\nport = %d\ninventory_address = 127.0.0.1:%d\n"
            "payment_address = 127.0.0.1:%d\nstock_timeout = 3000\npayment_timeout = 5000\n"
            "recovery_age = 60000\nrelay_poll_interval = 50\nrelay_batch = 50\n"
            "[service]\nshutdown_grace = 2000\n",
            g_ring, j_otlp, pgport, g_bootstrap, sim_port, inv_port, pay_port, sim_port, ord_port, inv_port,
            pay_port);
    fclose(c);

    const char *xargv[] = {exporter, "--config", g_cfg, NULL};
    g_exporter_pid = spawn_log("exporter", xargv, NULL);
    if (!tap_check(wait_log("exporter", "as its consumer", 15000) == 0, "shop-exporter drains ring %s into Jaeger",
                   g_ring))
        return tap_done();
    if (!tap_check(proc_start(&p_sim, cfg_args(), "listening on") == 0, "shop-payment-sim: %s", p_sim.line) ||
        !tap_check(proc_start(&p_inv, cfg_args(), "listening on") == 0, "inventory-svc: %s", p_inv.line) ||
        !tap_check(proc_start(&p_pay, cfg_args(), "listening on") == 0, "payment-svc: %s", p_pay.line) ||
        !tap_check(proc_start(&p_ord, cfg_args(), "listening on") == 0, "order-svc: %s", p_ord.line))
        return tap_done();
    char err[256] = "";
    if (loop_create(&g_loop, NULL) != 0 ||
        grpc_channel_new(g_loop, "127.0.0.1", p_ord.port, NULL, &g_ch, err, sizeof err) != 0) {
        tap_check(0, "client channel: %s", err);
        return tap_done();
    }

    /* 1. Orders with the broker up. */
    static char tps[N_FIRST + N_DOWN + N_LONG][128], traces[N_FIRST + N_DOWN + N_LONG][40];
    res_t first[N_FIRST];
    for (int i = 0; i < N_FIRST + N_DOWN + N_LONG; i++) {
        uint8_t tid[16], sid[8];
        trace_id_new(tid);
        trace_id_new_span(sid);
        trace_id_hex(tid, 16, traces[i]);
        char sh[20];
        trace_id_hex(sid, 8, sh);
        snprintf(tps[i], sizeof tps[i], "00-%.32s-%.16s-01", traces[i], sh);
    }
    for (int i = 0; i < N_FIRST; i++) {
        char u[16];
        snprintf(u, sizeof u, "user%d", 10 + i);
        start_create(u, "tk-main", 1 + i % 3, 500 * (1 + i % 3), NULL, tps[i], &first[i]);
    }
    run_pending(30000);
    int ok = 0;
    for (int i = 0; i < N_FIRST; i++)
        ok += first[i].status == GRPC_STATUS_OK && first[i].ostatus == SHOP__V1__ORDER_STATUS__ORDER_STATUS_COMPLETED;
    tap_check(ok == N_FIRST, "broker up: %d/%d orders complete (%s)", ok, N_FIRST, first[0].message);
    tap_check(wait_unsent(0, 30000) == 0 && sql_int("SELECT count(*) FROM outbox") == N_FIRST,
              "broker up: the relay marked all %d outbox rows sent", N_FIRST);
    int n = consume_all(N_FIRST);
    tap_check(n == N_FIRST, "console consumer reads %d records from order-events (want %d)", n, N_FIRST);
    int once = 0, tp_ok = 0, pay_ok = 0, after_ack = 0;
    for (int i = 0; i < N_FIRST; i++) {
        const rec_t *r = NULL;
        once += recs_for(first[i].id, &r) == 1;
        if (!r)
            continue;
        trace_context_t x;
        tp_ok += trace_w3c_traceparent_parse(r->tp, strlen(r->tp), &x) == 0 && strncmp(r->tp + 3, traces[i], 32) == 0;
        pay_ok += payload_matches(r);
        char q[256];
        snprintf(q, sizeof q,
                 "SELECT count(*) FROM outbox WHERE aggregate_id = '%s' AND sent_at IS NOT NULL AND "
                 "floor(extract(epoch FROM sent_at) * 1000) >= %lld",
                 first[i].id, r->ts);
        after_ack += sql_int(q) == 1;
    }
    tap_check(once == N_FIRST, "one record per completed order, key = the order id (%d/%d)", once, N_FIRST);
    tap_check(tp_ok == N_FIRST, "every record's traceparent header is valid and carries its order's trace id (%d/%d)",
              tp_ok, N_FIRST);
    tap_check(pay_ok == N_FIRST, "every payload: event_id, type order.completed, order_id, user_id, product_id, "
              "quantity, amount_cents (integer cents), status as in PostgreSQL (%d/%d)", pay_ok, N_FIRST);
    tap_check(after_ack == N_FIRST, "every row's sent_at is not before the broker appended the record (%d/%d)",
              after_ack, N_FIRST);
    check_invariants("broker up");

    /* 2. The broker down: orders complete, events wait in the outbox. */
    t0 = loop_now_ns();
    krc = kraft("stop");
    if (!tap_check(krc == 0, "broker stopped (%.1f s)", (double)(loop_now_ns() - t0) / 1e9))
        return tap_done();
    res_t down[N_DOWN];
    for (int i = 0; i < N_DOWN; i++) {
        char u[16];
        snprintf(u, sizeof u, "user%d", 30 + i);
        start_create(u, "tk-down", 1, 700, NULL, tps[N_FIRST + i], &down[i]);
    }
    run_pending(30000);
    ok = 0;
    for (int i = 0; i < N_DOWN; i++)
        ok += down[i].status == GRPC_STATUS_OK && down[i].ostatus == SHOP__V1__ORDER_STATUS__ORDER_STATUS_COMPLETED;
    tap_check(ok == N_DOWN, "broker down: %d/%d orders still complete (OK, COMPLETED)", ok, N_DOWN);
    /* Later events of three of them: the relay must send them after their
     * order.completed, in outbox order, on the same partition. */
    for (int i = 0; i < N_LATER; i++)
        for (int k = 1; k <= 3; k++) {
            char q[1024];
            snprintf(q, sizeof q,
                     "INSERT INTO outbox (aggregate_id, event_type, key, payload, traceparent) VALUES "
                     "('%s', 'test.step%d', '%s', jsonb_build_object('event_id', '%s:test.step%d', 'type', "
                     "'test.step%d', 'order_id', '%s', 'seq', %d), '%s')",
                     down[i].id, k, down[i].id, down[i].id, k, k, down[i].id, k, tps[N_FIRST + i]);
            sql_exec(q);
        }
    usleep(2000000);
    tap_check(sql_int("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == N_DOWN + 3 * N_LATER,
              "broker down: after 2 s all %d rows (%d order.completed + %d later) wait unsent in the outbox",
              N_DOWN + 3 * N_LATER, N_DOWN, 3 * N_LATER);
    check_invariants("broker down");

    /* 3. The broker back. */
    t0 = loop_now_ns();
    krc = kraft("restart");
    if (!tap_check(krc == 0, "broker restarted on the same port and data (%.1f s)",
                   (double)(loop_now_ns() - t0) / 1e9))
        return tap_done();
    t0 = loop_now_ns();
    krc = wait_unsent(0, 60000);
    tap_check(krc == 0, "broker back: every waiting row was sent and marked (%.1f s after the restart)",
              (double)(loop_now_ns() - t0) / 1e9);
    int total = N_FIRST + N_DOWN + 3 * N_LATER;
    n = consume_all(total);
    tap_check(n == total, "console consumer reads %d records in all (want %d: none lost, none duplicated)", n, total);
    tap_check(sql_int("SELECT count(*) FROM outbox WHERE attempts <> 1") == 0,
              "every row was produced once and acknowledged on the first delivery (attempts = 1)");
    /* Each event exactly once, by payload.event_id. */
    int dup = 0;
    for (int i = 0; i < g_nrec; i++)
        for (int k = i + 1; k < g_nrec; k++) {
            json_t *a = json_loads(g_rec[i].value, 0, NULL), *b = json_loads(g_rec[k].value, 0, NULL);
            const char *ea = json_string_value(json_object_get(a, "event_id"));
            const char *eb = json_string_value(json_object_get(b, "event_id"));
            dup += ea && eb && strcmp(ea, eb) == 0;
            json_decref(a);
            json_decref(b);
        }
    tap_check(dup == 0, "no event_id appears twice (%d duplicates)", dup);
    int down_ok = 0, tp_down = 0;
    for (int i = 0; i < N_DOWN; i++) {
        const rec_t *r = NULL;
        int want = i < N_LATER ? 4 : 1;
        down_ok += recs_for(down[i].id, &r) == want && r && payload_matches(r);
        tp_down += r && strncmp(r->tp + 3, traces[N_FIRST + i], 32) == 0;
    }
    tap_check(down_ok == N_DOWN, "every order placed while the broker was down has its event once, payload right "
              "(%d/%d)", down_ok, N_DOWN);
    tap_check(tp_down == N_DOWN, "their traceparent headers carry their orders' trace ids (%d/%d)", tp_down, N_DOWN);
    int in_order = 0;
    for (int i = 0; i < N_LATER; i++) {
        /* The records of one key, by offset, must read completed, step1..3. */
        const rec_t *seq[4];
        int ns = 0, part = -1, same_part = 1;
        for (int k = 0; k < g_nrec && ns < 4; k++)
            if (strcmp(g_rec[k].key, down[i].id) == 0) {
                same_part &= part < 0 || g_rec[k].partition == part;
                part = g_rec[k].partition;
                seq[ns++] = &g_rec[k];
            }
        int good = ns == 4 && same_part;
        for (int a = 0; good && a < 4; a++)
            for (int b = a + 1; b < 4; b++)
                if (seq[b]->offset < seq[a]->offset) {
                    const rec_t *t = seq[a];
                    seq[a] = seq[b];
                    seq[b] = t;
                }
        static const char *const want[] = {"order.completed", "test.step1", "test.step2", "test.step3"};
        for (int a = 0; good && a < 4; a++) {
            json_t *j = json_loads(seq[a]->value, 0, NULL);
            good = strcmp(js(j, "type"), want[a]) == 0;
            json_decref(j);
        }
        in_order += good;
    }
    tap_check(in_order == N_LATER, "per order, its 4 events are on one partition in outbox order (%d/%d orders)",
              in_order, N_LATER);
    check_invariants("broker back");

    /* 4. The PRODUCER spans, through shop-exporter, in Jaeger. */
    const rec_t *r0 = NULL, *rd = NULL;
    recs_for(first[0].id, &r0);
    recs_for(down[N_DOWN - 1].id, &rd);
    check_producer_span("order placed with the broker up", traces[0], first[0].id, r0 ? r0->tp : "");
    check_producer_span("order placed with the broker down", traces[N_FIRST + N_DOWN - 1], down[N_DOWN - 1].id,
                        rd ? rd->tp : "");

    /* Every service of the stack reports under its own service.name. */
    json_t *sv = http_json("/api/services");
    char names[512] = "";
    int have = 0;
    size_t ix;
    json_t *v;
    json_array_foreach(json_object_get(sv, "data"), ix, v)
    {
        const char *nm = json_string_value(v);
        if (!nm)
            continue;
        snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", names[0] ? " " : "", nm);
        have += strcmp(nm, "order-svc") == 0 || strcmp(nm, "inventory-svc") == 0 || strcmp(nm, "payment-svc") == 0;
    }
    json_decref(sv);
    tap_check(have == 3, "Jaeger's services include order-svc, inventory-svc and payment-svc (%s)", names);

    /* 5. An outage longer than the producer's delivery timeout: the
     * messages fail (_MSG_TIMED_OUT), their rows stay unsent with attempts
     * and last_error, the relay produces them again, and after the broker
     * is back each event is there once and an order's events in order. */
    krc = proc_stop(&p_ord, SIGTERM);
    tap_check(krc == 0, "order-svc exits 0 on SIGTERM (%d)", krc);
    grpc_channel_free(g_ch);
    g_ch = NULL;
    setenv("SHOP_KAFKA_DELIVERY_TIMEOUT", "1500", 1);
    if (!tap_check(proc_start(&p_ord, cfg_args(), "listening on") == 0 &&
                       grpc_channel_new(g_loop, "127.0.0.1", p_ord.port, NULL, &g_ch, err, sizeof err) == 0,
                   "order-svc again with [kafka] delivery_timeout = 1500 ms: %s", p_ord.line))
        return tap_done();
    krc = kraft("stop");
    tap_check(krc == 0, "broker stopped again");
    res_t lng[N_LONG];
    for (int i = 0; i < N_LONG; i++) {
        char u[16];
        snprintf(u, sizeof u, "user%d", 50 + i);
        start_create(u, "tk-down", 2, 1400, NULL, tps[N_FIRST + N_DOWN + i], &lng[i]);
    }
    run_pending(30000);
    ok = 0;
    for (int i = 0; i < N_LONG; i++)
        ok += lng[i].status == GRPC_STATUS_OK && lng[i].ostatus == SHOP__V1__ORDER_STATUS__ORDER_STATUS_COMPLETED;
    tap_check(ok == N_LONG, "long outage: %d/%d orders complete", ok, N_LONG);
    for (int i = 0; i < N_LONG_LATER; i++)
        for (int k = 1; k <= 2; k++) {
            char q[1024];
            snprintf(q, sizeof q,
                     "INSERT INTO outbox (aggregate_id, event_type, key, payload, traceparent) VALUES "
                     "('%s', 'test.step%d', '%s', jsonb_build_object('event_id', '%s:test.step%d', 'type', "
                     "'test.step%d', 'order_id', '%s', 'seq', %d), '%s')",
                     lng[i].id, k, lng[i].id, lng[i].id, k, k, lng[i].id, k, tps[N_FIRST + N_DOWN + i]);
            sql_exec(q);
        }
    int nlong = N_LONG + 2 * N_LONG_LATER;
    uint64_t until = loop_now_ns() + 20000 * MS;
    long long timed_out = 0;
    while (loop_now_ns() < until &&
           (timed_out = sql_int("SELECT count(*) FROM outbox WHERE sent_at IS NULL AND attempts >= 2 AND "
                                "last_error LIKE '%MSG_TIMED_OUT%'")) < N_LONG)
        usleep(200000);
    tap_check(timed_out >= N_LONG,
              "long outage: the order.completed messages timed out, twice each (attempts >= 2, last_error "
              "_MSG_TIMED_OUT; %lld rows)", timed_out);
    tap_check(sql_int("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == nlong &&
                  sql_int("SELECT count(*) FROM outbox WHERE event_type LIKE 'test.%' AND sent_at IS NULL "
                          "AND attempts > 0") == 0,
              "long outage: all %d rows unsent; the later rows of an order not produced while its first fails",
              nlong);
    check_invariants("long outage");
    t0 = loop_now_ns();
    krc = kraft("restart");
    tap_check(krc == 0, "broker restarted (%.1f s)", (double)(loop_now_ns() - t0) / 1e9);
    t0 = loop_now_ns();
    krc = wait_unsent(0, 60000);
    tap_check(krc == 0, "broker back: every row sent and marked (%.1f s)", (double)(loop_now_ns() - t0) / 1e9);
    total += nlong;
    n = consume_all(total);
    tap_check(n == total, "console consumer reads %d records in all (want %d)", n, total);
    dup = 0;
    for (int a = 0; a < g_nrec; a++)
        for (int b = a + 1; b < g_nrec; b++) {
            json_t *ja = json_loads(g_rec[a].value, 0, NULL), *jb = json_loads(g_rec[b].value, 0, NULL);
            dup += strcmp(js(ja, "event_id"), js(jb, "event_id")) == 0;
            json_decref(ja);
            json_decref(jb);
        }
    tap_check(dup == 0, "after the long outage too, no event_id appears twice (%d)", dup);
    in_order = 0;
    for (int i = 0; i < N_LONG; i++) {
        int want = i < N_LONG_LATER ? 3 : 1, ns = 0, part = -1, good = 1;
        long long last = -1;
        static const char *const wt[] = {"order.completed", "test.step1", "test.step2"};
        /* g_rec is in the consumer's order: within a partition, by offset. */
        for (int k = 0; k < g_nrec; k++)
            if (strcmp(g_rec[k].key, lng[i].id) == 0) {
                json_t *j = json_loads(g_rec[k].value, 0, NULL);
                good &= ns < want && (part < 0 || g_rec[k].partition == part) && g_rec[k].offset > last &&
                        strcmp(js(j, "type"), wt[ns < 3 ? ns : 2]) == 0;
                json_decref(j);
                part = g_rec[k].partition;
                last = g_rec[k].offset;
                ns++;
            }
        in_order += good && ns == want;
    }
    tap_check(in_order == N_LONG, "long outage: every order's events once, in outbox order, one partition (%d/%d)",
              in_order, N_LONG);
    check_invariants("after the long outage");
    check_broker_log(total);

    /* 6. Shutdown. */
    tap_check(proc_stop(&p_ord, SIGTERM) == 0, "order-svc exits 0 on SIGTERM");
    tap_check(kraft("stop") == 0, "broker stopped");
    unsetenv("SHOP_KAFKA_DELIVERY_TIMEOUT");
    grpc_channel_free(g_ch);
    loop_destroy(g_loop);
    return tap_done();
}
