/*
 * tests/db/test_migrate.c - shop-migrate and the schema of db/ against a
 * private PostgreSQL cluster (tests/db/pg-harness.sh): migrations applied in
 * order and recorded, `up` twice is a no-op, a changed applied file is
 * refused by name, a failing migration leaves nothing behind, the seed is
 * idempotent, and every constraint the services rely on for the saga,
 * idempotency and the outbox rejects the row it exists to reject.
 *
 * Usage: test_migrate pg-harness.sh shop-migrate MIGRATIONS_DIR SEED_FILE
 *   meson test -C var/build/main db_migrate
 */
#include <dirent.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "tap.h"

static const char *g_migrate, *g_seed;
static char g_out[16384]; /* stdout + stderr of the last run() */

/* Runs a shell command, keeps its output in g_out; returns the exit status
 * (or -1 if it did not exit normally). */
__attribute__((format(printf, 1, 2))) static int run(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char full[4200];
    snprintf(full, sizeof full, "(%s) 2>&1", cmd);
    g_out[0] = '\0';
    FILE *f = popen(full, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(g_out, 1, sizeof g_out - 1, f);
    g_out[n] = '\0';
    int st = pclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* shop-migrate with a conninfo, a migrations directory and a command. */
static int migrate(const char *ci, const char *dir, const char *cmd)
{
    return run("'%s' --conninfo '%s' --dir '%s' --seed-file '%s' %s", g_migrate, ci, dir, g_seed, cmd);
}

static int count_lines_with(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* First column of the first row as text (static), or NULL on error. */
static const char *q1(PGconn *c, const char *sql)
{
    static char v[512];
    PGresult *r = PQexec(c, sql);
    const char *out = NULL;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) >= 1) {
        snprintf(v, sizeof v, "%s", PQgetisnull(r, 0, 0) ? "(null)" : PQgetvalue(r, 0, 0));
        out = v;
    } else {
        tap_diag("%s: %s", sql, PQerrorMessage(c));
    }
    PQclear(r);
    return out;
}

/* v, or `dflt` when v is NULL (a failed query). */
static const char *nz(const char *v, const char *dflt) { return v != NULL ? v : dflt; }

static bool ok_exec(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok)
        tap_diag("%s: %s", sql, PQerrorMessage(c));
    PQclear(r);
    return ok;
}

/* Runs a statement that must fail with `sqlstate`; checks and says why. */
static void must_fail(PGconn *c, const char *sqlstate, const char *why, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    bool failed = PQresultStatus(r) == PGRES_FATAL_ERROR;
    tap_check(failed && st != NULL && strcmp(st, sqlstate) == 0, "%s: refused with SQLSTATE %s (got %s%s)", why,
              sqlstate, failed ? "" : "success", st ? st : "");
    PQclear(r);
}

static int count_files(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (l > 4 && strcmp(e->d_name + l - 4, ".sql") == 0)
            n++;
    }
    closedir(d);
    return n;
}

static const char *const k_tables[] = {"users", "products", "orders", "stock_movements",
                                       "payments", "outbox", "schema_migrations"};

