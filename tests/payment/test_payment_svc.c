/*
 * tests/payment/test_payment_svc.c - payment-svc end to end: a private
 * PostgreSQL (tests/db/pg-harness.sh) migrated with shop-migrate, the
 * processor simulator and payment-svc on free ports, a private span ring.
 *
 * Cases: approve; replay (no second processor call); other amount ->
 * ALREADY_EXISTS; declines (FAILED_PRECONDITION with the reason, row
 * failed); processor timeout (UNAVAILABLE, row pending/processor_timeout,
 * a retry charges again); processor 5xx; processor down then back (a retry
 * succeeds); the same order 20x concurrently (one row, one processor call,
 * 20 identical answers); bad fields (INVALID_ARGUMENT naming the field);
 * spans: SERVER -> "INSERT payments" + "POST" with the traceparent reaching
 * the simulator.
 *
 *   test_payment_svc pg-harness.sh shop-migrate MIGRATIONS_DIR payment-svc shop-payment-sim
 */
#include <errno.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "db/db_test.h"
#include "grpc.h"
#include "http1_client.h"
#include "pay_test.h"
#include "ring.h"
#include "shop/v1/payment.pb-c.h"
#include "tap.h"

static loop_t *g_loop;
static grpc_channel_t *g_ch;
static http1c_client_t *g_sim_http;
static PGconn *g_db;
static const char *g_sim_path, *g_svc_path;
static pt_child_t g_sim, g_svc;
static char g_dir[64], g_ring[64], g_sim_port[16], g_svc_env[16][128];

typedef struct {
    bool done;
    int status;
    char msg[256];
    bool applied;
    char id[64], st[16], reason[64], ref[80], oid[80];
    int64_t amount;
} pres_t;

static void on_pay(const grpc_result_t *r, void *arg)
{
    pres_t *p = arg;
    p->done = true;
    p->status = (int)r->status;
    snprintf(p->msg, sizeof p->msg, "%s", r->message ? r->message : "");
    if (r->status == GRPC_STATUS_OK) {
        Shop__V1__ProcessPaymentResponse *res =
            shop__v1__process_payment_response__unpack(NULL, r->response_len, r->response);
        if (res && res->payment) {
            p->applied = res->already_applied;
            snprintf(p->id, sizeof p->id, "%s", res->payment->id);
            snprintf(p->oid, sizeof p->oid, "%s", res->payment->order_id);
            snprintf(p->reason, sizeof p->reason, "%s", res->payment->failure_reason);
            snprintf(p->ref, sizeof p->ref, "%s", res->payment->processor_ref);
            p->amount = res->payment->amount_cents;
            snprintf(p->st, sizeof p->st, "%d", (int)res->payment->status);
        }
        if (res)
            shop__v1__process_payment_response__free_unpacked(res, NULL);
    }
}

static int start_pay(const char *order, const char *user, int64_t amount, const char *cur, pres_t *p,
                     const trace_context_t *parent)
{
    memset(p, 0, sizeof *p);
    Shop__V1__ProcessPaymentRequest rq = SHOP__V1__PROCESS_PAYMENT_REQUEST__INIT;
    rq.order_id = (char *)(uintptr_t)order;
    rq.user_id = (char *)(uintptr_t)user;
    rq.amount_cents = amount;
    rq.currency = (char *)(uintptr_t)cur;
    uint8_t buf[512];
    size_t n = shop__v1__process_payment_request__pack(&rq, buf);
    return grpc_call_unary_traced(g_ch, "/shop.v1.PaymentService/ProcessPayment", buf, n, false,
                                  5000000000ull, NULL, 0, parent, on_pay, p);
}

static bool pay_done(void *arg) { return ((pres_t *)arg)->done; }

static void pay(const char *order, const char *user, int64_t amount, const char *cur, pres_t *p)
{
    if (start_pay(order, user, amount, cur, p, NULL) == 0)
        dbt_run_until(g_loop, pay_done, p, 8000);
}

