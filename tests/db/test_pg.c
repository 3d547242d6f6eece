/*
 * tests/db/test_pg.c - core/pg against a real PostgreSQL started by
 * tests/db/pg-harness.sh in a private temporary cluster: a pool of 4 under
 * 1000 concurrent queries, parameters never inlined, timeouts (local and
 * statement_timeout), transactions, prepared statements (once per session,
 * again after a reconnect), a server restart mid-run, and one
 * CLIENT span per query with the semconv v1.37 DB attributes; then a
 * pipelined pool (1 connection, depth 8): 200 statements at once in order,
 * a failing statement failing alone, timeouts behind another statement
 * (no cancel) and of the running one (cancel), the session terminated
 * mid-pipeline, 100 prepared executions with one PREPARE, transactions,
 * and its spans.
 *
 * Usage: test_pg /path/to/pg-harness.sh
 */
#include <stdint.h>
#include <unistd.h>
#include <sys/stat.h>

#include "pg.h"
#include "db_test.h"
#include "tap.h"

static pg_pool_t *pool;
static const char *tricky = "O'Reilly \"q\" \\ ; DROP TABLE items; -- ünïcødé 日本 🚀";

/* --- counters the callbacks fill --- */
static int n_done, n_ok, n_bad, n_timeout, n_conn, last_status;
static char last_value[256];

static void reset(void)
{
    n_done = n_ok = n_bad = n_timeout = n_conn = 0;
    last_status = 0;
    last_value[0] = '\0';
}

static void on_res(pg_pool_t *p, int st, const PGresult *r, const char *msg, void *arg)
{
    (void)p;
    n_done++;
    last_status = st;
    if (st == 0) {
        n_ok++;
        if (r != NULL && PQntuples(r) > 0)
            snprintf(last_value, sizeof last_value, "%s", PQgetvalue(r, 0, 0));
    } else if (st == PG_ERR_TIMEOUT) {
        n_timeout++;
    } else if (st == PG_ERR_CONNECTION) {
        n_conn++;
    } else {
        tap_diag("query %ld failed: %s: %s", (long)(intptr_t)arg, pg_strerror(st), msg);
    }
}

/* 1000 queries: SELECT $1::int * 2, checked against the input. */
static void on_double(pg_pool_t *p, int st, const PGresult *r, const char *msg, void *arg)
{
    (void)p;
    (void)msg;
    n_done++;
    long want = (long)(intptr_t)arg * 2;
    if (st == 0 && PQntuples(r) == 1 && atol(PQgetvalue(r, 0, 0)) == want)
        n_ok++;
    else
        n_bad++;
}

static int want_done;
static bool done_reached(void *arg)
{
    (void)arg;
    return n_done >= want_done;
}
static bool pool_ready4(void *arg)
{
    (void)arg;
    return pg_pool_ready(pool) == 4;
}

static bool run_n(loop_t *loop, int n, uint64_t ms)
{
    want_done = n;
    return dbt_run_until(loop, done_reached, NULL, ms);
}

static int q(const char *sql, int n, const char *const *v, const char *op, const char *coll)
{
    pg_query_opts_t o = {.operation = op, .collection = coll};
    return pg_query(pool, sql, n, v, NULL, NULL, &o, on_res, NULL);
}

/* The same statement, prepared once per connection (pg_query_opts_t.prepare). */
static const char prep_sql[] = "SELECT $1::int * 2 AS prepared_double";
static void prep_doubles(int n)
{
    for (long i = 0; i < n; i++) {
        char v[16];
        snprintf(v, sizeof v, "%ld", i);
        const char *vals[] = {v};
        pg_query_opts_t o = {.operation = "SELECT", .prepare = true};
        pg_query(pool, prep_sql, 1, vals, NULL, NULL, &o, on_double, (void *)(intptr_t)i);
    }
}

static pg_txn_t *txn;
static int txn_status = 1;
static void on_begin(pg_pool_t *p, int st, pg_txn_t *t, const char *msg, void *arg)
{
    (void)p;
    (void)msg;
    (void)arg;
    txn_status = st;
    txn = t;
    n_done++;
}

/* --- the pipelined pool: one connection, depth 8 --- */
static pg_pool_t *ppool;
static bool ppool_ready(void *arg)
{
    (void)arg;
    return pg_pool_ready(ppool) == 1;
}