static void test_up_status(PGconn *c, const char *ci, const char *dir, int nfiles)
{
    int rc = migrate(ci, dir, "status");
    char want[64];
    snprintf(want, sizeof want, "0 applied, %d pending", nfiles);
    tap_check(rc == 0 && strstr(g_out, want) != NULL, "status on an empty database: %s (rc %d)", want, rc);
    tap_check(strcmp(nz(q1(c, "SELECT to_regclass('schema_migrations') IS NULL"), ""), "t") == 0,
              "status creates nothing");

    rc = migrate(ci, dir, "seed");
    tap_check(rc == 1 && strstr(g_out, "pending") != NULL, "seed before up is refused: migrations pending");

    rc = migrate(ci, dir, "up");
    tap_check(rc == 0 && count_lines_with(g_out, "applied 0") == nfiles, "up applies all %d migrations (rc %d)",
              nfiles, rc);
    if (rc != 0)
        tap_diag("%s", g_out);
    for (size_t i = 0; i < sizeof k_tables / sizeof k_tables[0]; i++) {
        char sql[128];
        snprintf(sql, sizeof sql, "SELECT to_regclass('%s') IS NOT NULL", k_tables[i]);
        tap_check(strcmp(nz(q1(c, sql), ""), "t") == 0, "table %s exists after up", k_tables[i]);
    }
    const char *n = q1(c, "SELECT count(*) FROM schema_migrations WHERE checksum ~ '^[0-9a-f]{64}$' "
                          "AND name ~ '^[0-9]{4}_[a-z0-9_]+\\.sql$' AND version = substr(name, 1, 4)::int");
    tap_check(n != NULL && atoi(n) == nfiles, "schema_migrations records %d migrations with name and sha256 (got %s)",
              nfiles, n ? n : "error");
    char before[128];
    snprintf(before, sizeof before, "%s", nz(q1(c, "SELECT max(applied_at)::text FROM schema_migrations"), ""));

    rc = migrate(ci, dir, "up");
    tap_check(rc == 0 && strstr(g_out, "up to date") != NULL && strstr(g_out, "applied 0") == NULL,
              "second up is a no-op (rc %d)", rc);
    const char *after = q1(c, "SELECT max(applied_at)::text FROM schema_migrations");
    tap_check(after != NULL && strcmp(after, before) == 0 &&
                  atoi(nz(q1(c, "SELECT count(*) FROM schema_migrations"), "0")) == nfiles,
              "second up leaves schema_migrations as it was");

    rc = migrate(ci, dir, "status");
    snprintf(want, sizeof want, "%d applied, 0 pending, 0 problem(s)", nfiles);
    tap_check(rc == 0 && strstr(g_out, want) != NULL && count_lines_with(g_out, "  applied  ") == nfiles,
              "status shows all %d applied (rc %d)", nfiles, rc);
}

/* A copy of the migrations in `tmp`, edited, must be refused by name. */
static void test_changed_and_failing(PGconn *c, const char *ci, const char *dir, const char *tmp)
{
    char copy[400];
    snprintf(copy, sizeof copy, "%s/migrations", tmp);
    int rc = run("mkdir -p '%s' && cp '%s'/*.sql '%s'/ && printf '\\n-- an edit after release\\n' >> "
                 "'%s/0002_orders.sql'", copy, dir, copy, copy);
    tap_check(rc == 0, "copied the migrations and edited 0002_orders.sql");

    rc = migrate(ci, copy, "up");
    tap_check(rc == 1 && strstr(g_out, "0002_orders.sql") != NULL && strstr(g_out, "changed") != NULL,
              "up refuses a changed applied migration, naming 0002_orders.sql (rc %d)", rc);
    rc = migrate(ci, copy, "status");
    tap_check(rc == 1 && strstr(g_out, "changed   0002_orders.sql") != NULL, "status marks it changed, exit 1");
    rc = migrate(ci, copy, "seed");
    tap_check(rc == 1 && strstr(g_out, "0002_orders.sql") != NULL, "seed refuses too");

    /* Back to the released file: a migration that fails half-way leaves no
     * table and no record, and stops the run. */
    run("cp '%s/0002_orders.sql' '%s/'", dir, copy);
    run("printf 'CREATE TABLE half_done (x int);\\nSELECT no_such_function();\\n' > '%s/0900_broken.sql'", copy);
    rc = migrate(ci, copy, "up");
    tap_check(rc == 1 && strstr(g_out, "0900_broken.sql") != NULL, "a failing migration stops up, named (rc %d)", rc);
    tap_check(strcmp(nz(q1(c, "SELECT to_regclass('half_done') IS NULL"), ""), "t") == 0 &&
                  strcmp(nz(q1(c, "SELECT count(*) FROM schema_migrations WHERE version = 900"), ""), "0") == 0,
              "its transaction rolled back: no table, no record");

    /* Fixed under a new number: only it is applied. */
    run("rm '%s/0900_broken.sql' && printf 'CREATE TABLE later_one (x int);\\n' > '%s/0901_later_one.sql'", copy,
        copy);
    rc = migrate(ci, copy, "up");
    tap_check(rc == 0 && count_lines_with(g_out, "applied 0") == 1 && strstr(g_out, "applied 0901_later_one.sql"),
              "a new migration is applied alone (rc %d)", rc);

    /* A pending migration numbered below the newest applied one. */
    run("printf 'SELECT 1;\\n' > '%s/0899_late_merge.sql'", copy);
    rc = migrate(ci, copy, "up");
    tap_check(rc == 1 && strstr(g_out, "0899_late_merge.sql") != NULL && strstr(g_out, "out of order"),
              "a pending migration older than the newest applied is refused (rc %d)", rc);
    run("rm '%s/0899_late_merge.sql' '%s/0901_later_one.sql'", copy, copy);
    rc = migrate(ci, copy, "up");
    tap_check(rc == 1 && strstr(g_out, "0901") != NULL && strstr(g_out, "no file"),
              "an applied migration whose file is gone is refused (rc %d)", rc);
    ok_exec(c, "DROP TABLE later_one");
    ok_exec(c, "DELETE FROM schema_migrations WHERE version = 901");
    run("rm -rf '%s'", copy);
}

