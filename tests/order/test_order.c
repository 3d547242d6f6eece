/*
 * tests/order/test_order.c - order-svc end to end: the saga, its failure
 * points, idempotency, concurrency, the outbox relay and the trace shape,
 * against real processes on free ports.
 *
 * Usage (meson passes these; suite integration):
 *   test_order PG_HARNESS SHOP_MIGRATE MIGRATIONS SEED KAFKA_MOCK INVENTORY_SVC
 *              PAYMENT_SVC PAYMENT_SIM ORDER_SVC
 *
 * Set-up: a private PostgreSQL (tests/db/pg-harness.sh), shop-migrate up +
 * seed, test products with known stock, shop-kafka-mock, shop-payment-sim
 * (declines and errors off; magic amounts 40201 = declined, 40801 = never
 * answered), inventory-svc, payment-svc and order-svc with one test config
 * and a private span ring that this process consumes.
 *
 * After every case the database invariants are checked by SQL: stock +
 * units sold = initial stock, one succeeded payment per completed order and
 * none for a failed one, every completed order has its outbox event, no
 * reduction without a completed order or a restore, no order left pending.
 */
#include <stdarg.h>

#include <librdkafka/rdkafka.h>

#include "order_test.h"
#include "ring.h"
#include "shop_proto.h"

/* ------------------------------------------------------------ Kafka */

typedef struct {
    char key[72];
    char tp[64];
    char value[1024];
} event_t;

static event_t g_ev[4096];
static int g_nev;
static rd_kafka_t *g_cons;

static int consumer_open(const char *bootstrap)
{
    char e[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, e, sizeof e) ||
        rd_kafka_conf_set(conf, "group.id", "test-order", e, sizeof e) ||
        rd_kafka_conf_set(conf, "enable.auto.commit", "false", e, sizeof e)) {
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    g_cons = rd_kafka_new(RD_KAFKA_CONSUMER, conf, e, sizeof e);
    if (!g_cons)
        return -1;
    rd_kafka_topic_partition_list_t *tp = rd_kafka_topic_partition_list_new(4);
    for (int p = 0; p < 4; p++)
        rd_kafka_topic_partition_list_add(tp, "order-events", p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(g_cons, tp);
    rd_kafka_topic_partition_list_destroy(tp);
    return 0;
}

/* Polls for ms, appending what arrives. */
static void consume(int ms)
{
    uint64_t end = loop_now_ns() + (uint64_t)ms * MS;
    while (loop_now_ns() < end) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(g_cons, 50);
        if (!m)
            continue;
        if (!m->err && g_nev < 4096) {
            event_t *e = &g_ev[g_nev++];
            snprintf(e->key, sizeof e->key, "%.*s", (int)m->key_len, (const char *)m->key);
            snprintf(e->value, sizeof e->value, "%.*s", (int)m->len, (const char *)m->payload);
            rd_kafka_headers_t *h = NULL;
            const void *v;
            size_t vl;
            e->tp[0] = '\0';
            if (!rd_kafka_message_headers(m, &h) && !rd_kafka_header_get_last(h, "traceparent", &v, &vl))
                snprintf(e->tp, sizeof e->tp, "%.*s", (int)vl, (const char *)v);
        }
        rd_kafka_message_destroy(m);
    }
}

static int events_for(const char *id)
{
    int n = 0;
    for (int i = 0; i < g_nev; i++)
        if (strcmp(g_ev[i].key, id) == 0)
            n++;
    return n;
}

/* ------------------------------------------------------------ spans */

typedef struct {
    char name[96];
    int kind, status;
    uint8_t trace[16], span[8], parent[8];
    uint64_t start;
    int nlinks;
    uint8_t link_trace[16], link_span[8];
} span_t;

static span_t g_sp[20000];
static int g_nsp;
static ring_t *g_rg;

static void spans_drain(void)
{
    ring_record_t recs[512];
    int n;
    while ((n = ring_consumer_peek(g_rg, recs, 512)) > 0) {
        for (int i = 0; i < n && g_nsp < 20000; i++) {
            span_record_t r;
            if (span_record_decode(recs[i].data, recs[i].len, &r) != 0)
                continue;
            span_t *s = &g_sp[g_nsp++];
            memset(s, 0, sizeof *s);
            snprintf(s->name, sizeof s->name, "%.*s", (int)r.name.len, r.name.p);
            s->kind = r.kind;
            s->status = r.status;
            memcpy(s->trace, r.trace_id, 16);
            memcpy(s->span, r.span_id, 8);
            memcpy(s->parent, r.parent_span_id, 8);
            s->start = r.start_ns;
            uint32_t off = 0;
            span_record_item_t it;
            while (span_record_next(r.items, r.items_len, &off, &it) == 1)
                if (it.tag == SPAN_ITEM_LINK) {
                    s->nlinks++;
                    memcpy(s->link_trace, it.trace_id, 16);
                    memcpy(s->link_span, it.span_id, 8);
                }
        }
        ring_consumer_release(g_rg, (uint64_t)n, (uint64_t)n, RING_DROP_SHUTDOWN);
    }
}

