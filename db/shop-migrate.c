/*
 * db/shop-migrate.c - applies the PostgreSQL schema migrations of
 * db/migrations in order, records them, and loads the seed data.
 *
 *   shop-migrate --conninfo 'host=127.0.0.1 port=5432 dbname=shop user=shop' up
 *   shop-migrate status                     # conninfo from [postgres] of the config file
 *   shop-migrate --config deploy/shop.conf seed
 *   shop-migrate --dir ./db/migrations --seed-file ./db/seed.sql up
 *
 * Commands:
 *   up      applies every pending migration, each in its own transaction
 *           together with its schema_migrations row (version, name,
 *           checksum, applied_at), in version order.
 *   status  lists each migration as applied, pending, changed or missing;
 *           exit status 1 if any is changed or missing.
 *   seed    runs the seed file in one transaction; the file is written to
 *           be idempotent (ON CONFLICT DO NOTHING). Requires no pending
 *           migration.
 *
 * Migration files are NNNN_name.sql (four digits, then [a-z0-9_]), plain
 * SQL without BEGIN/COMMIT of its own (the runner wraps it; so no CREATE
 * INDEX CONCURRENTLY). A file that was applied must never change: `up` and
 * `seed` refuse to run when an applied file's SHA-256 differs from the
 * recorded one, naming the file; add a new migration instead. They also
 * refuse an applied version whose file is gone and a pending version older
 * than the newest applied one (a migration merged out of order).
 *
 * --dir defaults to the source tree's db/migrations and --seed-file to its
 * db/seed.sql, both set by meson at build time (SHOP_MIGRATIONS_DIR,
 * SHOP_SEED_FILE); an installed or relocated binary passes both.
 * Without --conninfo the [postgres] keys of the configuration (--config
 * FILE, else $SHOP_CONFIG or ./shop.conf, with SHOP_POSTGRES_* overrides)
 * make the connection string; the password comes from PGPASSWORD or
 * ~/.pgpass as usual for libpq.
 *
 * Two runners at once are serialised by a session advisory lock, so a
 * start-up script may run `up` from several hosts. This is a blocking CLI
 * tool (plain libpq), never run on an event loop.
 *
 * Exit status: 0 done, 1 refused or failed (message on stderr), 2 usage.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>
#include <openssl/evp.h>

#include "config.h"

#ifndef SHOP_MIGRATIONS_DIR
#define SHOP_MIGRATIONS_DIR "db/migrations"
#endif
#ifndef SHOP_SEED_FILE
#define SHOP_SEED_FILE "db/seed.sql"
#endif

/* Key of the session advisory lock that serialises runners ("shopmig"). */
#define MIG_LOCK_KEY 0x73686f706d6967LL
/* Largest migration or seed file read, in bytes. */
#define MIG_FILE_MAX (16u << 20)

typedef enum { MIG_PENDING, MIG_APPLIED, MIG_CHANGED, MIG_MISSING } mig_state_t;

static const char *const mig_state_names[] = {"pending", "applied", "changed", "missing"};

/* One migration: a file, an applied row, or both. */
typedef struct {
    int version;
    char file[256];          /* file name (no directory); "" if missing */
    char *sql;               /* file contents, NUL-terminated; owned */
    char sha[65];            /* hex SHA-256 of the file */
    bool applied;
    char applied_name[256];  /* name recorded in schema_migrations */
    char applied_sha[65];
    char applied_at[64];
    mig_state_t state;
} mig_t;

typedef struct {
    mig_t *v;
    size_t n, cap;
} mig_list_t;

static void mig_list_free(mig_list_t *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i].sql);
    free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}

/* Returns the entry for `version`, appending a blank one when absent; NULL
 * when out of memory. */
static mig_t *mig_list_get(mig_list_t *l, int version)
{
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i].version == version)
            return &l->v[i];
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        mig_t *v = realloc(l->v, cap * sizeof *v);
        if (v == NULL)
            return NULL;
        l->v = v;
        l->cap = cap;
    }
    mig_t *m = &l->v[l->n++];
    memset(m, 0, sizeof *m);
    m->version = version;
    return m;
}

static int mig_cmp(const void *a, const void *b)
{
    const mig_t *x = a, *y = b;
    return (x->version > y->version) - (x->version < y->version);
}