static void test_seed(PGconn *c, const char *ci, const char *dir)
{
    int rc = migrate(ci, dir, "seed");
    tap_check(rc == 0, "seed loads (rc %d)", rc);
    if (rc != 0)
        tap_diag("%s", g_out);
    static const char *digest_sql =
        "SELECT (SELECT count(*) FROM users) || '/' || (SELECT count(*) FROM products) || '/' || "
        "(SELECT md5(string_agg(id || name || email, ',' ORDER BY id)) FROM users) || '/' || "
        "(SELECT md5(string_agg(id || name || price_cents || ':' || stock, ',' ORDER BY id)) FROM products)";
    char first[256];
    snprintf(first, sizeof first, "%s", nz(q1(c, digest_sql), "error"));
    const char *users = q1(c, "SELECT count(*) FROM users");
    tap_check(users && atoi(users) >= 1000, "thousands of users (%s)", users ? users : "error");
    const char *products = q1(c, "SELECT count(*) FROM products");
    tap_check(products && atoi(products) >= 1000, "thousands of products (%s)", products ? products : "error");

    tap_check(strcmp(nz(q1(c, "SELECT count(*) FROM users WHERE id = 'user123' AND email <> ''"), ""), "1") == 0,
              "user123 exists");
    tap_check(strcmp(nz(q1(c, "SELECT count(*) FROM products WHERE id = 'prod456' AND price_cents BETWEEN 100 "
                           "AND 1000000 AND stock >= 1000"), ""),
                     "1") == 0,
              "prod456 exists with a sane price in cents and stock >= 1000");
    tap_check(strcmp(nz(q1(c, "SELECT count(*) FROM products WHERE price_cents <= 0 OR stock < 100000"), ""), "0") == 0,
              "every product has a positive price and enough stock for a benchmark");
    tap_check(strcmp(nz(q1(c, "SELECT count(DISTINCT price_cents) > 100 AND count(DISTINCT stock) > 100 FROM products"), ""),
                     "t") == 0,
              "prices and stock vary across products");

    rc = migrate(ci, dir, "seed");
    const char *second = q1(c, digest_sql);
    tap_check(rc == 0 && second && strcmp(first, second) == 0, "seed twice: same row counts and contents (%s)", first);

    /* Stock the demo consumed is not reset by a later seed. */
    ok_exec(c, "UPDATE products SET stock = stock - 2 WHERE id = 'prod456'");
    char sold[64];
    snprintf(sold, sizeof sold, "%s", nz(q1(c, "SELECT stock FROM products WHERE id = 'prod456'"), ""));
    migrate(ci, dir, "seed");
    const char *now = q1(c, "SELECT stock FROM products WHERE id = 'prod456'");
    tap_check(now && strcmp(now, sold) == 0, "seed leaves existing rows alone (prod456 stock stays %s)", sold);
}