/* One SQL value (first row, first column) into out; "" when no row. */
static const char *q1(char *out, size_t cap, const char *sql, const char *arg)
{
    const char *v[] = {arg};
    PGresult *r = PQexecParams(g_db, sql, 1, NULL, v, NULL, NULL, 0);
    out[0] = '\0';
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0)
        snprintf(out, cap, "%s", PQgetvalue(r, 0, 0));
    else if (PQresultStatus(r) != PGRES_TUPLES_OK)
        snprintf(out, cap, "ERR %s", PQerrorMessage(g_db));
    PQclear(r);
    return out;
}

static const char *row_state(const char *order)
{
    static char s[160];
    return q1(s, sizeof s,
              "SELECT status || '/' || coalesce(failure_reason, '-') FROM payments WHERE order_id = $1",
              order);
}

/* ------------------------------------------------------- simulator stats */

typedef struct {
    bool done;
    char body[512];
} stats_t;

static void on_stats(int err, const http1c_response_t *r, void *arg)
{
    stats_t *s = arg;
    s->done = true;
    if (err == 0)
        snprintf(s->body, sizeof s->body, "%.*s", (int)r->body_len, r->body);
}

static bool stats_done(void *arg) { return ((stats_t *)arg)->done; }

static long sim_stat(const char *key, char *tp, size_t tpcap)
{
    stats_t s = {0};
    http1c_request_t rq = {.method = "GET", .path = "/stats"};
    if (http1c_request(g_sim_http, &rq, on_stats, &s) != 0)
        return -1;
    dbt_run_until(g_loop, stats_done, &s, 5000);
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(s.body, pat);
    if (tp != NULL) {
        const char *t = strstr(s.body, "\"last_traceparent\":\"");
        snprintf(tp, tpcap, "%.55s", t ? t + 20 : "");
    }
    return p ? atol(p + strlen(pat)) : -1;
}

static int start_sim(const char *port)
{
    const char *argv[] = {g_sim_path, "--config", "/dev/null", "--port", port, NULL};
    const char *env[] = {"SHOP_PAYMENT_SIM_LATENCY_MS=40", "SHOP_PAYMENT_SIM_JITTER_MS=10",
                         "SHOP_PAYMENT_SIM_DECLINE_RATE=0", "SHOP_PAYMENT_SIM_ERROR_RATE=0", NULL};
    char log[128];
    snprintf(log, sizeof log, "%s/sim.log", g_dir);
    return pt_spawn(&g_sim, argv, env, log);
}

/* ------------------------------------------------------------------ spans */

typedef struct {
    char name[96];
    int kind, status;
    char tid[33], sid[17], psid[17];
    char attrs[600];
} rspan_t;

static rspan_t g_rs[4096];
static int g_nrs;

static void drain_ring(void)
{
    char err[256] = "";
    ring_t *r;
    if (ring_open(g_ring, NULL, false, &r, err, sizeof err) != 0) {
        tap_diag("ring_open %s: %s", g_ring, err);
        return;
    }
    if (ring_consumer_open(r, err, sizeof err) != 0) {
        tap_diag("ring_consumer_open: %s", err);
        ring_close(r);
        return;
    }
    ring_record_t recs[128];
    int n;
    while ((n = ring_consumer_peek(r, recs, 128)) > 0) {
        for (int i = 0; i < n && g_nrs < 4096; i++) {
            span_record_t sr;
            if (span_record_decode(recs[i].data, recs[i].len, &sr) != 0)
                continue;
            rspan_t *s = &g_rs[g_nrs++];
            snprintf(s->name, sizeof s->name, "%.*s", (int)sr.name.len, sr.name.p);
            s->kind = sr.kind;
            s->status = sr.status;
            trace_id_hex(sr.trace_id, 16, s->tid);
            trace_id_hex(sr.span_id, 8, s->sid);
            trace_id_hex(sr.parent_span_id, 8, s->psid);
            s->tid[32] = s->sid[16] = s->psid[16] = '\0';
            uint32_t off = 0;
            size_t o = 0;
            span_record_item_t it;
            while (span_record_next(sr.items, sr.items_len, &off, &it) == 1 && o < sizeof s->attrs - 100) {
                if (it.tag != SPAN_ITEM_ATTR)
                    continue;
                if (it.type == TRACE_ATTR_STRING)
                    o += (size_t)snprintf(s->attrs + o, sizeof s->attrs - o, "%.*s=%.*s;", (int)it.key.len,
                                          it.key.p, (int)(it.value_len > 60 ? 60 : it.value_len),
                                          (const char *)it.value);
                else if (it.type == TRACE_ATTR_INT) {
                    int64_t v;
                    memcpy(&v, it.value, 8);
                    o += (size_t)snprintf(s->attrs + o, sizeof s->attrs - o, "%.*s=%lld;", (int)it.key.len,
                                          it.key.p, (long long)v);
                }
            }
        }
        ring_consumer_release(r, (uint64_t)n, (uint64_t)n, (ring_drop_reason_t)0);
    }
    ring_close(r);
}