/* Reads a whole file; returns 0 and a NUL-terminated malloc'd *out (caller
 * frees), or -errno (-EFBIG above MIG_FILE_MAX). */
static int read_text(const char *path, char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return -errno;
    size_t cap = 8192, n = 0;
    char *buf = malloc(cap);
    int rc = 0;
    if (buf == NULL) {
        rc = -ENOMEM;
        goto err;
    }
    for (;;) {
        if (n + 1 == cap) {
            if (cap >= MIG_FILE_MAX) {
                rc = -EFBIG;
                goto err;
            }
            char *b = realloc(buf, cap * 2);
            if (b == NULL) {
                rc = -ENOMEM;
                goto err;
            }
            buf = b;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - 1 - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) {
                rc = -EIO;
                goto err;
            }
            break;
        }
    }
    fclose(f);
    buf[n] = '\0';
    *out = buf;
    if (len != NULL)
        *len = n;
    return 0;
err:
    free(buf);
    fclose(f);
    return rc;
}

static int sha256_hex(const char *data, size_t len, char hex[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32)
        return -EIO;
    for (unsigned i = 0; i < mdlen; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return 0;
}

/* Parses "NNNN_name.sql"; returns the version, -1 for another .sql name,
 * -2 for a file that is not .sql (ignored: README, editor files). */
static int parse_name(const char *name)
{
    size_t len = strlen(name);
    if (len < 4 || strcmp(name + len - 4, ".sql") != 0)
        return -2;
    if (len < 4 + 1 + 1 + 4 || len >= 256)
        return -1;
    int v = 0;
    for (int i = 0; i < 4; i++) {
        if (name[i] < '0' || name[i] > '9')
            return -1;
        v = v * 10 + (name[i] - '0');
    }
    if (name[4] != '_')
        return -1;
    for (size_t i = 5; i < len - 4; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return -1;
    }
    return v;
}

/* Adds every migration file of `dir` to the list. Returns 0, or -1 with a
 * message on stderr (unreadable directory or file, bad or duplicate name). */
static int scan_dir(const char *dir, mig_list_t *l)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        fprintf(stderr, "shop-migrate: opendir(%s): %s\n", dir, strerror(errno));
        return -1;
    }
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int v = parse_name(e->d_name);
        if (v == -2)
            continue;
        if (v < 0) {
            fprintf(stderr, "shop-migrate: %s/%s: not a migration name (want NNNN_name.sql, name in [a-z0-9_])\n",
                    dir, e->d_name);
            rc = -1;
            continue;
        }
        mig_t *m = mig_list_get(l, v);
        if (m == NULL) {
            fprintf(stderr, "shop-migrate: out of memory\n");
            rc = -1;
            break;
        }
        if (m->file[0] != '\0') {
            fprintf(stderr, "shop-migrate: %s/%s and %s share version %04d\n", dir, m->file, e->d_name, v);
            rc = -1;
            continue;
        }
        snprintf(m->file, sizeof m->file, "%s", e->d_name);
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        size_t len = 0;
        int r = read_text(path, &m->sql, &len);
        if (r < 0) {
            fprintf(stderr, "shop-migrate: read(%s): %s\n", path, strerror(-r));
            rc = -1;
            continue;
        }
        if (sha256_hex(m->sql, len, m->sha) < 0) {
            fprintf(stderr, "shop-migrate: sha256(%s) failed\n", path);
            rc = -1;
        }
    }
    closedir(d);
    return rc;
}

/* ------------------------------------------------------------ database */

/* Runs one command without parameters; prints `what` and the server's
 * message on failure. Returns 0 or -1. */
static int db_exec(PGconn *c, const char *sql, const char *what)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    int ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY;
    if (!ok)
        fprintf(stderr, "shop-migrate: %s: %s", what, PQerrorMessage(c));
    PQclear(r);
    return ok ? 0 : -1;
}

/* Returns 1 if schema_migrations exists, 0 if not, -1 on error. */
static int db_has_table(PGconn *c)
{
    PGresult *r = PQexec(c, "SELECT to_regclass('schema_migrations') IS NOT NULL");
    int rc = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
        rc = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    else
        fprintf(stderr, "shop-migrate: look up schema_migrations: %s", PQerrorMessage(c));
    PQclear(r);
    return rc;
}