static void test_constraints(PGconn *c)
{
    /* products */
    must_fail(c, "23514", "stock >= 0: an UPDATE selling more than the stock",
              "UPDATE products SET stock = stock - 100000000 WHERE id = 'prod456'");
    must_fail(c, "23514", "stock >= 0: an INSERT with negative stock",
              "INSERT INTO products (id, name, price_cents, stock) VALUES ('pneg', 'n', 100, -1)");
    must_fail(c, "23514", "price_cents > 0",
              "INSERT INTO products (id, name, price_cents, stock) VALUES ('pzero', 'n', 0, 1)");
    must_fail(c, "23505", "users.email unique",
              "INSERT INTO users (id, name, email) VALUES ('dup', 'd', 'user123@example.com')");

    /* orders */
    tap_check(ok_exec(c, "INSERT INTO orders (id, user_id, product_id, quantity, amount_cents, idempotency_key) "
                         "VALUES ('o1', 'user123', 'prod456', 2, 9998, 'key-1')"),
              "an order with an idempotency key inserts (status defaults to pending)");
    must_fail(c, "23505", "idempotency key unique per user",
              "INSERT INTO orders (id, user_id, product_id, quantity, amount_cents, idempotency_key) "
              "VALUES ('o2', 'user123', 'prod456', 2, 9998, 'key-1')");
    tap_check(ok_exec(c, "INSERT INTO orders (id, user_id, product_id, quantity, amount_cents, idempotency_key) "
                         "VALUES ('o3', 'user7', 'prod456', 1, 4999, 'key-1')"),
              "the same key for another user is a different order");
    tap_check(ok_exec(c, "INSERT INTO orders (id, user_id, product_id, quantity, amount_cents) VALUES "
                         "('o4', 'user123', 'prod1', 1, 100), ('o5', 'user123', 'prod1', 1, 100)"),
              "orders without a key never collide");
    must_fail(c, "23514", "order status is pending|completed|failed",
              "UPDATE orders SET status = 'shipped' WHERE id = 'o1'");
    must_fail(c, "23514", "a failed order needs a failure_reason",
              "UPDATE orders SET status = 'failed' WHERE id = 'o1'");
    tap_check(ok_exec(c, "UPDATE orders SET status = 'failed', failure_reason = 'insufficient_stock' WHERE id = 'o1'"),
              "failed with a reason is accepted");
    must_fail(c, "23514", "a completed order has no failure_reason",
              "UPDATE orders SET status = 'completed' WHERE id = 'o1'");
    must_fail(c, "23514", "order quantity > 0",
              "INSERT INTO orders (id, user_id, product_id, quantity, amount_cents) VALUES ('o6', 'u', 'p', 0, 1)");
    must_fail(c, "23514", "order amount_cents > 0",
              "INSERT INTO orders (id, user_id, product_id, quantity, amount_cents) VALUES ('o7', 'u', 'p', 1, 0)");
    must_fail(c, "23505", "order id is the primary key",
              "INSERT INTO orders (id, user_id, product_id, quantity, amount_cents) VALUES ('o4', 'u', 'p', 1, 1)");

    /* stock_movements */
    tap_check(ok_exec(c, "INSERT INTO stock_movements (order_id, kind, product_id, quantity) "
                         "VALUES ('o1', 'reduce', 'prod456', 2), ('o1', 'restore', 'prod456', 2)"),
              "one reduce and one restore per order");
    must_fail(c, "23505", "a second reduce for the same order",
              "INSERT INTO stock_movements (order_id, kind, product_id, quantity) VALUES ('o1', 'reduce', 'prod456', 2)");
    must_fail(c, "23503", "a movement of an unknown product",
              "INSERT INTO stock_movements (order_id, kind, product_id, quantity) VALUES ('o9', 'reduce', 'nope', 1)");
    must_fail(c, "23514", "movement kind is reduce|restore",
              "INSERT INTO stock_movements (order_id, kind, product_id, quantity) VALUES ('o9', 'steal', 'prod1', 1)");

    /* payments */
    tap_check(ok_exec(c, "INSERT INTO payments (id, order_id, user_id, amount_cents) VALUES ('pay1', 'o1', 'user123', 9998)"),
              "a payment for o1 inserts (currency USD, status pending)");
    must_fail(c, "23505", "a second payment for the same order",
              "INSERT INTO payments (id, order_id, user_id, amount_cents) VALUES ('pay2', 'o1', 'user123', 9998)");
    must_fail(c, "23514", "payment amount_cents > 0",
              "INSERT INTO payments (id, order_id, user_id, amount_cents) VALUES ('pay3', 'o3', 'user7', -5)");
    must_fail(c, "23514", "a failed payment needs a reason", "UPDATE payments SET status = 'failed' WHERE id = 'pay1'");
    must_fail(c, "23514", "currency is three capitals",
              "INSERT INTO payments (id, order_id, user_id, amount_cents, currency) VALUES ('pay4', 'o4', 'u', 1, 'usd')");

    /* outbox */
    tap_check(ok_exec(c, "INSERT INTO outbox (aggregate_id, event_type, key, payload, traceparent) VALUES "
                         "('o1', 'order.failed', 'o1', '{\"order_id\":\"o1\"}', "
                         "'00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01')"),
              "an outbox event inserts (topic defaults to order-events, unsent)");
    tap_check(strcmp(nz(q1(c, "SELECT topic || ' ' || (sent_at IS NULL) || ' ' || (payload->>'order_id') FROM outbox"), ""),
                     "order-events true o1") == 0,
              "the event reads back: topic, unsent, JSON payload");
    must_fail(c, "23505", "the same event twice for one order",
              "INSERT INTO outbox (aggregate_id, event_type, key, payload) VALUES ('o1', 'order.failed', 'o1', '{}')");
    must_fail(c, "23514", "traceparent must be W3C-shaped",
              "INSERT INTO outbox (aggregate_id, event_type, key, payload, traceparent) "
              "VALUES ('o2', 'order.failed', 'o2', '{}', 'not-a-traceparent')");
    must_fail(c, "22P02", "payload must be JSON",
              "INSERT INTO outbox (aggregate_id, event_type, key, payload) VALUES ('o3', 'order.failed', 'o3', 'nope')");
}