/* Per-statement outcome, indexed by the callback's arg. */
#define PIPE_MAX 256
static int pipe_status[PIPE_MAX], pipe_order[PIPE_MAX], pipe_n;
static char pipe_value[PIPE_MAX][32], pipe_state[PIPE_MAX][8], pipe_msg[PIPE_MAX][128];
static uint64_t pipe_ns[PIPE_MAX];

static void pipe_reset(void)
{
    reset();
    pipe_n = 0;
    for (int i = 0; i < PIPE_MAX; i++) {
        pipe_status[i] = 1;
        pipe_order[i] = -1;
        pipe_value[i][0] = pipe_state[i][0] = pipe_msg[i][0] = '\0';
        pipe_ns[i] = 0;
    }
}

static void on_pipe(pg_pool_t *p, int st, const PGresult *r, const char *msg, void *arg)
{
    (void)p;
    long i = (long)(intptr_t)arg;
    n_done++;
    n_ok += st == 0;
    n_timeout += st == PG_ERR_TIMEOUT;
    n_conn += st == PG_ERR_CONNECTION;
    pipe_order[pipe_n++] = (int)i;
    pipe_status[i] = st;
    pipe_ns[i] = loop_now_ns();
    snprintf(pipe_msg[i], sizeof pipe_msg[i], "%s", msg != NULL ? msg : "");
    if (r != NULL && st == 0 && PQntuples(r) > 0)
        snprintf(pipe_value[i], sizeof pipe_value[i], "%s", PQgetvalue(r, 0, 0));
    const char *state = r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    if (state != NULL)
        snprintf(pipe_state[i], sizeof pipe_state[i], "%s", state);
}

static void pq(const char *sql, long i, const char *param, uint32_t timeout_ms, bool prepare)
{
    const char *v[] = {param};
    pg_query_opts_t o = {.operation = "SELECT", .timeout_ms = timeout_ms, .prepare = prepare};
    if (pg_query(ppool, sql, param != NULL ? 1 : 0, param != NULL ? v : NULL, NULL, NULL, &o, on_pipe,
                 (void *)(intptr_t)i) != 0)
        tap_diag("pg_query %ld refused", i);
}

/* pg_terminate_backend of the pipelined pool's session, from the other pool. */
static int killed = -1;
static void on_kill(pg_pool_t *p, int st, const PGresult *r, const char *msg, void *arg)
{
    (void)p;
    (void)msg;
    (void)arg;
    killed = st == 0 && PQntuples(r) == 1 ? atoi(PQgetvalue(r, 0, 0)) : -2;
}
static bool kill_answered(void *arg)
{
    (void)arg;
    return killed != -1;
}
static void do_kill(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    (void)arg;
    pg_query(pool, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                   "WHERE application_name = 'pgpipe_test'",
             0, NULL, NULL, NULL, NULL, on_kill, NULL);
}