static const rspan_t *find_span(const char *tid, const char *name, const char *psid)
{
    for (int i = 0; i < g_nrs; i++)
        if (strcmp(g_rs[i].tid, tid) == 0 && strcmp(g_rs[i].name, name) == 0 &&
            (psid == NULL || strcmp(g_rs[i].psid, psid) == 0))
            return &g_rs[i];
    return NULL;
}

/* ------------------------------------------------------------------ setup */

static int start_svc(void)
{
    const char *argv[] = {g_svc_path, "--config", "/dev/null", NULL};
    const char *env[17];
    for (int i = 0; i < 16; i++)
        env[i] = g_svc_env[i][0] ? g_svc_env[i] : NULL;
    env[16] = NULL;
    char log[128];
    snprintf(log, sizeof log, "%s/svc.log", g_dir);
    return pt_spawn(&g_svc, argv, env, log);
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: test_payment_svc pg-harness.sh shop-migrate MIGRATIONS_DIR payment-svc "
                        "shop-payment-sim\n");
        return 2;
    }
    const char *harness = argv[1], *migrate = argv[2], *mdir = argv[3];
    g_svc_path = argv[4];
    g_sim_path = argv[5];
    signal(SIGPIPE, SIG_IGN);
    snprintf(g_dir, sizeof g_dir, "/tmp/test_pay.XXXXXX");
    if (mkdtemp(g_dir) == NULL || chmod(g_dir, 0711) != 0)
        return 1;
    char pgdir[96];
    snprintf(pgdir, sizeof pgdir, "%s/pg", g_dir);
    const char *ci = dbt_harness(harness, "start", pgdir);
    if (!tap_check(ci != NULL && ci[0], "private PostgreSQL started")) {
        return tap_done();
    }
    char conninfo[512];
    snprintf(conninfo, sizeof conninfo, "%s", ci);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "'%s' --conninfo '%s' --dir '%s' up >'%s/migrate.log' 2>&1", migrate,
             conninfo, mdir, g_dir);
    tap_check(system(cmd) == 0, "shop-migrate up");
    g_db = PQconnectdb(conninfo);
    int pgport = 0;
    sscanf(strstr(conninfo, "port=") ? strstr(conninfo, "port=") : "port=0", "port=%d", &pgport);

    char simport[16];
    snprintf(simport, sizeof simport, "%d", pt_free_port()); /* down and back later, on this port */
    int sim_ok = start_sim(simport) == 0;
    tap_check(sim_ok, "shop-payment-sim started on port %d", g_sim.port);
    snprintf(g_sim_port, sizeof g_sim_port, "%d", g_sim.port);
    snprintf(g_ring, sizeof g_ring, "/shop-test-pay-%d", (int)getpid());
    int k = 0;
    snprintf(g_svc_env[k++], 128, "SHOP_POSTGRES_HOST=127.0.0.1");
    snprintf(g_svc_env[k++], 128, "SHOP_POSTGRES_PORT=%d", pgport);
    snprintf(g_svc_env[k++], 128, "SHOP_POSTGRES_DBNAME=postgres");
    snprintf(g_svc_env[k++], 128, "SHOP_POSTGRES_USER=postgres");
    snprintf(g_svc_env[k++], 128, "SHOP_PAYMENT_SVC_ADDRESS=127.0.0.1");
    snprintf(g_svc_env[k++], 128, "SHOP_PAYMENT_SVC_PORT=0");
    snprintf(g_svc_env[k++], 128, "SHOP_PAYMENT_SVC_PROCESSOR_PORT=%d", g_sim.port);
    snprintf(g_svc_env[k++], 128, "SHOP_PAYMENT_SVC_PROCESSOR_TIMEOUT=300");
    snprintf(g_svc_env[k++], 128, "SHOP_RING_NAME=%s", g_ring);
    snprintf(g_svc_env[k++], 128, "SHOP_RING_LANES=4");
    snprintf(g_svc_env[k++], 128, "SHOP_RING_LANE_SIZE=4M");
    snprintf(g_svc_env[k++], 128, "OTEL_TRACES_SAMPLER=always_on");
    int svc_ok = start_svc() == 0;
    if (!tap_check(svc_ok, "payment-svc started on port %d", g_svc.port))
        goto out;

    dbt_trace_init();
    loop_create(&g_loop, NULL);
    char err[256] = "";
    grpc_channel_new(g_loop, "127.0.0.1", (uint16_t)g_svc.port, NULL, &g_ch, err, sizeof err);
    http1c_client_new(g_loop, "127.0.0.1", (uint16_t)g_sim.port, NULL, &g_sim_http);

    pres_t p, q;
    char tp[64];
    /* --- approve, with a traced parent for the span checks */
    trace_span_t root;
    static const trace_scope_t sc = TRACE_SCOPE("test", "0");
    trace_span_start(&root, &sc, "test", 4, TRACE_KIND_INTERNAL, NULL);
    long c0 = sim_stat("charges", NULL, 0);
    if (start_pay("ord-1", "user123", 1299, "", &p, &root.ctx) == 0)
        dbt_run_until(g_loop, pay_done, &p, 8000);
    tap_check(p.status == GRPC_STATUS_OK && strcmp(p.st, "2") == 0 && !p.applied &&
                  strncmp(p.ref, "ch_", 3) == 0 && strncmp(p.id, "pay_", 4) == 0 && p.amount == 1299,
              "approve: OK, SUCCEEDED, processor_ref %s, id %s (%s %s)", p.ref, p.id,
              grpc_status_name(p.status), p.msg);
    tap_check(strcmp(row_state("ord-1"), "succeeded/-") == 0, "approve: row succeeded (%s)", row_state("ord-1"));
    long c1 = sim_stat("charges", tp, sizeof tp);
    tap_check(c1 == c0 + 1, "approve: one processor call (%ld -> %ld)", c0, c1);
    char tid[33];
    trace_id_hex(root.ctx.trace_id, 16, tid);
    tid[32] = '\0';
    tap_check(strncmp(tp + 3, tid, 32) == 0, "approve: the traceparent reached the simulator (%s)", tp);
    char sim_parent[17];
    snprintf(sim_parent, sizeof sim_parent, "%.16s", tp + 36);

    /* --- replay */
    pay("ord-1", "user123", 1299, "USD", &q);
    tap_check(q.status == GRPC_STATUS_OK && q.applied && strcmp(q.id, p.id) == 0 && strcmp(q.ref, p.ref) == 0,
              "replay: OK, already_applied, same payment (%s)", q.id);
    tap_check(sim_stat("charges", NULL, 0) == c1, "replay: no second processor call");
    pay("ord-1", "user123", 999, "USD", &q);
    tap_check(q.status == GRPC_STATUS_ALREADY_EXISTS, "replay with another amount: ALREADY_EXISTS (%s: %s)",
              grpc_status_name(q.status), q.msg);

    /* --- declines */
    pay("decline-ord-2", "user123", 500, "USD", &q);
    tap_check(q.status == GRPC_STATUS_FAILED_PRECONDITION && strstr(q.msg, "card_declined"),
              "decline: FAILED_PRECONDITION with the reason (%s)", q.msg);
    tap_check(strcmp(row_state("decline-ord-2"), "failed/card_declined") == 0, "decline: row failed/card_declined");
    pay("ord-3", "user123", 40201, "USD", &q);
    tap_check(q.status == GRPC_STATUS_FAILED_PRECONDITION && strstr(q.msg, "insufficient_funds"),
              "decline (magic amount 40201): FAILED_PRECONDITION insufficient_funds (%s)", q.msg);
    long c2 = sim_stat("charges", NULL, 0);
    pay("decline-ord-2", "user123", 500, "USD", &q);
    tap_check(q.status == GRPC_STATUS_FAILED_PRECONDITION && sim_stat("charges", NULL, 0) == c2,
              "decline replay: the same answer, no processor call");

    /* --- timeout */
    pay("hang-ord-4", "user123", 700, "USD", &q);
    tap_check(q.status == GRPC_STATUS_UNAVAILABLE && strstr(q.msg, "timed out"),
              "processor timeout: UNAVAILABLE (%s)", q.msg);
    tap_check(strcmp(row_state("hang-ord-4"), "pending/processor_timeout") == 0,
              "processor timeout: row pending/processor_timeout (%s)", row_state("hang-ord-4"));
    long c3 = sim_stat("charges", NULL, 0);
    pay("hang-ord-4", "user123", 700, "USD", &q);
    tap_check(q.status == GRPC_STATUS_UNAVAILABLE && sim_stat("charges", NULL, 0) == c3 + 1,
              "processor timeout, retry: the lease is taken again, the processor asked once more");

    /* --- 5xx */
    pay("error-ord-5", "user123", 700, "USD", &q);
    tap_check(q.status == GRPC_STATUS_UNAVAILABLE && strstr(q.msg, "500") &&
                  strcmp(row_state("error-ord-5"), "pending/processor_error") == 0,
              "processor 500: UNAVAILABLE, row pending/processor_error (%s)", q.msg);

    /* --- bad input */
    struct {
        const char *o, *u;
        int64_t a;
        const char *c, *field;
    } bad[] = {{"", "u", 1, "USD", "order_id"},
               {"o-bad", "", 1, "USD", "user_id"},
               {"o-bad", "u", 0, "USD", "amount_cents"},
               {"o-bad", "u", -5, "USD", "amount_cents"},
               {"o-bad", "u", 1, "usd", "currency"},
               {"o-bad", "u", 1, "EURO", "currency"}};
    int nbad = 0;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        pay(bad[i].o, bad[i].u, bad[i].a, bad[i].c, &q);
        bool good = q.status == GRPC_STATUS_INVALID_ARGUMENT && strncmp(q.msg, bad[i].field, strlen(bad[i].field)) == 0;
        if (!good)
            tap_diag("bad input %zu: %s %s", i, grpc_status_name(q.status), q.msg);
        nbad += good;
    }
    char cnt[32];
    tap_check(nbad == 6 && strcmp(q1(cnt, sizeof cnt, "SELECT count(*) FROM payments WHERE order_id = $1", "o-bad"), "0") == 0,
              "bad input: INVALID_ARGUMENT naming the field (%d/6), no row", nbad);

    /* --- 20 concurrent calls for one order */
    long c4 = sim_stat("charges", NULL, 0);
    pres_t many[20];
    for (int i = 0; i < 20; i++)
        start_pay("conc-ord-6", "user123", 2500, "USD", &many[i], NULL);
    int ok = 0, applied = 0, same = 0;
    for (int i = 0; i < 20; i++) {
        dbt_run_until(g_loop, pay_done, &many[i], 8000);
        ok += many[i].status == GRPC_STATUS_OK;
        applied += many[i].applied;
        same += strcmp(many[i].id, many[0].id) == 0;
    }
    tap_check(ok == 20 && applied == 19 && same == 20, "20 concurrent: all OK, one fresh and 19 replays of one payment (%d ok, %d applied, %d same)", ok, applied, same);
    tap_check(strcmp(q1(cnt, sizeof cnt, "SELECT count(*) FROM payments WHERE order_id = $1", "conc-ord-6"), "1") == 0 &&
                  sim_stat("charges", NULL, 0) == c4 + 1,
              "20 concurrent: exactly one row and one processor call");

    /* --- processor down, then back: a retry does the right thing */
    pt_stop(&g_sim);
    pay("ord-7", "user123", 1500, "USD", &q);
    tap_check(q.status == GRPC_STATUS_UNAVAILABLE && strcmp(row_state("ord-7"), "pending/processor_unavailable") == 0,
              "processor down: UNAVAILABLE, row pending/processor_unavailable (%s)", q.msg);
    http1c_client_free(g_sim_http);
    start_sim(g_sim_port);
    http1c_client_new(g_loop, "127.0.0.1", (uint16_t)g_sim.port, NULL, &g_sim_http);
    pay("ord-7", "user123", 1500, "USD", &q);
    tap_check(q.status == GRPC_STATUS_OK && !q.applied && strcmp(row_state("ord-7"), "succeeded/-") == 0,
              "processor back: the retry charges and succeeds (%s %s)", grpc_status_name(q.status), q.msg);

    /* --- spans (in payment-svc's ring) */
    tap_check(pt_stop(&g_svc) == 0, "payment-svc exits 0 on SIGTERM (no leak report under ASan)");
    /* its spans stay in the ring */
    drain_ring();
    tap_diag("%d spans in the ring", g_nrs);
    const rspan_t *srv = find_span(tid, "shop.v1.PaymentService/ProcessPayment", NULL);
    const rspan_t *ins = srv ? find_span(tid, "INSERT payments", srv->sid) : NULL;
    const rspan_t *post = srv ? find_span(tid, "POST", srv->sid) : NULL;
    const rspan_t *upd = srv ? find_span(tid, "UPDATE payments", srv->sid) : NULL;
    tap_check(srv && srv->kind == TRACE_KIND_SERVER, "spans: SERVER span of ProcessPayment in our trace");
    tap_check(ins && ins->kind == TRACE_KIND_CLIENT && strstr(ins->attrs, "db.system.name=postgresql"),
              "spans: 'INSERT payments' db CLIENT span under it");
    tap_check(post && post->kind == TRACE_KIND_CLIENT && strstr(post->attrs, "http.request.method=POST") &&
                  strstr(post->attrs, "server.address=127.0.0.1") && strstr(post->attrs, "url.full=http://127.0.0.1:") &&
                  strstr(post->attrs, "http.response.status_code=200"),
              "spans: 'POST' HTTP CLIENT span under it (%s)", post ? post->attrs : "none");
    tap_check(post && strcmp(post->sid, sim_parent) == 0,
              "spans: the simulator saw the POST span as its parent (traceparent)");
    tap_check(upd != NULL, "spans: 'UPDATE payments' records the outcome");
    const rspan_t *tmo = NULL;
    for (int i = 0; i < g_nrs; i++)
        if (strcmp(g_rs[i].name, "POST") == 0 && strstr(g_rs[i].attrs, "error.type=timeout"))
            tmo = &g_rs[i];
    tap_check(tmo && tmo->status == TRACE_STATUS_ERROR, "spans: a timed-out POST is Error with error.type=timeout");

out:
    pt_stop(&g_svc);
    pt_stop(&g_sim);
    if (g_sim_http)
        http1c_client_free(g_sim_http);
    if (g_ch)
        grpc_channel_free(g_ch);
    if (g_loop)
        loop_destroy(g_loop);
    if (g_db)
        PQfinish(g_db);
    ring_unlink(g_ring);
    dbt_harness(harness, "stop", pgdir);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (tap__failed == 0 && system(cmd) != 0)
        tap_diag("rm %s failed", g_dir);
    else if (tap__failed)
        tap_diag("logs kept in %s", g_dir);
    trace_shutdown();
    return tap_done();
}