static const span_t *span_find(const uint8_t trace[16], const uint8_t *parent, const char *name, int kind)
{
    for (int i = 0; i < g_nsp; i++) {
        const span_t *s = &g_sp[i];
        if (memcmp(s->trace, trace, 16) == 0 && strcmp(s->name, name) == 0 && s->kind == kind &&
            (parent == NULL || memcmp(s->parent, parent, 8) == 0))
            return s;
    }
    return NULL;
}

/* ------------------------------------------------------------ health, commands */

typedef struct {
    int done, result;
} health_t;

static void on_health(const grpc_result_t *r, void *arg)
{
    health_t *h = arg;
    h->done = 1;
    h->result = -(int)r->status;
    if (r->status == GRPC_STATUS_OK) {
        Grpc__Health__V1__HealthCheckResponse *m =
            grpc__health__v1__health_check_response__unpack(NULL, r->response_len, r->response);
        h->result = m ? (int)m->status : -100;
        if (m)
            grpc__health__v1__health_check_response__free_unpacked(m, NULL);
    }
    if (--g_pending == 0)
        loop_stop(g_loop);
}

/* grpc.health.v1.Health/Check on 127.0.0.1:port: the ServingStatus (1 =
 * SERVING), or minus the gRPC status of a failed call. */
static int health(uint16_t port, const char *service)
{
    grpc_channel_t *ch;
    char err[256] = "";
    if (grpc_channel_new(g_loop, "127.0.0.1", port, NULL, &ch, err, sizeof err) != 0)
        return -1000;
    Grpc__Health__V1__HealthCheckRequest q = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    q.service = (char *)(uintptr_t)service;
    uint8_t buf[256];
    size_t n = grpc__health__v1__health_check_request__pack(&q, buf);
    health_t h = {0, -1000};
    g_pending++;
    if (grpc_call_unary(ch, "/grpc.health.v1.Health/Check", buf, n, false, 5000 * MS, NULL, 0, on_health, &h) != 0)
        g_pending--;
    run_pending(6000);
    grpc_channel_free(ch);
    return h.result;
}