/* Restart from a timer callback while queries are in flight. */
static const char *g_script, *g_dir;
static bool restarted;
static void do_restart(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    (void)arg;
    restarted = dbt_harness(g_script, "restart", g_dir) != NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test_pg pg-harness.sh\n");
        return 2;
    }
    char tmpl[] = "/tmp/shop-pg-XXXXXX";
    if (mkdtemp(tmpl) == NULL || chmod(tmpl, 0711) != 0) {
        perror("mkdtemp");
        return 1;
    }
    char dir[300];
    snprintf(dir, sizeof dir, "%s/pg", tmpl);
    g_script = argv[1];
    g_dir = dir;
    const char *ci = dbt_harness(argv[1], "start", dir);
    if (!tap_check(ci != NULL && *ci != '\0', "private cluster started: %s", ci ? ci : "(failed)")) {
        rmdir(tmpl);
        return tap_done();
    }
    char conninfo[512];
    snprintf(conninfo, sizeof conninfo, "%s", ci);
    tap_check(dbt_trace_init() == 0, "trace_init with a span sink");

    loop_t *loop;
    if (loop_create(&loop, NULL) != 0)
        return 1;
    pg_options_t po = {.conninfo = conninfo, .pool_size = 4, .statement_timeout_ms = 1000,
                       .query_timeout_ms = 10000};
    tap_check(pg_pool_create(loop, &po, &pool) == 0, "pool of 4 created");
    tap_check(dbt_run_until(loop, pool_ready4, NULL, 10000), "4 connections ready");

    /* --- schema --- */
    reset();
    q("CREATE TABLE items (id int PRIMARY KEY, name text)", 0, NULL, "CREATE TABLE", "items");
    tap_check(run_n(loop, 1, 5000) && n_ok == 1, "CREATE TABLE items");

    /* --- 1000 concurrent queries --- */
    reset();
    uint64_t t0 = loop_now_ns();
    for (long i = 0; i < 1000; i++) {
        char v[16];
        snprintf(v, sizeof v, "%ld", i);
        const char *vals[] = {v};
        pg_query_opts_t o = {.operation = "SELECT"};
        pg_query(pool, "SELECT $1::int * 2", 1, vals, NULL, NULL, &o, on_double, (void *)(intptr_t)i);
    }
    bool fin = run_n(loop, 1000, 30000);
    tap_check(fin && n_ok == 1000 && n_bad == 0, "1000 concurrent queries on 4 connections: %d ok, %d bad (%.0f ms)",
              n_ok, n_bad, (double)(loop_now_ns() - t0) / 1e6);

    /* --- parameters with quotes and unicode --- */
    reset();
    const char *ins[] = {"1", tricky};
    q("INSERT INTO items (id, name) VALUES ($1, $2)", 2, ins, "INSERT", "items");
    run_n(loop, 1, 5000);
    tap_check(n_ok == 1, "INSERT with quotes, backslash, ; and unicode as a parameter");
    reset();
    const char *sel[] = {"1"};
    q("SELECT name FROM items WHERE id = $1", 1, sel, "SELECT", "items");
    run_n(loop, 1, 5000);
    tap_check(n_ok == 1 && strcmp(last_value, tricky) == 0, "value round-trips unchanged: %s", last_value);
    reset();
    const char *sel2[] = {tricky};
    q("SELECT count(*) FROM items WHERE name = $1", 1, sel2, "SELECT", "items");
    run_n(loop, 1, 5000);
    tap_check(n_ok == 1 && strcmp(last_value, "1") == 0, "WHERE name = $1 matches the tricky value");

    /* --- server error --- */
    reset();
    q("SELECT * FROM no_such_table", 0, NULL, "SELECT", "no_such_table");
    run_n(loop, 1, 5000);
    tap_check(last_status == PG_ERR_SERVER, "unknown table: PG_ERR_SERVER (%s)", pg_strerror(last_status));

    /* --- timeouts --- */
    reset();
    pg_query_opts_t to = {.operation = "SELECT", .timeout_ms = 300};
    t0 = loop_now_ns();
    pg_query(pool, "SELECT pg_sleep(5)", 0, NULL, NULL, NULL, &to, on_res, NULL);
    run_n(loop, 1, 5000);
    double ms = (double)(loop_now_ns() - t0) / 1e6;
    tap_check(last_status == PG_ERR_TIMEOUT && ms < 900, "local timeout 300 ms: PG_ERR_TIMEOUT after %.0f ms", ms);
    reset();
    t0 = loop_now_ns();
    q("SELECT pg_sleep(3)", 0, NULL, "SELECT", NULL);
    run_n(loop, 1, 5000);
    ms = (double)(loop_now_ns() - t0) / 1e6;
    tap_check(last_status == PG_ERR_TIMEOUT && ms < 2500,
              "statement_timeout 1000 ms (server side): PG_ERR_TIMEOUT after %.0f ms", ms);
    reset();
    for (int i = 0; i < 8; i++)
        q("SELECT 1", 0, NULL, "SELECT", NULL);
    run_n(loop, 8, 5000);
    tap_check(n_ok == 8, "connections usable after timeouts: %d/8 ok", n_ok);

    /* --- transactions --- */
    reset();
    pg_txn_begin(pool, NULL, on_begin, NULL);
    run_n(loop, 1, 5000);
    tap_check(txn_status == 0 && txn != NULL, "BEGIN");
    if (txn != NULL) {
        reset();
        const char *v2[] = {"2", "committed"};
        pg_txn_query(txn, "INSERT INTO items (id, name) VALUES ($1, $2)", 2, v2, NULL, NULL, NULL, on_res, NULL);
        pg_txn_end(txn, true, on_res, NULL);
        run_n(loop, 2, 5000);
        tap_check(n_ok == 2, "INSERT + COMMIT");
    }
    reset();
    txn = NULL;
    pg_txn_begin(pool, NULL, on_begin, NULL);
    run_n(loop, 1, 5000);
    if (txn != NULL) {
        reset();
        const char *v3[] = {"3", "rolled back"};
        pg_txn_query(txn, "INSERT INTO items (id, name) VALUES ($1, $2)", 2, v3, NULL, NULL, NULL, on_res, NULL);
        pg_txn_end(txn, false, on_res, NULL);
        run_n(loop, 2, 5000);
        tap_check(n_ok == 2, "INSERT + ROLLBACK");
    } else {
        tap_check(0, "second BEGIN");
    }
    reset();
    q("SELECT string_agg(id::text, ',' ORDER BY id) FROM items", 0, NULL, "SELECT", "items");
    run_n(loop, 1, 5000);
    tap_check(strcmp(last_value, "1,2") == 0, "committed row visible, rolled-back row absent: %s", last_value);

    /* --- prepared statements --- */
    reset();
    prep_doubles(200);
    fin = run_n(loop, 200, 30000);
    tap_check(fin && n_ok == 200 && n_bad == 0, "200 prepared queries on 4 connections: %d ok, %d bad",
              n_ok, n_bad);
    for (int i = 0; i < 4; i++) { /* one per connection: each session prepared it once */
        reset();
        const char *pv[] = {prep_sql};
        q("SELECT count(*) FROM pg_prepared_statements WHERE statement = $1", 1, pv, "SELECT", NULL);
        run_n(loop, 1, 5000);
        tap_check(n_ok == 1 && strcmp(last_value, "1") == 0,
                  "the session holds the statement prepared exactly once (count %s)", last_value);
    }
    reset();
    {
        const char *zero[] = {"0"}, *one[] = {"1"};
        pg_query_opts_t po1 = {.operation = "SELECT", .prepare = true};
        pg_query(pool, "SELECT 10 / $1::int", 1, zero, NULL, NULL, &po1, on_res, NULL);
        run_n(loop, 1, 5000);
        tap_check(last_status == PG_ERR_SERVER, "a prepared statement failing at execution: PG_ERR_SERVER (%s)",
                  pg_strerror(last_status));
        reset();
        pg_query(pool, "SELECT 10 / $1::int", 1, one, NULL, NULL, &po1, on_res, NULL);
        run_n(loop, 1, 5000);
        tap_check(n_ok == 1 && strcmp(last_value, "10") == 0, "the same statement then answers: %s", last_value);
        reset();
        pg_query(pool, "SELEKT nonsense $1", 1, one, NULL, NULL, &po1, on_res, NULL);
        run_n(loop, 1, 5000);
        tap_check(last_status == PG_ERR_SERVER, "a statement that cannot be prepared: PG_ERR_SERVER (%s)",
                  pg_strerror(last_status));
    }

    /* --- restart mid-run --- */
    reset();
    pg_counters_t c0;
    pg_pool_counters(pool, &c0);
    for (int i = 0; i < 4; i++)
        q("SELECT pg_sleep(0.9)", 0, NULL, "SELECT", NULL);
    loop_timer_t rt;
    loop_timer_init(&rt);
    loop_timer_start(loop, &rt, 300u * 1000000u, 0, do_restart, NULL);
    run_n(loop, 4, 15000);
    tap_check(restarted, "server restarted (pg_ctl restart -m fast) while 4 queries ran");
    tap_check(n_conn == 4, "in-flight queries failed with PG_ERR_CONNECTION: %d/4 (ok %d, timeout %d)", n_conn,
              n_ok, n_timeout);
    reset();
    for (int i = 0; i < 20; i++)
        q("SELECT count(*) FROM items", 0, NULL, "SELECT", "items");
    run_n(loop, 20, 15000);
    tap_check(n_ok == 20, "20 later queries succeed after reconnect: %d", n_ok);
    reset();
    prep_doubles(40);
    run_n(loop, 40, 15000);
    tap_check(n_ok == 40 && n_bad == 0, "prepared queries after reconnect (new sessions prepare again): %d ok",
              n_ok);
    bool all_back = dbt_run_until(loop, pool_ready4, NULL, 10000);
    pg_counters_t c1;
    pg_pool_counters(pool, &c1);
    tap_check(all_back && c1.conn_lost - c0.conn_lost == 4 && pg_pool_ready(pool) == 4,
              "4 connections lost and re-established (lost %llu, ready %u)",
              (unsigned long long)(c1.conn_lost - c0.conn_lost), pg_pool_ready(pool));

    /* --- spans --- */
    pg_counters_t cf;
    pg_pool_counters(pool, &cf);
    int npg = 0, bad_attr = 0, leaked = 0, named = 0, err_ok = 0, err_spans = 0;
    for (int i = 0; i < dbt_nspans; i++) {
        const dbt_span_t *s = &dbt_spans[i];
        const char *sys = dbt_attr(s, "db.system.name");
        if (sys == NULL || strcmp(sys, "postgresql") != 0)
            continue;
        npg++;
        const char *qt = dbt_attr(s, "db.query.text"), *ns = dbt_attr(s, "db.namespace");
        const char *op = dbt_attr(s, "db.operation.name"), *port = dbt_attr(s, "server.port");
        if (s->kind != TRACE_KIND_CLIENT || qt == NULL || ns == NULL || strcmp(ns, "postgres") != 0 ||
            op == NULL || port == NULL || dbt_attr(s, "server.address") == NULL)
            bad_attr++;
        if (qt != NULL && (strstr(qt, "O'Reilly") != NULL || strstr(qt, "日本") != NULL))
            leaked++;
        const char *coll = dbt_attr(s, "db.collection.name");
        if (coll != NULL && strcmp(coll, "items") == 0 && strncmp(s->name, op, strlen(op)) == 0 &&
            strstr(s->name, " items") != NULL)
            named++;
        if (s->status == TRACE_STATUS_ERROR) {
            err_spans++;
            err_ok += dbt_attr(s, "error.type") != NULL;
        }
    }
    tap_check((uint64_t)npg == cf.queries, "one CLIENT span per query: %d spans, %llu queries", npg,
              (unsigned long long)cf.queries);
    tap_check(bad_attr == 0, "every span has db.system.name, db.namespace, db.operation.name, db.query.text, "
                             "server.address/port (%d bad)", bad_attr);
    tap_check(leaked == 0, "no parameter value in any db.query.text (%d leaked)", leaked);
    tap_check(named >= 5, "spans named \"{operation} items\" when the collection is given (%d)", named);
    tap_check(err_spans >= 7 && err_ok == err_spans, "error spans carry error.type: %d/%d", err_ok, err_spans);

    /* ================= pipeline mode: one connection, depth 8 ================= */
    char ci2[600];
    snprintf(ci2, sizeof ci2, "%s application_name=pgpipe_test", conninfo);
    int spans0 = dbt_nspans;
    pg_options_t po2 = {.conninfo = ci2, .pool_size = 1, .pipeline_depth = 8, .query_timeout_ms = 10000};
    tap_check(pg_pool_create(loop, &po2, &ppool) == 0, "pipelined pool (1 connection, depth 8) created");
    tap_check(dbt_run_until(loop, ppool_ready, NULL, 10000), "its connection is ready");
    pg_counters_t pc0, pc1;
    pg_pool_counters(ppool, &pc0);

    /* 200 at once: each returns its own parameter, in the order queued. */
    pipe_reset();
    t0 = loop_now_ns();
    for (long i = 0; i < 200; i++) {
        char v[16];
        snprintf(v, sizeof v, "%ld", i);
        pq("SELECT $1::int", i, v, 0, false);
    }
    fin = run_n(loop, 200, 30000);
    int right = 0, in_order = 0;
    for (int i = 0; i < 200; i++) {
        right += pipe_status[i] == 0 && atoi(pipe_value[i]) == i;
        in_order += pipe_order[i] == i;
    }
    tap_check(fin && right == 200 && in_order == 200,
              "200 queries pipelined on 1 connection: %d answered their own parameter, %d in order (%.0f ms)", right,
              in_order, (double)(loop_now_ns() - t0) / 1e6);

    /* A failing statement in the middle fails alone. */
    pipe_reset();
    pq("SELECT 1", 0, NULL, 0, false);
    pq("SELECT 2", 1, NULL, 0, false);
    pq("SELECT 10 / $1::int", 2, "0", 0, false);
    pq("SELECT 4", 3, NULL, 0, false);
    {
        const char *dup[] = {"1", "duplicate"};
        pg_query_opts_t o = {.operation = "INSERT", .collection = "items"};
        pg_query(ppool, "INSERT INTO items (id, name) VALUES ($1, $2)", 2, dup, NULL, NULL, &o, on_pipe,
                 (void *)(intptr_t)4);
    }
    pq("SELECT 6", 5, NULL, 0, false);
    run_n(loop, 6, 10000);
    tap_check(pipe_status[2] == PG_ERR_SERVER && strcmp(pipe_state[2], "22012") == 0,
              "division by zero mid-pipeline: PG_ERR_SERVER, SQLSTATE %s", pipe_state[2]);
    tap_check(pipe_status[4] == PG_ERR_SERVER && strcmp(pipe_state[4], "23505") == 0,
              "unique violation mid-pipeline: PG_ERR_SERVER, SQLSTATE %s", pipe_state[4]);
    tap_check(pipe_status[0] == 0 && pipe_status[1] == 0 && pipe_status[3] == 0 && pipe_status[5] == 0 &&
                  strcmp(pipe_value[0], "1") == 0 && strcmp(pipe_value[1], "2") == 0 &&
                  strcmp(pipe_value[3], "4") == 0 && strcmp(pipe_value[5], "6") == 0,
              "the statements before and after them succeed: %s %s %s %s", pipe_value[0], pipe_value[1],
              pipe_value[3], pipe_value[5]);

    /* A timeout behind another statement: reported at once, no cancel
     * (it would hit the statement running), the rest still answer. */
    pipe_reset();
    pg_pool_counters(ppool, &pc0);
    t0 = loop_now_ns();
    pq("SELECT pg_sleep(0.6), 'first'", 0, NULL, 5000, false);
    pq("SELECT pg_sleep(0.3), 'second'", 1, NULL, 150, false);
    pq("SELECT 'third'", 2, NULL, 5000, false);
    run_n(loop, 3, 10000);
    pg_pool_counters(ppool, &pc1);
    ms = (double)(pipe_ns[1] - t0) / 1e6;
    tap_check(pipe_status[1] == PG_ERR_TIMEOUT && ms < 500 && strstr(pipe_msg[1], "behind") != NULL,
              "second in flight, 150 ms timeout: PG_ERR_TIMEOUT after %.0f ms (%s)", ms, pipe_msg[1]);
    tap_check(pipe_status[0] == 0 && pipe_status[2] == 0 && strcmp(pipe_value[2], "third") == 0,
              "the first and the third succeed (%s, %s)", pg_strerror(pipe_status[0]), pipe_value[2]);
    tap_check(pc1.cancels == pc0.cancels, "no cancel sent for a statement not running (%llu)",
              (unsigned long long)(pc1.cancels - pc0.cancels));
    pipe_reset();
    for (long i = 0; i < 8; i++)
        pq("SELECT 'after'", i, NULL, 0, false);
    run_n(loop, 8, 5000);
    tap_check(n_ok == 8 && pg_pool_ready(ppool) == 1, "the connection stays usable: %d/8 ok", n_ok);

    /* A timeout of the statement running: cancelled, the rest answer. */
    pipe_reset();
    pg_pool_counters(ppool, &pc0);
    t0 = loop_now_ns();
    pq("SELECT pg_sleep(10)", 0, NULL, 200, false);
    pq("SELECT 'b'", 1, NULL, 0, false);
    pq("SELECT 'c'", 2, NULL, 0, false);
    run_n(loop, 3, 8000);
    ms = (double)(loop_now_ns() - t0) / 1e6;
    pg_pool_counters(ppool, &pc1);
    tap_check(pipe_status[0] == PG_ERR_TIMEOUT && pc1.cancels == pc0.cancels + 1,
              "first in flight, 200 ms timeout: PG_ERR_TIMEOUT, cancel sent (%llu)",
              (unsigned long long)(pc1.cancels - pc0.cancels));
    tap_check(pipe_status[1] == 0 && pipe_status[2] == 0 && strcmp(pipe_value[1], "b") == 0 &&
                  strcmp(pipe_value[2], "c") == 0 && ms < 5000,
              "the statements behind the cancelled one succeed after %.0f ms (%s, %s)", ms, pipe_value[1],
              pipe_value[2]);

    /* The server ends the session mid-pipeline: every statement in flight
     * fails with PG_ERR_CONNECTION, the pool reconnects. */
    pipe_reset();
    pg_pool_counters(ppool, &pc0);
    pq("SELECT pg_sleep(3)", 0, NULL, 0, false);
    for (long i = 1; i < 6; i++)
        pq("SELECT $1::int", i, "7", 0, false);
    loop_timer_t kt;
    loop_timer_init(&kt);
    loop_timer_start(loop, &kt, 300u * 1000000u, 0, do_kill, NULL);
    run_n(loop, 6, 10000);
    /* The killed session's statements can fail before the other pool has
     * read pg_terminate_backend's answer (seen under ASan): wait for it. */
    dbt_run_until(loop, kill_answered, NULL, 5000);
    tap_check(killed == 1, "pg_terminate_backend of the pipelined session from the other pool (%d)", killed);
    tap_check(n_conn == 6, "all 6 in flight failed with PG_ERR_CONNECTION: %d (ok %d)", n_conn, n_ok);
    bool back = dbt_run_until(loop, ppool_ready, NULL, 10000);
    pipe_reset();
    for (long i = 0; i < 20; i++) {
        char v[16];
        snprintf(v, sizeof v, "%ld", i);
        pq("SELECT $1::int", i, v, 0, false);
    }
    run_n(loop, 20, 10000);
    right = 0;
    for (int i = 0; i < 20; i++)
        right += pipe_status[i] == 0 && atoi(pipe_value[i]) == i;
    pg_pool_counters(ppool, &pc1);
    tap_check(back && right == 20 && pc1.conn_lost == pc0.conn_lost + 1,
              "reconnected (lost %llu) and 20 new queries answer right: %d",
              (unsigned long long)(pc1.conn_lost - pc0.conn_lost), right);

    /* Prepared in the pipeline: 100 executions queued at once, one PREPARE. */
    pipe_reset();
    pg_pool_counters(ppool, &pc0);
    for (long i = 0; i < 100; i++) {
        char v[16];
        snprintf(v, sizeof v, "%ld", i);
        pq("SELECT $1::int * 3 AS pipe_triple", i, v, 0, true);
    }
    fin = run_n(loop, 100, 10000);
    right = 0;
    for (int i = 0; i < 100; i++)
        right += pipe_status[i] == 0 && atoi(pipe_value[i]) == 3 * i;
    pg_pool_counters(ppool, &pc1);
    tap_check(fin && right == 100 && pc1.prepares == pc0.prepares + 1,
              "100 prepared executions pipelined: %d right, %llu PREPARE sent", right,
              (unsigned long long)(pc1.prepares - pc0.prepares));
    pipe_reset();
    pq("SELECT count(*) FROM pg_prepared_statements WHERE statement = $1", 0,
       "SELECT $1::int * 3 AS pipe_triple", 0, false);
    run_n(loop, 1, 5000);
    tap_check(strcmp(pipe_value[0], "1") == 0, "the session holds it prepared once (count %s)", pipe_value[0]);
    pipe_reset();
    pq("SELEKT $1 nonsense", 0, "1", 0, true);
    pq("SELEKT $1 nonsense", 1, "2", 0, true);
    pq("SELECT 'after bad prepare'", 2, NULL, 0, false);
    run_n(loop, 3, 5000);
    tap_check(pipe_status[0] == PG_ERR_SERVER && strcmp(pipe_state[0], "42601") == 0 &&
                  pipe_status[1] == PG_ERR_SERVER && pipe_status[2] == 0,
              "a PREPARE failing in the pipeline reports its syntax error (%s), the one behind fails (%s), "
              "the next succeeds (%s)",
              pipe_state[0], pipe_state[1], pipe_value[2]);

    /* Transactions on the pipelined connection: BEGIN queued between
     * pooled statements; the later pooled ones wait for the end. */
    pipe_reset();
    for (long i = 0; i < 5; i++)
        pq("SELECT 'before'", i, NULL, 0, false);
    txn = NULL;
    txn_status = 1;
    pg_txn_begin(ppool, NULL, on_begin, NULL);
    for (long i = 5; i < 10; i++)
        pq("SELECT 'after'", i, NULL, 0, false);
    run_n(loop, 6, 5000);
    int later_done = 0;
    for (int i = 5; i < 10; i++)
        later_done += pipe_status[i] != 1;
    tap_check(txn_status == 0 && txn != NULL && n_ok == 5 && later_done == 0,
              "BEGIN behind 5 pooled statements (%d ok); the 5 queued after it wait (%d ran)", n_ok, later_done);
    if (txn != NULL) {
        const char *v1[] = {"21", "pipelined commit"};
        pg_txn_query(txn, "INSERT INTO items (id, name) VALUES ($1, $2)", 2, v1, NULL, NULL, NULL, on_pipe,
                     (void *)(intptr_t)10);
        pg_txn_query(txn, "SELECT count(*) FROM items WHERE id = 21", 0, NULL, NULL, NULL, NULL, on_pipe,
                     (void *)(intptr_t)11);
        pg_txn_end(txn, true, on_pipe, (void *)(intptr_t)12);
        run_n(loop, 14, 5000);
        tap_check(pipe_status[10] == 0 && strcmp(pipe_value[11], "1") == 0 && pipe_status[12] == 0,
                  "INSERT, SELECT (sees it: %s) and COMMIT in order", pipe_value[11]);
        /* completion order: COMMIT (12) before every one of 5..9 */
        int after_ok = 0, pos_commit = -1;
        for (int k = 0; k < pipe_n; k++) {
            if (pipe_order[k] == 12)
                pos_commit = k;
            else if (pipe_order[k] >= 5 && pipe_order[k] < 10)
                after_ok += pos_commit >= 0 && pipe_status[pipe_order[k]] == 0;
        }
        tap_check(after_ok == 5, "the 5 pooled statements queued behind BEGIN ran after COMMIT (%d)", after_ok);
    }
    pipe_reset();
    txn = NULL;
    txn_status = 1;
    pg_txn_begin(ppool, NULL, on_begin, NULL);
    run_n(loop, 1, 5000);
    if (txn != NULL) {
        const char *v1[] = {"22", "pipelined rollback"};
        pg_txn_query(txn, "INSERT INTO items (id, name) VALUES ($1, $2)", 2, v1, NULL, NULL, NULL, on_pipe,
                     (void *)(intptr_t)0);
        pg_txn_query(txn, "SELECT 1 / 0", 0, NULL, NULL, NULL, NULL, on_pipe, (void *)(intptr_t)1);
        pg_txn_query(txn, "SELECT 'in aborted txn'", 0, NULL, NULL, NULL, NULL, on_pipe, (void *)(intptr_t)2);
        pg_txn_end(txn, false, on_pipe, (void *)(intptr_t)3);
        run_n(loop, 5, 5000);
        tap_check(pipe_status[0] == 0 && pipe_status[1] == PG_ERR_SERVER && strcmp(pipe_state[2], "25P02") == 0 &&
                      pipe_status[3] == 0,
                  "in a transaction an error aborts the rest (%s) until ROLLBACK (%s)", pipe_state[2],
                  pg_strerror(pipe_status[3]));
    } else {
        tap_check(0, "second BEGIN on the pipelined pool");
    }
    pipe_reset();
    pq("SELECT string_agg(id::text, ',' ORDER BY id) FROM items WHERE id > 20", 0, NULL, 0, false);
    run_n(loop, 1, 5000);
    tap_check(strcmp(pipe_value[0], "21") == 0, "committed row visible, rolled-back one absent: %s", pipe_value[0]);

    /* Spans of the pipelined pool: one CLIENT span per statement. */
    pg_pool_counters(ppool, &pc1);
    npg = bad_attr = err_spans = err_ok = 0;
    int timeout_spans = 0;
    for (int i = spans0; i < dbt_nspans; i++) {
        const dbt_span_t *s = &dbt_spans[i];
        const char *sys = dbt_attr(s, "db.system.name"), *qt = dbt_attr(s, "db.query.text");
        if (sys == NULL || strcmp(sys, "postgresql") != 0 || (qt != NULL && strstr(qt, "pg_terminate_backend")))
            continue;
        npg++;
        if (s->kind != TRACE_KIND_CLIENT || qt == NULL || dbt_attr(s, "db.operation.name") == NULL ||
            dbt_attr(s, "server.port") == NULL)
            bad_attr++;
        if (s->status == TRACE_STATUS_ERROR) {
            err_spans++;
            err_ok += dbt_attr(s, "error.type") != NULL;
            const char *et = dbt_attr(s, "error.type");
            timeout_spans += et != NULL && strcmp(et, "timeout") == 0;
        }
    }
    tap_check((uint64_t)npg == pc1.queries && bad_attr == 0,
              "pipelined: one CLIENT span per statement with the DB attributes: %d spans, %llu queries, %d bad",
              npg, (unsigned long long)pc1.queries, bad_attr);
    tap_check(err_spans > 0 && err_ok == err_spans && timeout_spans == 2,
              "pipelined error spans carry error.type (%d/%d), 2 of them timeout (%d)", err_ok, err_spans,
              timeout_spans);
    pg_pool_destroy(ppool);

    pg_pool_destroy(pool);
    loop_destroy(loop);
    trace_shutdown();
    dbt_harness(argv[1], "stop", dir);
    rmdir(tmpl);
    return tap_done();
}