/* Adds the applied rows to the list. Returns 0 or -1. */
static int db_load_applied(PGconn *c, mig_list_t *l)
{
    PGresult *r = PQexec(c, "SELECT version, name, checksum, "
                            "to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
                            "FROM schema_migrations ORDER BY version");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "shop-migrate: read schema_migrations: %s", PQerrorMessage(c));
        PQclear(r);
        return -1;
    }
    for (int i = 0; i < PQntuples(r); i++) {
        mig_t *m = mig_list_get(l, atoi(PQgetvalue(r, i, 0)));
        if (m == NULL) {
            PQclear(r);
            fprintf(stderr, "shop-migrate: out of memory\n");
            return -1;
        }
        m->applied = true;
        snprintf(m->applied_name, sizeof m->applied_name, "%s", PQgetvalue(r, i, 1));
        snprintf(m->applied_sha, sizeof m->applied_sha, "%s", PQgetvalue(r, i, 2));
        snprintf(m->applied_at, sizeof m->applied_at, "%s", PQgetvalue(r, i, 3));
    }
    PQclear(r);
    return 0;
}

/* Sorts the list, sets each state and prints every reason to refuse
 * (changed, missing, out of order) when `report`. Returns how many
 * reasons there are; *pending gets the number of pending migrations. */
static int classify(mig_list_t *l, const char *dir, bool report, int *pending)
{
    qsort(l->v, l->n, sizeof *l->v, mig_cmp);
    int problems = 0, newest_applied = -1;
    *pending = 0;
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i].applied)
            newest_applied = l->v[i].version;
    for (size_t i = 0; i < l->n; i++) {
        mig_t *m = &l->v[i];
        if (!m->applied) {
            m->state = MIG_PENDING;
            (*pending)++;
            if (m->version < newest_applied) {
                problems++;
                if (report)
                    fprintf(stderr, "shop-migrate: %s/%s is pending but older than applied version %04d "
                            "(merged out of order?); give it a higher number\n", dir, m->file, newest_applied);
            }
        } else if (m->file[0] == '\0') {
            m->state = MIG_MISSING;
            problems++;
            if (report)
                fprintf(stderr, "shop-migrate: applied migration %04d (%s) has no file in %s\n", m->version,
                        m->applied_name, dir);
        } else if (strcmp(m->sha, m->applied_sha) != 0 || strcmp(m->file, m->applied_name) != 0) {
            m->state = MIG_CHANGED;
            problems++;
            if (report) {
                if (strcmp(m->file, m->applied_name) != 0)
                    fprintf(stderr, "shop-migrate: %s/%s was applied as %s; applied migrations must not be renamed\n",
                            dir, m->file, m->applied_name);
                else
                    fprintf(stderr, "shop-migrate: %s/%s changed after it was applied (checksum %.12s, recorded %.12s); "
                            "restore it and add a new migration instead\n", dir, m->file, m->sha, m->applied_sha);
            }
        } else {
            m->state = MIG_APPLIED;
        }
    }
    return problems;
}

/* Applies one migration and records it, in one transaction. */
static int apply_one(PGconn *c, const char *dir, const mig_t *m)
{
    char what[512];
    snprintf(what, sizeof what, "%s/%s", dir, m->file);
    if (db_exec(c, "BEGIN", "BEGIN") < 0)
        return -1;
    if (db_exec(c, m->sql, what) < 0)
        goto err;
    char ver[16];
    snprintf(ver, sizeof ver, "%d", m->version);
    const char *params[3] = {ver, m->file, m->sha};
    PGresult *r = PQexecParams(c, "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                               3, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        fprintf(stderr, "shop-migrate: record %s: %s", m->file, PQerrorMessage(c));
        PQclear(r);
        goto err;
    }
    PQclear(r);
    if (db_exec(c, "COMMIT", what) < 0)
        goto err;
    return 0;
err:
    db_exec(c, "ROLLBACK", "ROLLBACK");
    return -1;
}

/* ------------------------------------------------------------ commands */

