/*
 * tests/services/test_services.c - user-svc and inventory-svc as real
 * processes against a private PostgreSQL (tests/db/pg-harness.sh, migrated
 * and seeded with shop-migrate) and a private Redis (redis-harness.sh),
 * called with our gRPC client; their spans are read straight from a
 * private span ring this test creates and consumes.
 *
 * Usage: test_services PG_HARNESS REDIS_HARNESS SHOP_MIGRATE MIGRATIONS SEED USER_SVC INVENTORY_SVC
 *
 * Covers: --check-config (ok, and file:line:key for a bad file); health
 * SERVING; GetUser miss then hit (spans GET + SELECT users + SET, then GET
 * only), NOT_FOUND, INVALID_ARGUMENT, Redis paused (slow) and killed
 * (still answers from PostgreSQL), Redis back (caching resumes);
 * CheckStock; ReduceStock idempotent per order (5 calls, one decrement);
 * 50 concurrent ReduceStock on stock 10 (exactly 10 succeed, stock 0);
 * RestoreStock once, the tombstone refusing a late ReduceStock; span
 * names, attributes and parents; SIGTERM with a call in flight (answered,
 * exit 0).
 */
#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core.h"
#include "grpc.h"
#include "loop.h"
#include "ring.h"
#include "shop_proto.h"
#include "tap.h"

#define MS 1000000ull

static const char *g_pgh, *g_rh, *g_migrate, *g_migdir, *g_seed, *g_user_bin, *g_inv_bin;
static char g_tmp[64], g_conf[160], g_redis_dir[128], g_pgci[256], g_ring_name[64];
static loop_t *g_loop;
static ring_t *g_ring;

/* ------------------------------------------------------------ helpers */

static __attribute__((format(printf, 1, 2))) int sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* First line of a command's output (static buffer). */
static __attribute__((format(printf, 1, 2))) const char *sh_out(const char *fmt, ...)
{
    static char line[512];
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    line[0] = '\0';
    FILE *f = popen(cmd, "r");
    if (!f)
        return line;
    if (!fgets(line, sizeof line, f))
        line[0] = '\0';
    pclose(f);
    line[strcspn(line, "\n")] = '\0';
    return line;
}

typedef struct {
    pid_t pid;
    int port;
    char err_path[160];
} proc_t;