/* The [postgres] keys of the configuration (here from the environment)
 * make the connection string when --conninfo is absent. */
static void test_config_conninfo(const char *dir, const char *tmp, const char *port)
{
    int rc = run("cd '%s' && : > empty.conf && SHOP_CONFIG=empty.conf SHOP_POSTGRES_HOST=127.0.0.1 "
                 "SHOP_POSTGRES_PORT=%s SHOP_POSTGRES_DBNAME=migtest SHOP_POSTGRES_USER=postgres "
                 "'%s' --dir '%s' status",
                 tmp, port, g_migrate, dir);
    tap_check(rc == 0 && strstr(g_out, " 0 pending") != NULL, "conninfo from [postgres] keys (env overrides) (rc %d)",
              rc);
    if (rc != 0)
        tap_diag("%s", g_out);
    rc = run("cd '%s' && SHOP_CONFIG=empty.conf SHOP_POSTGRES_PORT=0 '%s' --dir '%s' status", tmp, g_migrate, dir);
    tap_check(rc == 1 && strstr(g_out, "SHOP_POSTGRES_PORT") != NULL, "a bad [postgres] value is named (rc %d)", rc);
    rc = run("'%s' --bogus", g_migrate);
    tap_check(rc == 2, "an unknown option is a usage error (rc %d)", rc);
    rc = run("'%s' --conninfo 'host=127.0.0.1 port=1 connect_timeout=2' --dir '%s' up", g_migrate, dir);
    tap_check(rc == 1 && strstr(g_out, "connect") != NULL, "an unreachable server is a connect error (rc %d)", rc);
}