/* Runs a shell command, its stdout and stderr into out; returns its exit status. */
__attribute__((format(printf, 3, 4))) static int run_out(char *out, size_t cap, const char *fmt, ...)
{
    char cmd[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char full[1300];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    out[0] = '\0';
    FILE *f = popen(full, "r");
    if (!f)
        return -1;
    size_t n = fread(out, 1, cap - 1, f);
    out[n] = '\0';
    int st = pclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int count_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    int n = 0, ch;
    if (!f)
        return -1;
    while ((ch = fgetc(f)) != EOF)
        n += ch == '\n';
    fclose(f);
    return n;
}

/* ------------------------------------------------------------ main */

static proc_t p_mock = {.name = "kafka-mock"}, p_sim = {.name = "payment-sim"},
              p_inv = {.name = "inventory-svc"}, p_pay = {.name = "payment-svc"},
              p_ord = {.name = "order-svc"};
static const char *g_harness;

static void cleanup(void)
{
    proc_t *all[] = {&p_ord, &p_pay, &p_inv, &p_sim, &p_mock};
    for (int i = 0; i < 5; i++)
        if (all[i]->pid > 0)
            proc_stop(all[i], SIGKILL);
    if (g_db)
        PQfinish(g_db);
    if (g_harness && g_dir[0]) {
        char pg[300], cmd[800];
        snprintf(pg, sizeof pg, "%s/pg", g_dir);
        snprintf(cmd, sizeof cmd, "'%s' stop '%s' >/dev/null 2>&1", g_harness, pg);
        if (system(cmd) != 0)
            tap_diag("pg-harness stop failed");
        if (getenv("TEST_ORDER_KEEP") == NULL) {
            snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
            if (system(cmd) != 0)
                tap_diag("rm failed");
        }
    }
    if (g_ring[0])
        ring_unlink(g_ring);
}

static const char *const *cfg_args(void)
{
    static const char *a[3];
    a[0] = "--config";
    a[1] = g_cfg;
    a[2] = NULL;
    return a;
}

int main(int argc, char **argv)
{
    if (argc < 10) {
        fprintf(stderr, "usage: %s PG_HARNESS SHOP_MIGRATE MIGRATIONS SEED KAFKA_MOCK INVENTORY_SVC "
                        "PAYMENT_SVC PAYMENT_SIM ORDER_SVC\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    g_harness = argv[1];
    p_mock.exe = argv[5];
    p_inv.exe = argv[6];
    p_pay.exe = argv[7];
    p_sim.exe = argv[8];
    p_ord.exe = argv[9];
    if (access(p_pay.exe, X_OK) != 0 || access(p_inv.exe, X_OK) != 0) {
        printf("1..0 # SKIP inventory-svc or payment-svc not built\n");
        return 77;
    }
    snprintf(g_dir, sizeof g_dir, "/tmp/shop-order-test-XXXXXX");
    if (!mkdtemp(g_dir) || chmod(g_dir, 0711) != 0)
        return 1;
    atexit(cleanup);

    /* PostgreSQL, schema, seed, test products. */
    char conninfo[256];
    if (!ot_start_db(g_harness, g_dir, argv[2], argv[3], argv[4], conninfo, sizeof conninfo))
        return tap_done();
    /* Money is never floating point, in the schema either. */
    tap_check(sql_int("SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public' "
                      "AND data_type IN ('real', 'double precision', 'numeric', 'money')") == 0,
              "schema: no real, double precision, numeric or money column");
    tap_check(sql_int("SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public' "
                      "AND column_name LIKE '%\\_cents' AND data_type = 'bigint'") == 3 &&
                  sql_int("SELECT count(*) FROM information_schema.columns WHERE table_schema = "
                          "'public' AND column_name LIKE '%\\_cents'") == 3,
              "schema: the money columns (products.price_cents, orders.amount_cents, "
              "payments.amount_cents) are bigint cents");
    sql_exec("INSERT INTO products (id, name, price_cents, stock) VALUES "
             "('tp-main', 'main', 500, 1000), ('tp-one', 'one left', 500, 1), "
             "('tp-last', 'last five', 500, 5), ('tp-idem', 'idem', 500, 100), "
             "('tp-down', 'down', 500, 100), ('tp-kafka', 'kafka', 500, 100)");
    sql_exec("CREATE TABLE test_initial AS SELECT id, stock FROM products WHERE id LIKE 'tp-%'");
    /* A saga a crash interrupted: pending for an hour, stock not taken. */
    sql_exec("INSERT INTO test_initial VALUES ('tp-stale', 10)");
    sql_exec("INSERT INTO products (id, name, price_cents, stock) VALUES ('tp-stale', 'stale', 500, 10)");
    sql_exec("INSERT INTO orders (id, user_id, product_id, quantity, amount_cents, created_at, "
             "updated_at) VALUES ('ord_stale_1', 'user1', 'tp-stale', 2, 1000, now() - interval "
             "'1 hour', now() - interval '1 hour')");

    /* Kafka mock. */
    char bfile[320];
    snprintf(bfile, sizeof bfile, "%s/bootstrap", g_dir);
    const char *margs[] = {"--partitions", "4", "--bootstrap-file", bfile, NULL};
    if (!tap_check(proc_start(&p_mock, margs, ":") == 0, "shop-kafka-mock started: %s", p_mock.line))
        return tap_done();

    /* Config. */
    int inv_port = free_port(), pay_port = free_port();
    snprintf(g_ring, sizeof g_ring, "/shop-test-order-%d", (int)getpid());
    snprintf(g_cfg, sizeof g_cfg, "%s/shop.conf", g_dir);
    char host[64] = "127.0.0.1", port[16] = "";
    const char *hp = strstr(conninfo, "port=");
    if (hp)
        snprintf(port, sizeof port, "%d", atoi(hp + 5));
    FILE *c = fopen(g_cfg, "w");
    fprintf(c,
            "[ring]\nname = %s\nlanes = 16\nlane_size = 1M\n"
            "[postgres]\nhost = %s\nport = %s\ndbname = postgres\nuser = postgres\npool_size = 4\n"
            "[kafka]\nbootstrap_servers = %s\nlinger = 1\nreconnect_backoff_max = 200\n"
            "[payment_sim]\nport = 0\nlatency_ms = 2\njitter_ms = 0\ndecline_rate = 0\nerror_rate = 0\n"
            "[inventory_svc]\naddress = 127.0.0.1\nport = %d\n"
            "[payment_svc]\naddress = 127.0.0.1\nport = %d\nprocessor_timeout = 700\n"
            "[order_svc]\naddress = 127.0.0.1\nport = 0\ninventory_address = 127.0.0.1:%d\n"
            "payment_address = 127.0.0.1:%d\nstock_timeout = 1000\npayment_timeout = 1500\n"
            "recovery_age = 7000\nrelay_poll_interval = 50\nrelay_batch = 50\n"
            "[service]\nshutdown_grace = 2000\n",
            g_ring, host, port, p_mock.line, inv_port, pay_port, inv_port, pay_port);
    long cfg_len = ftell(c);
    fclose(c);

    /* The ring first, so this process consumes what every service writes. */
    ring_geometry_t geo = {.lanes = 16, .max_record = 16384, .lane_size = 1u << 20};
    char err[256] = "";
    if (!tap_check(ring_open(g_ring, &geo, true, &g_rg, err, sizeof err) == 0 &&
                       ring_consumer_open(g_rg, err, sizeof err) == 0,
                   "private span ring %s open as consumer", g_ring))
        return tap_done();

    if (!tap_check(proc_start(&p_sim, (const char *[]){"--config", g_cfg, NULL}, "listening on") == 0,
                   "shop-payment-sim: %s", p_sim.line))
        return tap_done();
    char simport[16];
    snprintf(simport, sizeof simport, "%u", p_sim.port);
    setenv("SHOP_PAYMENT_SVC_PROCESSOR_PORT", simport, 1);
    if (!tap_check(proc_start(&p_inv, cfg_args(), "listening on") == 0, "inventory-svc: %s", p_inv.line) ||
        !tap_check(proc_start(&p_pay, cfg_args(), "listening on") == 0, "payment-svc: %s", p_pay.line) ||
        !tap_check(proc_start(&p_ord, cfg_args(), "listening on") == 0, "order-svc: %s", p_ord.line))
        return tap_done();

    if (loop_create(&g_loop, NULL) != 0 ||
        grpc_channel_new(g_loop, "127.0.0.1", p_ord.port, NULL, &g_ch, err, sizeof err) != 0) {
        tap_check(0, "client channel: %s", err);
        return tap_done();
    }
    if (!tap_check(consumer_open(p_mock.line) == 0, "Kafka consumer on order-events"))
        return tap_done();

    /* 0. Health and --check-config of the services the saga calls. */
    const proc_t *hs[] = {&p_inv, &p_pay, &p_ord};
    const char *hnames[] = {"shop.v1.InventoryService", "shop.v1.PaymentService", "shop.v1.OrderService"};
    for (int i = 0; i < 3; i++) {
        /* "listening on" comes before the PostgreSQL pool connects; until
         * it has, the service answers NOT_SERVING, as a readiness probe
         * should see it. */
        int whole = health(hs[i]->port, "");
        for (int t = 0; t < 100 && whole == 2; t++) {
            usleep(50000);
            whole = health(hs[i]->port, "");
        }
        int own = health(hs[i]->port, hnames[i]), other = health(hs[i]->port, "shop.v1.NoSuchService");
        tap_check(whole == 1 && own == 1 && other == -GRPC_STATUS_NOT_FOUND,
                  "%s grpc.health.v1.Health/Check: SERVING for \"\" and %s, NOT_FOUND for an unknown "
                  "service (%d %d %d)", hs[i]->name, hnames[i], whole, own, other);
    }
    char out[512];
    tap_check(run_out(out, sizeof out, "'%s' --config '%s' --check-config", p_pay.exe, g_cfg) == 0 &&
                  strcmp(out, "ok\n") == 0,
              "payment-svc --check-config on the test config: ok, exit 0");
    tap_check(run_out(out, sizeof out, "'%s' --config '%s' --check-config", p_ord.exe, g_cfg) == 0 &&
                  strcmp(out, "ok\n") == 0,
              "order-svc --check-config on the test config: ok, exit 0");
    int rc = run_out(out, sizeof out, "SHOP_ORDER_SVC_RECOVERY_AGE=2000 '%s' --config '%s' --check-config",
                     p_ord.exe, g_cfg);
    tap_check(rc == 2 && strstr(out, "environment SHOP_ORDER_SVC_RECOVERY_AGE") &&
                  strstr(out, "[order_svc] recovery_age = 2000"),
              "order-svc --check-config: recovery_age below the longest saga -> exit 2 naming the variable "
              "and key (%d: %s)", rc, out);
    rc = run_out(out, sizeof out, "SHOP_ORDER_SVC_PORT=abc '%s' --config '%s' --check-config", p_ord.exe, g_cfg);
    tap_check(rc == 2 && strstr(out, "SHOP_ORDER_SVC_PORT") && strstr(out, "port"),
              "order-svc --check-config: a bad environment value -> exit 2 naming it (%s)", out);
    FILE *bad = fopen(g_cfg, "a");
    if (bad) {
        fprintf(bad, "[order_svc]\ninventory_address = inventory.local:9092\n"
                     "[payment_svc]\nprocessor_address = sim.local\n");
        fclose(bad);
    }
    char badline[64];
    snprintf(badline, sizeof badline, "shop.conf:%d:", count_lines(g_cfg) - 2);
    rc = run_out(out, sizeof out, "'%s' --config '%s' --check-config", p_ord.exe, g_cfg);
    tap_check(rc == 2 && strstr(out, badline) && strstr(out, "[order_svc] inventory_address = inventory.local:9092"),
              "order-svc --check-config: a host name for inventory_address -> exit 2, %s key named (%s)",
              badline, out);
    rc = run_out(out, sizeof out, "'%s' --config '%s' --check-config", p_pay.exe, g_cfg);
    tap_check(rc == 2 && strstr(out, "[payment_svc] processor_address = sim.local"),
              "payment-svc --check-config: a host name for processor_address -> exit 2 naming the key (%s)", out);
    if (truncate(g_cfg, cfg_len) != 0)
        tap_diag("truncate %s failed", g_cfg);

    /* 1. Validation. */
    res_t r = create("user1", "tp-main", 0, 1000, NULL);
    tap_check(r.status == GRPC_STATUS_INVALID_ARGUMENT && strstr(r.message, "quantity"),
              "quantity 0 -> INVALID_ARGUMENT naming quantity (%s: %s)", grpc_status_name(r.status), r.message);
    r = create("user1", "tp-main", 1, 0, NULL);
    tap_check(r.status == GRPC_STATUS_INVALID_ARGUMENT && strstr(r.message, "amount_cents"),
              "amount 0 -> INVALID_ARGUMENT naming amount_cents (%s)", r.message);
    r = create("", "tp-main", 1, 100, NULL);
    tap_check(r.status == GRPC_STATUS_INVALID_ARGUMENT && strstr(r.message, "user_id"),
              "empty user_id -> INVALID_ARGUMENT naming user_id (%s)", r.message);

    /* 2. Happy path, with a known trace id for the span checks. */
    const char *tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    res_t happy;
    start_create("user1", "tp-main", 2, 1000, NULL, tp, &happy);
    run_pending(15000);
    tap_check(happy.status == GRPC_STATUS_OK && happy.ostatus == SHOP__V1__ORDER_STATUS__ORDER_STATUS_COMPLETED,
              "happy path: OK, order %s completed (%s %s)", happy.id, grpc_status_name(happy.status), happy.message);
    r = get_order(happy.id);
    tap_check(r.status == GRPC_STATUS_OK && strcmp(r.id, happy.id) == 0 &&
                  r.ostatus == SHOP__V1__ORDER_STATUS__ORDER_STATUS_COMPLETED,
              "GetOrder returns the completed order");
    r = get_order("ord_nope");
    tap_check(r.status == GRPC_STATUS_NOT_FOUND, "GetOrder of an unknown id -> NOT_FOUND");
    tap_check(sql_int("SELECT stock FROM products WHERE id = 'tp-main'") == 998, "happy path: stock 1000 -> 998");
    check_invariants("happy path");

    /* 3. Out of stock (CheckStock refuses): no order is written. */
    long long before = sql_int("SELECT count(*) FROM orders");
    r = create("user2", "tp-one", 3, 1500, NULL);
    tap_check(r.status == GRPC_STATUS_FAILED_PRECONDITION && strstr(r.message, "insufficient_stock"),
              "out of stock -> FAILED_PRECONDITION insufficient_stock (%s)", r.message);
    tap_check(sql_int("SELECT count(*) FROM orders") == before, "out of stock: no order row written");
    r = create("user2", "tp-nope", 1, 100, NULL);
    tap_check(r.status == GRPC_STATUS_NOT_FOUND, "unknown product -> NOT_FOUND (%s)", r.message);
    check_invariants("out of stock");

    /* 4. Payment declined (magic amount 40201). */
    r = create("user3", "tp-main", 1, 40201, NULL);
    tap_check(r.status == GRPC_STATUS_FAILED_PRECONDITION && strstr(r.message, "payment_declined"),
              "declined -> FAILED_PRECONDITION payment_declined (%s)", r.message);
    tap_check(sql_int("SELECT count(*) FROM orders WHERE user_id = 'user3' AND status = 'failed' AND "
                      "failure_reason = 'payment_declined'") == 1,
              "declined: order failed with reason payment_declined");
    tap_check(sql_int("SELECT count(*) FROM stock_movements m JOIN orders o ON o.id = m.order_id "
                      "WHERE o.user_id = 'user3' AND m.kind = 'restore'") == 1,
              "declined: RestoreStock compensated the reduction");
    check_invariants("payment declined");

    /* 5. Payment timeout (40801: the processor never answers). */
    r = create("user4", "tp-main", 1, 40801, NULL);
    tap_check(r.status == GRPC_STATUS_ABORTED && strstr(r.message, "payment_timeout"),
              "payment timeout -> ABORTED payment_timeout (%s: %s)", grpc_status_name(r.status), r.message);
    tap_check(sql_int("SELECT count(*) FROM orders WHERE user_id = 'user4' AND status = 'failed' AND "
                      "failure_reason = 'payment_timeout'") == 1,
              "payment timeout: order failed with reason payment_timeout");
    check_invariants("payment timeout");

    /* 6. Idempotency: one key sent 20 times at once -> one order. */
    res_t idem[20];
    for (int i = 0; i < 20; i++)
        start_create("user5", "tp-idem", 1, 500, "key-20-at-once", NULL, &idem[i]);
    run_pending(20000);
    int ok = 0, replayed = 0, same = 1;
    for (int i = 0; i < 20; i++) {
        ok += idem[i].status == GRPC_STATUS_OK;
        replayed += idem[i].replayed;
        same &= strcmp(idem[i].id, idem[0].id) == 0;
    }
    tap_check(ok == 20 && same, "same key x20 at once: 20 OK answers naming one order (%d ok)", ok);
    tap_check(replayed == 19, "same key x20: 19 answers are replays (%d)", replayed);
    tap_check(sql_int("SELECT count(*) FROM orders WHERE user_id = 'user5'") == 1,
              "same key x20: exactly one order row");
    tap_check(sql_int("SELECT 100 - stock FROM products WHERE id = 'tp-idem'") == 1,
              "same key x20: stock reduced once");
    r = create("user5", "tp-idem", 2, 500, "key-20-at-once");
    tap_check(r.status == GRPC_STATUS_ALREADY_EXISTS, "same key, other body -> ALREADY_EXISTS (%s)", r.message);
    r = create("user5", "tp-idem", 1, 500, "key-20-at-once");
    tap_check(r.status == GRPC_STATUS_OK && r.replayed && strcmp(r.id, idem[0].id) == 0 &&
                  r.ostatus == SHOP__V1__ORDER_STATUS__ORDER_STATUS_COMPLETED,
              "later retry with the key replays the completed order");
    check_invariants("idempotency");

    /* 7. Concurrent orders for the last 5 units. */
    res_t last[12];
    for (int i = 0; i < 12; i++) {
        char u[16];
        snprintf(u, sizeof u, "user%d", 100 + i);
        start_create(u, "tp-last", 1, 500, NULL, NULL, &last[i]);
    }
    run_pending(20000);
    int won = 0, refused = 0;
    for (int i = 0; i < 12; i++) {
        won += last[i].status == GRPC_STATUS_OK;
        refused += last[i].status == GRPC_STATUS_FAILED_PRECONDITION;
    }
    tap_check(won == 5 && refused == 7, "12 buyers for the last 5 units: 5 succeed, 7 FAILED_PRECONDITION (%d/%d)",
              won, refused);
    tap_check(sql_int("SELECT stock FROM products WHERE id = 'tp-last'") == 0, "last units: stock 0, never below");
    check_invariants("last units");

    /* 8. ListOrders: newest first, paged. */
    for (int i = 0; i < 3; i++)
        create("user7", "tp-main", 1, 100 + i, NULL);
    list_res_t l1 = list_orders("user7", 2, "");
    list_res_t l2 = list_orders("user7", 2, l1.token);
    tap_check(l1.status == GRPC_STATUS_OK && l1.n == 2 && l1.token[0] && l2.n == 1 && !l2.token[0],
              "ListOrders pages 2 + 1 with a token, then none (%d, %d, %s)", l1.n, l2.n,
              grpc_status_name(l2.status));
    tap_check(sql_int("SELECT count(*) FROM orders WHERE user_id = 'user7'") == 3 &&
                  strcmp(l1.ids[0], l2.ids[0]) != 0,
              "ListOrders pages do not overlap");
    /* Newest first: the database's own order of user7's orders. */
    PGresult *nr = PQexec(g_db, "SELECT id FROM orders WHERE user_id = 'user7' ORDER BY created_at DESC, id DESC");
    int newest = PQntuples(nr) == 3 && l1.n == 2 && l2.n == 1;
    for (int i = 0; newest && i < 3; i++)
        newest = strcmp(PQgetvalue(nr, i, 0), i < 2 ? l1.ids[i] : l2.ids[0]) == 0;
    PQclear(nr);
    tap_check(newest, "ListOrders: newest first across the pages (created_at, id descending)");
    list_res_t lb = list_orders("user7", 2, "garbage");
    tap_check(lb.status == GRPC_STATUS_INVALID_ARGUMENT, "ListOrders with a bad token -> INVALID_ARGUMENT");

    /* 9. Crash recovery: the stale pending order was resumed at start-up. */
    tap_check(sql_int("SELECT count(*) FROM orders WHERE id = 'ord_stale_1' AND status = 'completed'") == 1,
              "start-up sweep resumed the stale pending order to completion");
    check_invariants("recovery");

    /* 10. A service down: inventory, then payment. */
    proc_stop(&p_inv, SIGTERM);
    r = create("user8", "tp-down", 1, 500, NULL);
    tap_check(r.status == GRPC_STATUS_UNAVAILABLE, "inventory-svc down -> UNAVAILABLE (%s)", r.message);
    check_invariants("inventory down");
    if (!tap_check(proc_start(&p_inv, cfg_args(), "listening on") == 0, "inventory-svc back"))
        return tap_done();
    proc_stop(&p_pay, SIGTERM);
    r = create_retry("user8", "tp-down", 1, 500);
    tap_check(r.status == GRPC_STATUS_UNAVAILABLE && strstr(r.message, "payment_unavailable"),
              "payment-svc down -> UNAVAILABLE payment_unavailable (%s)", r.message);
    tap_check(sql_int("SELECT stock FROM products WHERE id = 'tp-down'") == 100,
              "payment-svc down: stock restored");
    check_invariants("payment down");
    if (!tap_check(proc_start(&p_pay, cfg_args(), "listening on") == 0, "payment-svc back"))
        return tap_done();
    for (int i = 0; i < 40; i++) {
        r = create_retry("user8", "tp-down", 1, 500);
        if (!(r.status == GRPC_STATUS_UNAVAILABLE && strstr(r.message, "payment_unavailable")))
            break;
        usleep(200000);
    }
    tap_check(r.status == GRPC_STATUS_OK, "after restarts the saga completes again (%s)", r.message);

    /* 11. Kafka: one event per completed order, key, traceparent. */
    uint64_t until = loop_now_ns() + 10000 * MS;
    while (loop_now_ns() < until && sql_int("SELECT count(*) FROM outbox WHERE sent_at IS NULL") != 0)
        usleep(50000);
    tap_check(sql_int("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0, "relay: every outbox row marked sent");
    consume(1500);
    long long completed = sql_int("SELECT count(*) FROM orders WHERE status = 'completed'");
    tap_check(g_nev == completed, "one event per completed order (%d events, %lld completed)", g_nev, completed);
    PGresult *cr = PQexec(g_db, "SELECT id FROM orders WHERE status = 'completed'");
    int once = 1;
    for (int i = 0; i < PQntuples(cr); i++)
        once &= events_for(PQgetvalue(cr, i, 0)) == 1;
    PQclear(cr);
    tap_check(once, "every completed order's id is the key of exactly one event");
    int tpok = 1;
    for (int i = 0; i < g_nev; i++) {
        trace_context_t x;
        tpok &= trace_w3c_traceparent_parse(g_ev[i].tp, strlen(g_ev[i].tp), &x) == 0;
        tpok &= strstr(g_ev[i].value, g_ev[i].key) != NULL;
    }
    tap_check(tpok && g_nev > 0, "each event has a valid traceparent header and its order id in the value");

    /* 12. Kafka down while orders complete. */
    char ack[256];
    kill(p_mock.pid, SIGUSR1);
    proc_wait_line(&p_mock, "");
    snprintf(ack, sizeof ack, "%s", p_mock.line);
    res_t down[6];
    for (int i = 0; i < 6; i++) {
        char u[16];
        snprintf(u, sizeof u, "user%d", 200 + i);
        start_create(u, "tp-kafka", 1, 500, NULL, NULL, &down[i]);
    }
    run_pending(15000);
    int dok = 0;
    for (int i = 0; i < 6; i++)
        dok += down[i].status == GRPC_STATUS_OK;
    tap_check(dok == 6, "Kafka down (%s): orders still complete (%d/6)", ack, dok);
    usleep(800000);
    tap_check(sql_int("SELECT count(*) FROM outbox o JOIN orders d ON d.id = o.aggregate_id WHERE "
                      "d.product_id = 'tp-kafka' AND o.sent_at IS NULL") == 6,
              "Kafka down: their events wait in the outbox, unsent");
    check_invariants("Kafka down");
    int before_ev = g_nev;
    kill(p_mock.pid, SIGUSR2);
    proc_wait_line(&p_mock, "");
    until = loop_now_ns() + 20000 * MS;
    while (loop_now_ns() < until && sql_int("SELECT count(*) FROM outbox WHERE sent_at IS NULL") != 0)
        usleep(100000);
    tap_check(sql_int("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0,
              "Kafka back: every waiting row was sent and marked");
    consume(2000);
    int got = 1;
    for (int i = 0; i < 6; i++)
        got &= events_for(down[i].id) == 1;
    tap_check(got && g_nev - before_ev == 6, "Kafka back: the 6 events arrived once each (%d new)", g_nev - before_ev);

    /* 13. Spans of the happy-path CreateOrder. */
    usleep(300000);
    spans_drain();
    uint8_t tid[16], psid[8];
    trace_id_unhex(tp + 3, 16, tid);
    trace_id_unhex(tp + 36, 8, psid);
    const span_t *srv = span_find(tid, psid, "shop.v1.OrderService/CreateOrder", TRACE_KIND_SERVER);
    tap_check(srv != NULL, "trace: order-svc SERVER span CreateOrder, child of the caller (%d spans read)", g_nsp);
    if (srv) {
        const char *steps[] = {"shop.v1.InventoryService/CheckStock", "INSERT orders",
                               "shop.v1.InventoryService/ReduceStock", "shop.v1.PaymentService/ProcessPayment",
                               "UPDATE orders + INSERT outbox"};
        uint64_t prev = 0;
        int inorder = 1;
        for (int i = 0; i < 5; i++) {
            const span_t *s = span_find(tid, srv->span, steps[i], TRACE_KIND_CLIENT);
            tap_check(s != NULL, "trace: CLIENT span '%s' under CreateOrder", steps[i]);
            if (s) {
                inorder &= s->start >= prev;
                prev = s->start;
            }
        }
        tap_check(inorder, "trace: the five steps start in saga order");
        const span_t *cs = span_find(tid, srv->span, "shop.v1.InventoryService/CheckStock", TRACE_KIND_CLIENT);
        tap_check(cs && span_find(tid, cs->span, "shop.v1.InventoryService/CheckStock", TRACE_KIND_SERVER),
                  "trace: inventory-svc SERVER span under the CheckStock CLIENT span");
        const span_t *pp = span_find(tid, srv->span, "shop.v1.PaymentService/ProcessPayment", TRACE_KIND_CLIENT);
        tap_check(pp && span_find(tid, pp->span, "shop.v1.PaymentService/ProcessPayment", TRACE_KIND_SERVER),
                  "trace: payment-svc SERVER span under the ProcessPayment CLIENT span");
        int linked = 0;
        const span_t *prod = NULL;
        for (int i = 0; i < g_nsp; i++)
            if (g_sp[i].kind == TRACE_KIND_PRODUCER && strcmp(g_sp[i].name, "send order-events") == 0 &&
                g_sp[i].nlinks == 1 && memcmp(g_sp[i].link_trace, tid, 16) == 0 &&
                memcmp(g_sp[i].link_span, srv->span, 8) == 0) {
                linked++;
                prod = &g_sp[i];
            }
        tap_check(linked == 1, "trace: one PRODUCER 'send order-events' span linked to CreateOrder (%d)", linked);
        tap_check(prod && memcmp(prod->trace, tid, 16) == 0 && memcmp(prod->parent, srv->span, 8) == 0,
                  "trace: the PRODUCER span is in the order's trace, a child of CreateOrder");
        /* The event's traceparent header is the PRODUCER span's context. */
        char want[TRACE_TRACEPARENT_LEN + 1] = "";
        if (prod) {
            trace_context_t pc = {.flags = 1};
            memcpy(pc.trace_id, prod->trace, 16);
            memcpy(pc.span_id, prod->span, 8);
            trace_w3c_traceparent_format(&pc, want);
        }
        int hdr = 0;
        for (int i = 0; i < g_nev; i++)
            if (strcmp(g_ev[i].key, happy.id) == 0 && strcmp(g_ev[i].tp, want) == 0)
                hdr++;
        tap_check(hdr == 1, "the happy order's event carries traceparent %s (the order's trace id, the "
                  "PRODUCER span's id)", want);
        tap_check(prod && span_find(tid, prod->span, "UPDATE outbox", TRACE_KIND_CLIENT),
                  "trace: the relay's 'UPDATE outbox' (marking the event sent) is under the PRODUCER span");
    }
    /* The relay polled every relay_poll_ms throughout the test: no poll
     * made a span (each would be a trace of its own in the store), and no
     * 'UPDATE outbox' span started a trace. */
    int polls = 0, root_updates = 0, updates = 0;
    static const uint8_t zero8[8];
    for (int i = 0; i < g_nsp; i++) {
        polls += strcmp(g_sp[i].name, "SELECT outbox") == 0;
        if (strcmp(g_sp[i].name, "UPDATE outbox") == 0) {
            updates++;
            root_updates += memcmp(g_sp[i].parent, zero8, 8) == 0;
        }
    }
    tap_check(polls == 0 && updates >= 6 && root_updates == 0,
              "trace: no span for the relay's polls (%d), every 'UPDATE outbox' inside an order's trace "
              "(%d of %d at the root)", polls, root_updates, updates);

    /* 14. Graceful stop with a CreateOrder in flight: payment-svc is
     * stopped (SIGSTOP), so the saga waits in ProcessPayment when SIGTERM
     * reaches order-svc; payment-svc resumes within [service]
     * shutdown_grace, the saga completes and is answered, then order-svc
     * exits 0. */
    kill(p_pay.pid, SIGSTOP);
    res_t inflight;
    start_create("user9", "tp-main", 1, 500, NULL, NULL, &inflight);
    /* Until the order is inserted (pending); the saga then goes on to
     * ReduceStock and waits in ProcessPayment.  run_pending returns at its
     * timeout while the call is unanswered. */
    long long pending_now = 0;
    for (int i = 0; i < 200 && pending_now != 1; i++) {
        run_pending(50);
        pending_now = sql_int("SELECT count(*) FROM orders WHERE user_id = 'user9' AND status = 'pending'");
    }
    run_pending(100);
    kill(p_ord.pid, SIGTERM);
    usleep(300000);
    kill(p_pay.pid, SIGCONT);
    run_pending(10000);
    tap_check(pending_now == 1 && inflight.done && inflight.status == GRPC_STATUS_OK &&
                  inflight.ostatus == SHOP__V1__ORDER_STATUS__ORDER_STATUS_COMPLETED,
              "SIGTERM with a CreateOrder in flight (order pending in ProcessPayment): answered OK, completed "
              "(%s %s)", grpc_status_name(inflight.status), inflight.message);
    tap_check(proc_stop(&p_ord, 0) == 0, "order-svc then exits 0");
    check_invariants("graceful stop");
    rd_kafka_consumer_close(g_cons);
    rd_kafka_destroy(g_cons);
    grpc_channel_free(g_ch);
    loop_destroy(g_loop);
    ring_close(g_rg);
    return tap_done();
}