/* Starts a service; waits for "... listening on ADDR:PORT" on its stdout. */
static int svc_start(proc_t *p, const char *bin, const char *tag)
{
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    snprintf(p->err_path, sizeof p->err_path, "%s/%s.err", g_tmp, tag);
    p->pid = fork();
    if (p->pid == 0) {
        dup2(fds[1], 1);
        int e = open(p->err_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (e >= 0)
            dup2(e, 2);
        close(fds[0]);
        close(fds[1]);
        execl(bin, bin, "--config", g_conf, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    char buf[256];
    size_t n = 0;
    p->port = 0;
    uint64_t deadline = loop_now_ns() + 10000 * MS;
    while (loop_now_ns() < deadline && n < sizeof buf - 1) {
        struct pollfd pf = {fds[0], POLLIN, 0};
        if (poll(&pf, 1, 100) <= 0)
            continue;
        ssize_t k = read(fds[0], buf + n, sizeof buf - 1 - n);
        if (k <= 0)
            break;
        n += (size_t)k;
        buf[n] = '\0';
        char *nl = strchr(buf, '\n');
        if (nl) {
            char *colon = strrchr(buf, ':');
            if (strstr(buf, "listening on") && colon)
                p->port = atoi(colon + 1);
            break;
        }
    }
    close(fds[0]);
    return p->port > 0 ? 0 : -1;
}

/* Waits for a process's exit; returns its status or -1 (killed after timeout). */
static int svc_wait(proc_t *p, int timeout_ms)
{
    for (int i = 0; i < timeout_ms / 10; i++) {
        int st;
        pid_t r = waitpid(p->pid, &st, WNOHANG);
        if (r == p->pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        usleep(10000);
    }
    kill(p->pid, SIGKILL);
    waitpid(p->pid, NULL, 0);
    return -1;
}

/* ------------------------------------------------------------ gRPC calls */

typedef struct {
    bool done;
    int status;
    char message[256];
    uint8_t resp[4096];
    size_t resp_len;
    uint64_t ns; /* call duration */
    uint64_t t0;
} call_t;

static void on_result(const grpc_result_t *r, void *arg)
{
    call_t *c = arg;
    c->done = true;
    c->status = (int)r->status;
    snprintf(c->message, sizeof c->message, "%s", r->message ? r->message : "");
    c->resp_len = r->response_len < sizeof c->resp ? r->response_len : 0;
    if (c->resp_len)
        memcpy(c->resp, r->response, c->resp_len);
    c->ns = loop_now_ns() - c->t0;
}

typedef struct {
    call_t *calls;
    int n;
    loop_timer_t t;
    uint64_t deadline;
} waiter_t;

static void wait_tick(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)t;
    waiter_t *w = arg;
    bool all = true;
    for (int i = 0; i < w->n; i++)
        all = all && w->calls[i].done;
    if (all || loop_now_ns() > w->deadline)
        loop_stop(loop);
}

static void run_for(uint64_t ms, call_t *calls, int n)
{
    waiter_t w = {calls, n, {0}, loop_now_ns() + ms * MS};
    loop_timer_init(&w.t);
    loop_timer_start(g_loop, &w.t, MS, MS, wait_tick, &w);
    loop_run(g_loop);
    loop_timer_stop(g_loop, &w.t);
}

/* Starts one call (traced: the test's CLIENT span is the server span's parent). */
static void call_start(grpc_channel_t *ch, const char *path, const ProtobufCMessage *req, call_t *c)
{
    uint8_t buf[1024];
    size_t len = protobuf_c_message_pack(req, buf);
    memset(c, 0, sizeof *c);
    c->t0 = loop_now_ns();
    if (grpc_call_unary_traced(ch, path, buf, len, false, 10000 * MS, NULL, 0, NULL, on_result, c) != 0) {
        c->done = true;
        c->status = -1;
    }
}

static void call_sync(grpc_channel_t *ch, const char *path, const ProtobufCMessage *req, call_t *c)
{
    call_start(ch, path, req, c);
    run_for(15000, c, 1);
}

/* ------------------------------------------------------------ spans (test sink + ring) */

typedef struct {
    char name[96];
    int kind, status;
    uint8_t trace_id[16], span_id[8], parent[8];
    char attrs[1024]; /* "key=value;" ... */
} span_t;

#define SPANS_MAX 4096
static span_t g_spans[SPANS_MAX];
static int g_nspans;
static trace_context_t g_last_client; /* the test's last CLIENT span */

static void span_from_record(const void *rec, uint32_t len)
{
    span_record_t r;
    if (g_nspans >= SPANS_MAX || span_record_decode(rec, len, &r) != 0)
        return;
    span_t *s = &g_spans[g_nspans++];
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%.*s", (int)r.name.len, r.name.p);
    s->kind = r.kind;
    s->status = r.status;
    memcpy(s->trace_id, r.trace_id, 16);
    memcpy(s->span_id, r.span_id, 8);
    memcpy(s->parent, r.parent_span_id, 8);
    uint32_t off = 0;
    span_record_item_t it;
    size_t n = 0;
    while (span_record_next(r.items, r.items_len, &off, &it) == 1) {
        if (it.tag != SPAN_ITEM_ATTR)
            continue;
        int k = 0;
        if (it.type == TRACE_ATTR_STRING) {
            k = snprintf(s->attrs + n, sizeof s->attrs - n, "%.*s=%.*s;", (int)it.key.len, it.key.p,
                         (int)it.value_len, (const char *)it.value);
        } else if (it.type == TRACE_ATTR_INT) {
            int64_t v;
            memcpy(&v, it.value, 8);
            k = snprintf(s->attrs + n, sizeof s->attrs - n, "%.*s=%lld;", (int)it.key.len, it.key.p,
                         (long long)v);
        }
        if (k > 0 && (size_t)k < sizeof s->attrs - n)
            n += (size_t)k;
    }
}

/* The test's own CLIENT spans arrive through trace_init's sink. */
static void test_sink(void *arg, const void *rec, uint32_t len, bool truncated)
{
    (void)arg;
    (void)truncated;
    span_record_t r;
    if (span_record_decode(rec, len, &r) == 0 && r.kind == TRACE_KIND_CLIENT) {
        memcpy(g_last_client.trace_id, r.trace_id, 16);
        memcpy(g_last_client.span_id, r.span_id, 8);
    }
}

/* Moves every record of the ring into g_spans. */
static void ring_drain(void)
{
    ring_record_t recs[256];
    int n;
    while ((n = ring_consumer_peek(g_ring, recs, 256)) > 0) {
        for (int i = 0; i < n; i++)
            span_from_record(recs[i].data, recs[i].len);
        ring_consumer_release(g_ring, (uint64_t)n, (uint64_t)n, RING_DROP_CORRUPT);
    }
}

static bool has_attr(const span_t *s, const char *kv)
{
    char pat[200];
    snprintf(pat, sizeof pat, "%s;", kv);
    return strncmp(s->attrs, pat, strlen(pat)) == 0 || strstr(s->attrs, pat) != NULL;
}

/* Spans of trace `tid` named `name` (first match), polling the ring up to 2 s. */
static const span_t *find_span(const uint8_t *tid, const char *name, bool wait)
{
    for (int tries = 0; tries < (wait ? 200 : 1); tries++) {
        ring_drain();
        for (int i = 0; i < g_nspans; i++)
            if (memcmp(g_spans[i].trace_id, tid, 16) == 0 && strcmp(g_spans[i].name, name) == 0)
                return &g_spans[i];
        if (wait)
            usleep(10000);
    }
    return NULL;
}

/* ------------------------------------------------------------ tests */

static grpc_channel_t *g_uch, *g_ich;
static proc_t g_user, g_inv;

#define GETUSER "/shop.v1.UserService/GetUser"
#define CHECK "/shop.v1.InventoryService/CheckStock"
#define REDUCE "/shop.v1.InventoryService/ReduceStock"
#define RESTORE "/shop.v1.InventoryService/RestoreStock"
#define HEALTH "/grpc.health.v1.Health/Check"

static void get_user(const char *id, call_t *c)
{
    Shop__V1__GetUserRequest req = SHOP__V1__GET_USER_REQUEST__INIT;
    req.user_id = (char *)(uintptr_t)id;
    call_sync(g_uch, GETUSER, &req.base, c);
}

static int health(grpc_channel_t *ch)
{
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    call_t c;
    call_sync(ch, HEALTH, &req.base, &c);
    if (c.status != 0)
        return -1;
    Grpc__Health__V1__HealthCheckResponse *r = grpc__health__v1__health_check_response__unpack(NULL, c.resp_len, c.resp);
    int st = r ? (int)r->status : -1;
    if (r)
        grpc__health__v1__health_check_response__free_unpacked(r, NULL);
    return st;
}

static void test_check_config(void)
{
    tap_check(sh("'%s' --config '%s' --check-config >%s/cc.out 2>&1", g_user_bin, g_conf, g_tmp) == 0 &&
                  strcmp(sh_out("cat %s/cc.out", g_tmp), "ok") == 0,
              "user-svc --check-config on the test config: ok, exit 0");
    char bad[160];
    snprintf(bad, sizeof bad, "%s/bad.conf", g_tmp);
    FILE *f = fopen(bad, "w");
    fprintf(f, "[user_svc]\naddress = 127.0.0.1\nport = 70000\n");
    fclose(f);
    int rc = sh("'%s' --config '%s' --check-config >%s/cc.out 2>&1", g_inv_bin, bad, g_tmp);
    const char *out = sh_out("cat %s/cc.out", g_tmp);
    tap_check(rc == 2 && strstr(out, "bad.conf:3") && strstr(out, "port") && strstr(out, "70000"),
              "--check-config on a bad file: exit 2, names file:line:key (%d: %s)", rc, out);
    rc = sh("'%s' --no-such-flag >/dev/null 2>&1", g_user_bin);
    tap_check(rc == 2, "unknown option: exit 2 (%d)", rc);
}

static void test_health(void)
{
    int su = -1, si = -1;
    for (int i = 0; i < 100 && (su != 1 || si != 1); i++) {
        su = health(g_uch);
        si = health(g_ich);
        if (su != 1 || si != 1)
            usleep(50000);
    }
    tap_check(su == 1, "user-svc Health/Check: SERVING (%d)", su);
    tap_check(si == 1, "inventory-svc Health/Check: SERVING (%d)", si);
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    req.service = (char *)"shop.v1.InventoryService";
    call_t c;
    call_sync(g_ich, HEALTH, &req.base, &c);
    tap_check(c.status == 0, "Health/Check for service shop.v1.InventoryService: OK (%d)", c.status);
    req.service = (char *)"no.such.Service";
    call_sync(g_ich, HEALTH, &req.base, &c);
    tap_check(c.status == GRPC_STATUS_NOT_FOUND, "Health/Check for an unknown service: NOT_FOUND (%d)", c.status);
    call_sync(g_ich, "/grpc.health.v1.Health/Watch", &req.base, &c);
    tap_check(c.status == GRPC_STATUS_UNIMPLEMENTED, "Health/Watch: UNIMPLEMENTED (%d)", c.status);
}

/* Checks the spans of the last GetUser call; expect_db: a miss. */
static void check_getuser_spans(const char *what, bool expect_db)
{
    const uint8_t *tid = g_last_client.trace_id;
    const span_t *srv = find_span(tid, "shop.v1.UserService/GetUser", true);
    tap_check(srv && srv->kind == TRACE_KIND_SERVER && memcmp(srv->parent, g_last_client.span_id, 8) == 0 &&
                  has_attr(srv, "rpc.system=grpc") && has_attr(srv, "rpc.grpc.status_code=0"),
              "%s: SERVER span shop.v1.UserService/GetUser, child of the caller's CLIENT span", what);
    const span_t *get = find_span(tid, "GET", true);
    tap_check(get && srv && get->kind == TRACE_KIND_CLIENT && memcmp(get->parent, srv->span_id, 8) == 0 &&
                  has_attr(get, "db.system.name=redis") && strstr(get->attrs, "db.query.text=GET user:"),
              "%s: redis GET span, child of the SERVER span (%s)", what, get ? get->attrs : "missing");
    const span_t *sel = find_span(tid, "SELECT users", expect_db);
    const span_t *set = find_span(tid, "SET", expect_db);
    if (expect_db) {
        tap_check(sel && srv && sel->kind == TRACE_KIND_CLIENT && memcmp(sel->parent, srv->span_id, 8) == 0 &&
                      has_attr(sel, "db.system.name=postgresql") && has_attr(sel, "db.collection.name=users") &&
                      has_attr(sel, "db.operation.name=SELECT") && strstr(sel->attrs, "WHERE id = $1"),
                  "%s: SELECT users span, child of the SERVER span, parameterised text (%s)", what,
                  sel ? sel->attrs : "missing");
        tap_check(set && srv && memcmp(set->parent, srv->span_id, 8) == 0 && has_attr(set, "db.system.name=redis"),
                  "%s: redis SET span fills the cache", what);
    } else {
        tap_check(sel == NULL && set == NULL, "%s: served from Redis, no SELECT users, no SET", what);
    }
}

static void test_user(const char *redis_port)
{
    call_t c;
    get_user("user123", &c);
    Shop__V1__GetUserResponse *r = c.status == 0 ? shop__v1__get_user_response__unpack(NULL, c.resp_len, c.resp) : NULL;
    tap_check(r && r->user && strcmp(r->user->id, "user123") == 0 && strcmp(r->user->name, "Demo User") == 0 &&
                  strcmp(r->user->email, "user123@example.com") == 0 && r->user->created_at_ms > 0,
              "GetUser user123: the seeded row (status %d %s)", c.status, c.message);
    if (r)
        shop__v1__get_user_response__free_unpacked(r, NULL);
    check_getuser_spans("GetUser miss", true);
    tap_check(strcmp(sh_out("redis-cli -p %s EXISTS user:user123", redis_port), "1") == 0 &&
                  atoi(sh_out("redis-cli -p %s TTL user:user123", redis_port)) > 0,
              "the miss filled user:user123 in Redis, with a TTL");
    get_user("user123", &c);
    tap_check(c.status == 0, "GetUser user123 again: OK");
    check_getuser_spans("GetUser hit", false);

    get_user("nobody-here", &c);
    tap_check(c.status == GRPC_STATUS_NOT_FOUND && strstr(c.message, "nobody-here"),
              "unknown user: NOT_FOUND naming the id (%d %s)", c.status, c.message);
    get_user("", &c);
    tap_check(c.status == GRPC_STATUS_INVALID_ARGUMENT, "empty user_id: INVALID_ARGUMENT (%d %s)", c.status, c.message);
    char big[100];
    memset(big, 'u', 99);
    big[99] = '\0';
    get_user(big, &c);
    tap_check(c.status == GRPC_STATUS_INVALID_ARGUMENT, "99-byte user_id: INVALID_ARGUMENT (%d %s)", c.status,
              c.message);

    /* Redis hanging (SIGSTOP): the GET times out (50 ms), PostgreSQL answers. */
    sh("'%s' pause '%s'", g_rh, g_redis_dir);
    get_user("user42", &c);
    tap_check(c.status == 0 && c.ns >= 40 * MS && c.ns < 2000 * MS,
              "Redis paused: GetUser user42 still OK, after the cache timeout (%llu ms)",
              (unsigned long long)(c.ns / MS));
    sh("'%s' resume '%s'", g_rh, g_redis_dir);

    /* Redis gone: the client reconnects in the background; calls go to PostgreSQL. */
    sh("kill $(cat '%s/redis.pid'); sleep 0.3", g_redis_dir);
    int ok = 0;
    uint64_t worst = 0;
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof id, "user%d", 50 + i);
        get_user(id, &c);
        ok += c.status == 0;
        worst = c.ns > worst ? c.ns : worst;
    }
    tap_check(ok == 5, "Redis stopped: 5 of 5 GetUser calls answered from PostgreSQL (slowest %llu ms)",
              (unsigned long long)(worst / MS));
    sh("'%s' restart '%s'", g_rh, g_redis_dir);
    /* caching resumes once the client has reconnected (backoff <= 2 s) */
    bool cached = false;
    for (int i = 0; i < 60 && !cached; i++) {
        get_user("user77", &c);
        cached = c.status == 0 && strcmp(sh_out("redis-cli -p %s EXISTS user:user77", redis_port), "1") == 0;
        if (!cached)
            usleep(100000);
    }
    tap_check(cached, "Redis back: a miss fills the cache again");
    get_user("user77", &c);
    check_getuser_spans("after Redis came back", false);
}

static int check_stock(const char *product, int q, int *stock, bool *avail, int64_t *price)
{
    Shop__V1__CheckStockRequest req = SHOP__V1__CHECK_STOCK_REQUEST__INIT;
    req.product_id = (char *)(uintptr_t)product;
    req.quantity = q;
    call_t c;
    call_sync(g_ich, CHECK, &req.base, &c);
    if (c.status != 0)
        return c.status;
    Shop__V1__CheckStockResponse *r = shop__v1__check_stock_response__unpack(NULL, c.resp_len, c.resp);
    if (!r)
        return -1;
    *stock = r->stock;
    *avail = r->available;
    if (price)
        *price = r->unit_price_cents;
    shop__v1__check_stock_response__free_unpacked(r, NULL);
    return 0;
}

static void reduce_start(const char *order, const char *product, int q, call_t *c)
{
    Shop__V1__ReduceStockRequest req = SHOP__V1__REDUCE_STOCK_REQUEST__INIT;
    req.order_id = (char *)(uintptr_t)order;
    req.product_id = (char *)(uintptr_t)product;
    req.quantity = q;
    call_start(g_ich, REDUCE, &req.base, c);
}

static void restore(const char *order, const char *product, int q, call_t *c, bool *restored, bool *already)
{
    Shop__V1__RestoreStockRequest req = SHOP__V1__RESTORE_STOCK_REQUEST__INIT;
    req.order_id = (char *)(uintptr_t)order;
    req.product_id = (char *)(uintptr_t)product;
    req.quantity = q;
    call_sync(g_ich, RESTORE, &req.base, c);
    *restored = *already = false;
    Shop__V1__RestoreStockResponse *r = c->status == 0 ? shop__v1__restore_stock_response__unpack(NULL, c->resp_len, c->resp) : NULL;
    if (r) {
        *restored = r->restored;
        *already = r->already_applied;
        shop__v1__restore_stock_response__free_unpacked(r, NULL);
    }
}

static void test_inventory(PGconn *db)
{
    int stock = 0, s2 = 0;
    bool avail = false;
    int64_t price = 0;
    int rc = check_stock("prod456", 2, &stock, &avail, &price);
    tap_check(rc == 0 && avail && stock == 1000000 && price == 4999, "CheckStock prod456 x2: available, stock %d, %lld cents",
              stock, (long long)price);
    rc = check_stock("prod456", 2000000, &stock, &avail, NULL);
    tap_check(rc == 0 && !avail, "CheckStock prod456 x2000000: not available");
    rc = check_stock("no-such-product", 1, &stock, &avail, NULL);
    tap_check(rc == GRPC_STATUS_NOT_FOUND, "CheckStock unknown product: NOT_FOUND (%d)", rc);
    rc = check_stock("prod456", 0, &stock, &avail, NULL);
    tap_check(rc == GRPC_STATUS_INVALID_ARGUMENT, "CheckStock quantity 0: INVALID_ARGUMENT (%d)", rc);

    /* the same order id five times: one decrement */
    check_stock("prod456", 1, &stock, &avail, NULL);
    call_t c[5];
    for (int i = 0; i < 5; i++) {
        reduce_start("order-idem-1", "prod456", 3, &c[i]);
        run_for(10000, &c[i], 1);
    }
    trace_context_t last = g_last_client; /* the 5th ReduceStock's CLIENT span */
    int ok = 0, already = 0;
    for (int i = 0; i < 5; i++) {
        Shop__V1__ReduceStockResponse *r = c[i].status == 0 ? shop__v1__reduce_stock_response__unpack(NULL, c[i].resp_len, c[i].resp) : NULL;
        if (r) {
            ok++;
            already += r->already_applied;
            shop__v1__reduce_stock_response__free_unpacked(r, NULL);
        }
    }
    check_stock("prod456", 1, &s2, &avail, NULL);
    tap_check(ok == 5 && already == 4 && s2 == stock - 3,
              "ReduceStock order-idem-1 x5: all OK, 4 already_applied, stock %d -> %d (one decrement of 3)", stock, s2);
    /* its spans */
    const span_t *srv = find_span(last.trace_id, "shop.v1.InventoryService/ReduceStock", true);
    const span_t *upd = find_span(last.trace_id, "UPDATE products", true);
    const span_t *beg = find_span(last.trace_id, "BEGIN", true);
    const span_t *com = find_span(last.trace_id, "COMMIT", true);
    tap_check(srv && srv->kind == TRACE_KIND_SERVER && memcmp(srv->parent, last.span_id, 8) == 0 &&
                  has_attr(srv, "rpc.service=shop.v1.InventoryService") && has_attr(srv, "rpc.method=ReduceStock"),
              "ReduceStock: SERVER span, child of the caller's CLIENT span");
    tap_check(upd && srv && upd->kind == TRACE_KIND_CLIENT && memcmp(upd->parent, srv->span_id, 8) == 0 &&
                  has_attr(upd, "db.system.name=postgresql") && has_attr(upd, "db.collection.name=products") &&
                  has_attr(upd, "db.operation.name=UPDATE") && strstr(upd->attrs, "stock >= $3"),
              "ReduceStock: UPDATE products span, child of the SERVER span (%s)", upd ? upd->attrs : "missing");
    tap_check(beg && com && srv && memcmp(beg->parent, srv->span_id, 8) == 0 && memcmp(com->parent, srv->span_id, 8) == 0,
              "ReduceStock: BEGIN and COMMIT spans around it, children of the SERVER span");

    /* 50 buyers, 10 units */
    PGresult *pr = PQexec(db, "INSERT INTO products (id, name, price_cents, stock) VALUES ('svc-last10', 'Last ten', 100, 10)");
    tap_check(PQresultStatus(pr) == PGRES_COMMAND_OK, "product svc-last10 with stock 10 inserted");
    PQclear(pr);
    static call_t many[50];
    char ids[50][32];
    for (int i = 0; i < 50; i++) {
        snprintf(ids[i], sizeof ids[i], "order-race-%d", i);
        reduce_start(ids[i], "svc-last10", 1, &many[i]);
    }
    run_for(20000, many, 50);
    int succ = 0, fp = 0, other = 0;
    for (int i = 0; i < 50; i++) {
        if (many[i].status == 0)
            succ++;
        else if (many[i].status == GRPC_STATUS_FAILED_PRECONDITION)
            fp++;
        else
            other++;
    }
    pr = PQexec(db, "SELECT stock, (SELECT count(*) FROM stock_movements WHERE product_id = 'svc-last10') "
                    "FROM products WHERE id = 'svc-last10'");
    int final = PQntuples(pr) == 1 ? atoi(PQgetvalue(pr, 0, 0)) : -1;
    int moves = PQntuples(pr) == 1 ? atoi(PQgetvalue(pr, 0, 1)) : -1;
    PQclear(pr);
    tap_check(succ == 10 && fp == 40 && other == 0,
              "50 concurrent ReduceStock x1 on stock 10: exactly 10 OK, 40 FAILED_PRECONDITION (%d/%d/%d)", succ, fp,
              other);
    tap_check(final == 0 && moves == 10, "stock ends at 0, 10 reduce movements (%d, %d)", final, moves);

    /* RestoreStock once */
    bool restored, again;
    call_t rc1;
    check_stock("prod456", 1, &stock, &avail, NULL);
    restore("order-idem-1", "prod456", 3, &rc1, &restored, &again);
    check_stock("prod456", 1, &s2, &avail, NULL);
    tap_check(rc1.status == 0 && restored && !again && s2 == stock + 3, "RestoreStock order-idem-1: restored, stock %d -> %d",
              stock, s2);
    restore("order-idem-1", "prod456", 3, &rc1, &restored, &again);
    check_stock("prod456", 1, &stock, &avail, NULL);
    tap_check(rc1.status == 0 && again && stock == s2, "RestoreStock order-idem-1 again: already_applied, stock unchanged");
    call_t late;
    reduce_start("order-idem-1", "prod456", 3, &late);
    run_for(10000, &late, 1);
    tap_check(late.status == GRPC_STATUS_FAILED_PRECONDITION, "ReduceStock after its RestoreStock: FAILED_PRECONDITION (%d %s)",
              late.status, late.message);
    restore("order-never-reduced", "prod456", 3, &rc1, &restored, &again);
    check_stock("prod456", 1, &s2, &avail, NULL);
    tap_check(rc1.status == 0 && !restored && s2 == stock, "RestoreStock without a reduction: restored=false, stock unchanged");
    reduce_start("order-never-reduced", "prod456", 3, &late);
    run_for(10000, &late, 1);
    tap_check(late.status == GRPC_STATUS_FAILED_PRECONDITION, "late ReduceStock after that tombstone: FAILED_PRECONDITION");
    reduce_start("order-x", "prod456", 0, &late);
    run_for(10000, &late, 1);
    tap_check(late.status == GRPC_STATUS_INVALID_ARGUMENT, "ReduceStock quantity 0: INVALID_ARGUMENT");
    reduce_start("order-y", "no-such-product", 1, &late);
    run_for(10000, &late, 1);
    tap_check(late.status == GRPC_STATUS_NOT_FOUND, "ReduceStock unknown product: NOT_FOUND (%d)", late.status);
}

static void test_sigterm(void)
{
    /* a call in flight (Redis paused: it waits for the cache timeout) when SIGTERM arrives */
    sh("'%s' pause '%s'", g_rh, g_redis_dir);
    Shop__V1__GetUserRequest req = SHOP__V1__GET_USER_REQUEST__INIT;
    req.user_id = (char *)"user99";
    call_t c;
    call_start(g_uch, GETUSER, &req.base, &c);
    run_for(15, &c, 1);
    kill(g_user.pid, SIGTERM);
    run_for(5000, &c, 1);
    tap_check(c.done && c.status == 0, "SIGTERM with a GetUser in flight: the call is answered (%d %s)", c.status,
              c.message);
    int st = svc_wait(&g_user, 5000);
    tap_check(st == 0, "user-svc exits 0 after SIGTERM (%d)", st);
    sh("'%s' resume '%s'", g_rh, g_redis_dir);
    kill(g_inv.pid, SIGTERM);
    st = svc_wait(&g_inv, 5000);
    tap_check(st == 0, "inventory-svc exits 0 after SIGTERM (%d)", st);
    tap_check(sh("grep -q 'graceful shutdown' '%s'", g_inv.err_path) == 0, "inventory-svc logged the graceful shutdown");
    tap_check(sh("! grep -l 'runtime error\\|Sanitizer' '%s' '%s'", g_user.err_path, g_inv.err_path) == 0,
              "no sanitizer report in the services' logs");
}

/* inventory-svc whose PostgreSQL is unreachable: NOT_SERVING, and calls
 * fail with a status that says so (no hang past the query timeout). */
static void test_dead_pg(const char *rport)
{
    char conf[160];
    snprintf(conf, sizeof conf, "%s/deadpg.conf", g_tmp);
    FILE *f = fopen(conf, "w");
    fprintf(f,
            "[ring]\nname = %s\nlanes = 8\nlane_size = 1M\nmax_record = 16K\n"
            "[postgres]\nhost = 127.0.0.1\nport = 1\ndbname = shop\nuser = postgres\npool_size = 1\n"
            "statement_timeout = 300\nconnect_timeout = 100\n"
            "[redis]\nport = %s\n[inventory_svc]\naddress = 127.0.0.1\nport = 0\n",
            g_ring_name, rport);
    fclose(f);
    char saved[160];
    snprintf(saved, sizeof saved, "%s", g_conf);
    snprintf(g_conf, sizeof g_conf, "%s", conf);
    proc_t p;
    int rc = svc_start(&p, g_inv_bin, "deadpg");
    snprintf(g_conf, sizeof g_conf, "%s", saved);
    if (!tap_check(rc == 0, "inventory-svc starts with PostgreSQL unreachable"))
        return;
    char err[256] = "";
    grpc_channel_t *ch;
    grpc_channel_new(g_loop, "127.0.0.1", (uint16_t)p.port, NULL, &ch, err, sizeof err);
    int st = health(ch);
    tap_check(st == 2, "Health/Check without PostgreSQL: NOT_SERVING (%d)", st);
    Shop__V1__CheckStockRequest req = SHOP__V1__CHECK_STOCK_REQUEST__INIT;
    req.product_id = (char *)"prod456";
    req.quantity = 1;
    call_t c;
    call_sync(ch, CHECK, &req.base, &c);
    tap_check(c.status == GRPC_STATUS_UNAVAILABLE &&
                  strstr(c.message, "CheckStock") && c.ns < 5000 * MS,
              "CheckStock without PostgreSQL: %s \"%s\" after %llu ms", grpc_status_name(c.status), c.message,
              (unsigned long long)(c.ns / MS));
    grpc_channel_free(ch);
    kill(p.pid, SIGTERM);
    st = svc_wait(&p, 5000);
    tap_check(st == 0, "that inventory-svc exits 0 after SIGTERM (%d)", st);
}

int main(int argc, char **argv)
{
    if (argc < 8) {
        fprintf(stderr, "usage: test_services PG_HARNESS REDIS_HARNESS SHOP_MIGRATE MIGRATIONS SEED USER_SVC INVENTORY_SVC\n");
        return 2;
    }
    g_pgh = argv[1];
    g_rh = argv[2];
    g_migrate = argv[3];
    g_migdir = argv[4];
    g_seed = argv[5];
    g_user_bin = argv[6];
    g_inv_bin = argv[7];
    signal(SIGPIPE, SIG_IGN);

    snprintf(g_tmp, sizeof g_tmp, "/tmp/shop-svc-XXXXXX");
    if (mkdtemp(g_tmp) == NULL || chmod(g_tmp, 0711) != 0) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(g_redis_dir, sizeof g_redis_dir, "%s/redis", g_tmp);
    const char *ci = sh_out("'%s' start '%s/pg'", g_pgh, g_tmp);
    snprintf(g_pgci, sizeof g_pgci, "%s", ci);
    char pgport[16] = "";
    if (!tap_check(strstr(g_pgci, "port=") != NULL, "private PostgreSQL: %s", g_pgci)) {
        sh("rm -rf '%s'", g_tmp);
        return tap_done();
    }
    sscanf(strstr(g_pgci, "port=") + 5, "%15[0-9]", pgport);
    char rhost[64] = "", rport[16] = "";
    sscanf(sh_out("'%s' start '%s'", g_rh, g_redis_dir), "%63s %15s", rhost, rport);
    tap_check(rport[0] != '\0', "private Redis on port %s", rport);

    char shopci[300];
    snprintf(shopci, sizeof shopci, "host=127.0.0.1 port=%s dbname=shop user=postgres", pgport);
    int rc = sh("psql '%s' -qc 'CREATE DATABASE shop' >/dev/null && '%s' --conninfo '%s' --dir '%s' --seed-file '%s' up >/dev/null && "
                "'%s' --conninfo '%s' --dir '%s' --seed-file '%s' seed >/dev/null",
                g_pgci, g_migrate, shopci, g_migdir, g_seed, g_migrate, shopci, g_migdir, g_seed);
    tap_check(rc == 0, "database shop migrated and seeded");

    snprintf(g_ring_name, sizeof g_ring_name, "/shop-svc-test-%d", (int)getpid());
    snprintf(g_conf, sizeof g_conf, "%s/shop.conf", g_tmp);
    FILE *f = fopen(g_conf, "w");
    fprintf(f,
            "[ring]\nname = %s\nlanes = 8\nlane_size = 1M\nmax_record = 16K\n"
            "[postgres]\nhost = 127.0.0.1\nport = %s\ndbname = shop\nuser = postgres\npool_size = 4\n"
            "[redis]\nhost = 127.0.0.1\nport = %s\ncommand_timeout = 50\n"
            "[user_svc]\naddress = 127.0.0.1\nport = 0\ncache_ttl = 60\n"
            "[inventory_svc]\naddress = 127.0.0.1\nport = 0\n"
            "[service]\nshutdown_grace = 3000\n",
            g_ring_name, pgport, rport);
    fclose(f);

    /* the ring first: this test is its consumer (the services attach) */
    char err[256] = "";
    ring_geometry_t geo = {.lanes = 8, .lane_size = 1u << 20, .max_record = 16384};
    rc = ring_open(g_ring_name, &geo, true, &g_ring, err, sizeof err);
    if (rc == 0)
        rc = ring_consumer_open(g_ring, err, sizeof err);
    tap_check(rc == 0, "span ring %s created, consumer role taken (%s)", g_ring_name, rc ? err : "ok");

    trace_options_t to = {.service_name = "test-services", .no_ring = true, .sink = test_sink};
    trace_init(&to, err, sizeof err);
    loop_create(&g_loop, NULL);

    test_check_config();
    bool up = svc_start(&g_user, g_user_bin, "user") == 0 && svc_start(&g_inv, g_inv_bin, "inventory") == 0;
    tap_check(up, "user-svc on port %d, inventory-svc on port %d", g_user.port, g_inv.port);
    PGconn *db = PQconnectdb(shopci);
    if (up && PQstatus(db) == CONNECTION_OK) {
        grpc_channel_new(g_loop, "127.0.0.1", (uint16_t)g_user.port, NULL, &g_uch, err, sizeof err);
        grpc_channel_new(g_loop, "127.0.0.1", (uint16_t)g_inv.port, NULL, &g_ich, err, sizeof err);
        test_health();
        test_user(rport);
        test_inventory(db);
        test_dead_pg(rport);
        test_sigterm();
        grpc_channel_free(g_uch);
        grpc_channel_free(g_ich);
    } else {
        if (g_user.pid > 0)
            kill(g_user.pid, SIGKILL);
        if (g_inv.pid > 0)
            kill(g_inv.pid, SIGKILL);
    }
    PQfinish(db);
    if (tap__failed) {
        tap_diag("user-svc log: %s/user.err", g_tmp);
        sh("grep -v ': config:' '%s/user.err' | tail -20 | sed 's/^/# /'; grep -v ': config:' '%s/inventory.err' | tail -20 | sed 's/^/# /'",
           g_tmp, g_tmp);
    }
    loop_destroy(g_loop);
    trace_shutdown();
    ring_close(g_ring);
    ring_unlink(g_ring_name);
    sh("'%s' stop '%s'", g_rh, g_redis_dir);
    sh("'%s' stop '%s/pg'", g_pgh, g_tmp);
    sh("rm -rf '%s'", g_tmp);
    return tap_done();
}