static int cmd_up(PGconn *c, mig_list_t *l, const char *dir)
{
    if (db_exec(c, "CREATE TABLE IF NOT EXISTS schema_migrations ("
                   " version integer PRIMARY KEY CHECK (version >= 0),"
                   " name text NOT NULL,"
                   " checksum text NOT NULL,"
                   " applied_at timestamptz NOT NULL DEFAULT now())",
                "create schema_migrations") < 0)
        return 1;
    if (db_load_applied(c, l) < 0)
        return 1;
    int pending;
    if (classify(l, dir, true, &pending) > 0) {
        fprintf(stderr, "shop-migrate: up refused; nothing applied\n");
        return 1;
    }
    int done = 0;
    for (size_t i = 0; i < l->n; i++) {
        if (l->v[i].state != MIG_PENDING)
            continue;
        if (apply_one(c, dir, &l->v[i]) < 0) {
            fprintf(stderr, "shop-migrate: stopped at %s; %d applied before it\n", l->v[i].file, done);
            return 1;
        }
        printf("applied %s\n", l->v[i].file);
        done++;
    }
    if (done == 0)
        printf("up to date: %zu migrations applied\n", l->n);
    else
        printf("%d migration(s) applied, %zu in all\n", done, l->n);
    return 0;
}

static int cmd_status(PGconn *c, mig_list_t *l, const char *dir)
{
    int has = db_has_table(c);
    if (has < 0 || (has == 1 && db_load_applied(c, l) < 0))
        return 1;
    int pending;
    int problems = classify(l, dir, true, &pending);
    for (size_t i = 0; i < l->n; i++) {
        const mig_t *m = &l->v[i];
        printf("%04d  %-8s  %-40s  %s\n", m->version, mig_state_names[m->state],
               m->file[0] ? m->file : m->applied_name, m->applied ? m->applied_at : "-");
    }
    printf("%zu applied, %d pending, %d problem(s)\n", l->n - (size_t)pending, pending, problems);
    return problems > 0 ? 1 : 0;
}

static int cmd_seed(PGconn *c, mig_list_t *l, const char *dir, const char *seed_file)
{
    int has = db_has_table(c);
    if (has < 0 || (has == 1 && db_load_applied(c, l) < 0))
        return 1;
    int pending;
    if (classify(l, dir, true, &pending) > 0)
        return 1;
    if (pending > 0) {
        fprintf(stderr, "shop-migrate: %d migration(s) pending; run `shop-migrate up` before seed\n", pending);
        return 1;
    }
    char *sql = NULL;
    int r = read_text(seed_file, &sql, NULL);
    if (r < 0) {
        fprintf(stderr, "shop-migrate: read(%s): %s\n", seed_file, strerror(-r));
        return 1;
    }
    int rc = 1;
    if (db_exec(c, "BEGIN", "BEGIN") < 0)
        goto out;
    if (db_exec(c, sql, seed_file) < 0 || db_exec(c, "COMMIT", seed_file) < 0) {
        db_exec(c, "ROLLBACK", "ROLLBACK");
        goto out;
    }
    PGresult *res = PQexec(c, "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM products)");
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
        printf("seeded from %s: %s users, %s products\n", seed_file, PQgetvalue(res, 0, 0),
               PQgetvalue(res, 0, 1));
    PQclear(res);
    rc = 0;
out:
    free(sql);
    return rc;
}

/* ------------------------------------------------------------ connection */

/* Appends " key='value'" with libpq quoting (backslash and quote escaped). */
static void ci_append(char *buf, size_t cap, const char *key, const char *val)
{
    size_t n = strlen(buf);
    n += (size_t)snprintf(buf + n, n < cap ? cap - n : 0, "%s%s='", n ? " " : "", key);
    for (const char *p = val; *p && n + 3 < cap; p++) {
        if (*p == '\'' || *p == '\\')
            buf[n++] = '\\';
        buf[n++] = *p;
    }
    if (n + 2 < cap) {
        buf[n++] = '\'';
        buf[n] = '\0';
    }
}