/* Two runners at once (two hosts starting together): the advisory lock
 * makes one apply everything and the other find it done. */
static void test_concurrent_up(PGconn *admin, const char *port, const char *dir, const char *tmp)
{
    tap_check(ok_exec(admin, "CREATE DATABASE migconc"), "created database migconc");
    char ci[256];
    snprintf(ci, sizeof ci, "host=127.0.0.1 port=%s dbname=migconc user=postgres", port);
    int rc = run("cd '%s' && for i in 1 2 3; do ('%s' --conninfo '%s' --dir '%s' up >up$i.out 2>&1; echo $? >up$i.rc) & "
                 "done; wait; cat up1.rc up2.rc up3.rc; cat up1.out up2.out up3.out",
                 tmp, g_migrate, ci, dir);
    tap_check(rc == 0 && strncmp(g_out, "0\n0\n0\n", 6) == 0, "three concurrent up runs all exit 0");
    tap_check(count_lines_with(g_out, "applied 0001_") == 1 && count_lines_with(g_out, "up to date") == 2,
              "exactly one of them applied the migrations");
    PGconn *c = PQconnectdb(ci);
    const char *n = q1(c, "SELECT count(*) FROM schema_migrations");
    int nfiles = count_files(dir);
    tap_check(n != NULL && atoi(n) == nfiles, "schema_migrations has %d rows, once each (got %s)", nfiles,
              nz(n, "error"));
    PQfinish(c);
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: test_migrate pg-harness.sh shop-migrate MIGRATIONS_DIR SEED_FILE\n");
        return 2;
    }
    const char *harness = argv[1], *dir = argv[3];
    /* Absolute: some cases run it from another directory. */
    static char migrate_path[4096];
    if (realpath(argv[2], migrate_path) == NULL) {
        perror(argv[2]);
        return 1;
    }
    g_migrate = migrate_path;
    g_seed = argv[4];
    int nfiles = count_files(dir);
    tap_check(nfiles >= 5, "%d migration files in %s", nfiles, dir);

    char tmp[] = "/tmp/shop-mig-XXXXXX";
    if (mkdtemp(tmp) == NULL || chmod(tmp, 0711) != 0) {
        perror("mkdtemp");
        return 1;
    }
    char pgdir[64];
    snprintf(pgdir, sizeof pgdir, "%s/pg", tmp);
    int rc = run("'%s' start '%s'", harness, pgdir);
    g_out[strcspn(g_out, "\n")] = '\0';
    char admin[512];
    snprintf(admin, sizeof admin, "%.500s", g_out);
    if (!tap_check(rc == 0 && strstr(admin, "port=") != NULL, "private cluster started: %s", admin)) {
        run("rm -rf '%s'", tmp);
        return tap_done();
    }
    char port[16] = "";
    sscanf(strstr(admin, "port=") + 5, "%15[0-9]", port);

    PGconn *a = PQconnectdb(admin);
    tap_check(PQstatus(a) == CONNECTION_OK && ok_exec(a, "CREATE DATABASE migtest"), "created database migtest");
    char ci[600];
    snprintf(ci, sizeof ci, "host=127.0.0.1 port=%s dbname=migtest user=postgres", port);
    PGconn *c = PQconnectdb(ci);
    if (tap_check(PQstatus(c) == CONNECTION_OK, "connected to migtest")) {
        test_up_status(c, ci, dir, nfiles);
        test_changed_and_failing(c, ci, dir, tmp);
        test_seed(c, ci, dir);
        test_constraints(c);
        test_config_conninfo(dir, tmp, port);
        test_concurrent_up(a, port, dir, tmp);
    }
    PQfinish(c);
    PQfinish(a);
    run("'%s' stop '%s'", harness, pgdir);
    run("rm -rf '%s'", tmp);
    return tap_done();
}