/* Builds the conninfo from the [postgres] keys. Returns 0 or -1. */
static int conninfo_from_config(const char *path, char *buf, size_t cap)
{
    config_t *cfg;
    char err[512];
    if (config_load(path, &cfg, err, sizeof err) < 0) {
        fprintf(stderr, "shop-migrate: %s\n", err);
        return -1;
    }
    char num[32];
    buf[0] = '\0';
    ci_append(buf, cap, "host", config_str(cfg, CONFIG_POSTGRES_HOST));
    snprintf(num, sizeof num, "%lld", (long long)config_int(cfg, CONFIG_POSTGRES_PORT));
    ci_append(buf, cap, "port", num);
    ci_append(buf, cap, "dbname", config_str(cfg, CONFIG_POSTGRES_DBNAME));
    ci_append(buf, cap, "user", config_str(cfg, CONFIG_POSTGRES_USER));
    /* libpq's connect_timeout is whole seconds and treats 1 as 2. */
    long long s = (config_int(cfg, CONFIG_POSTGRES_CONNECT_TIMEOUT) + 999) / 1000;
    snprintf(num, sizeof num, "%lld", s < 2 ? 2 : s);
    ci_append(buf, cap, "connect_timeout", num);
    config_free(cfg);
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: shop-migrate [--conninfo STR | --config FILE] [--dir DIR] [--seed-file FILE] up|status|seed\n"
               "  --conninfo STR   libpq connection string or URI (default: [postgres] of the config)\n"
               "  --config FILE    configuration file for [postgres] (default: $SHOP_CONFIG, ./shop.conf)\n"
               "  --dir DIR        migrations directory (default: %s)\n"
               "  --seed-file FILE seed SQL (default: %s)\n",
            SHOP_MIGRATIONS_DIR, SHOP_SEED_FILE);
}

int main(int argc, char **argv)
{
    const char *conninfo = NULL, *config_path = NULL;
    const char *dir = SHOP_MIGRATIONS_DIR, *seed_file = SHOP_SEED_FILE;
    static const struct option opts[] = {
        {"conninfo", required_argument, NULL, 'c'}, {"config", required_argument, NULL, 'f'},
        {"dir", required_argument, NULL, 'd'},      {"seed-file", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
    };
    int o;
    while ((o = getopt_long(argc, argv, "c:f:d:s:h", opts, NULL)) != -1) {
        switch (o) {
        case 'c': conninfo = optarg; break;
        case 'f': config_path = optarg; break;
        case 'd': dir = optarg; break;
        case 's': seed_file = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind + 1 != argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[optind];
    if (strcmp(cmd, "up") != 0 && strcmp(cmd, "status") != 0 && strcmp(cmd, "seed") != 0) {
        fprintf(stderr, "shop-migrate: unknown command '%s'\n", cmd);
        usage(stderr);
        return 2;
    }

    char built[2048];
    if (conninfo == NULL) {
        if (conninfo_from_config(config_path, built, sizeof built) < 0)
            return 1;
        conninfo = built;
    }

    mig_list_t l = {0};
    int rc = 1;
    PGconn *c = NULL;
    if (scan_dir(dir, &l) < 0)
        goto out;

    /* expand_dbname: the conninfo (string or URI) rides in "dbname"; the
     * application_name makes the runner visible in pg_stat_activity. */
    const char *const keys[] = {"dbname", "application_name", NULL};
    const char *const vals[] = {conninfo, "shop-migrate", NULL};
    c = PQconnectdbParams(keys, vals, 1);
    if (c == NULL || PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "shop-migrate: connect: %s", c ? PQerrorMessage(c) : "out of memory\n");
        goto out;
    }
    if (db_exec(c, "SET client_min_messages = warning", "SET client_min_messages") < 0)
        goto out;
    /* Serialises concurrent runners; released when the session ends. */
    char lock[96];
    snprintf(lock, sizeof lock, "SELECT pg_advisory_lock(%lld)", MIG_LOCK_KEY);
    if (db_exec(c, lock, "pg_advisory_lock") < 0)
        goto out;

    if (strcmp(cmd, "up") == 0)
        rc = cmd_up(c, &l, dir);
    else if (strcmp(cmd, "status") == 0)
        rc = cmd_status(c, &l, dir);
    else
        rc = cmd_seed(c, &l, dir, seed_file);
out:
    if (c != NULL)
        PQfinish(c);
    mig_list_free(&l);
    return rc;
}
