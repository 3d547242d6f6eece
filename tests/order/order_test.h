/*
 * tests/order/order_test.h - helpers shared by the order-svc tests
 * (test_order.c against shop-kafka-mock, test_order_kraft.c against Apache
 * Kafka): child processes that print "listening on ADDR:PORT", free ports
 * below the ephemeral range, SQL on the test database and the saga's
 * invariants, and CreateOrder/GetOrder/ListOrders calls on one client loop.
 * Header-only (static functions), included by one test file each.
 */
#ifndef SHOP_TESTS_ORDER_TEST_H
#define SHOP_TESTS_ORDER_TEST_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <libpq-fe.h>

#include "core.h"
#include "grpc.h"
#include "loop.h"
#include "shop/v1/order.pb-c.h"
#include "tap.h"

#define MS 1000000ull

static char g_dir[256], g_cfg[300], g_ring[64];
static PGconn *g_db;
static loop_t *g_loop;
static grpc_channel_t *g_ch;

/* ------------------------------------------------------------ processes */

typedef struct {
    const char *name;
    const char *exe;
    pid_t pid;
    int out; /* its stdout */
    uint16_t port;
    char line[256];
} proc_t;

/* A port nothing listens on, drawn at random from 20000-32767: below the
 * kernel's ephemeral range (32768 and up), so no outgoing connection (a
 * client reconnecting to a broker that is down, say) can take it between
 * this check and the bind, nor connect to itself on it.  0 if none found. */
__attribute__((unused)) static int free_port(void)
{
    static unsigned seed;
    if (seed == 0)
        seed = (unsigned)getpid() ^ (unsigned)loop_now_ns();
    for (int tries = 0; tries < 200; tries++) {
        int port = 20000 + (int)(rand_r(&seed) % 12768u);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return 0;
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        a.sin_addr.s_addr = htonl(INADDR_ANY);
        int ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
        close(fd);
        if (ok)
            return port;
    }
    return 0;
}

/* Reads stdout lines until one contains `want` (10 s). */
__attribute__((unused)) static int proc_wait_line(proc_t *p, const char *want)
{
    char buf[4096];
    size_t len = 0;
    uint64_t end = loop_now_ns() + 15000 * MS;
    while (loop_now_ns() < end) {
        struct pollfd pf = {.fd = p->out, .events = POLLIN};
        if (poll(&pf, 1, 100) <= 0)
            continue;
        ssize_t n = read(p->out, buf + len, sizeof buf - 1 - len);
        if (n <= 0)
            return -1;
        len += (size_t)n;
        buf[len] = '\0';
        char *nl;
        while ((nl = strchr(buf, '\n')) != NULL) {
            *nl = '\0';
            if (strstr(buf, want) != NULL) {
                snprintf(p->line, sizeof p->line, "%.250s", buf);
                return 0;
            }
            len -= (size_t)(nl + 1 - buf);
            memmove(buf, nl + 1, len + 1);
        }
    }
    return -1;
}

__attribute__((unused)) static int proc_start(proc_t *p, const char *const *args, const char *want)
{
    int fd[2];
    if (pipe(fd) != 0)
        return -1;
    p->pid = fork();
    if (p->pid == 0) {
        char log[400];
        snprintf(log, sizeof log, "%s/%s.log", g_dir, p->name);
        int l = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(fd[1], 1);
        if (l >= 0)
            dup2(l, 2);
        close(fd[0]);
        close(fd[1]);
        const char *argv[16] = {p->exe};
        int i = 1;
        for (; args && args[i - 1] && i < 15; i++)
            argv[i] = args[i - 1];
        argv[i] = NULL;
        execv(p->exe, (char *const *)(uintptr_t)argv);
        _exit(127);
    }
    close(fd[1]);
    p->out = fd[0];
    if (proc_wait_line(p, want) != 0) {
        tap_diag("%s: no '%s' line (see %s/%s.log)", p->name, want, g_dir, p->name);
        return -1;
    }
    const char *colon = strrchr(p->line, ':');
    p->port = colon ? (uint16_t)atoi(colon + 1) : 0;
    return 0;
}

__attribute__((unused)) static int proc_stop(proc_t *p, int sig)
{
    if (p->pid <= 0)
        return -1;
    kill(p->pid, sig);
    int st = 0;
    for (int i = 0; i < 100; i++) {
        if (waitpid(p->pid, &st, WNOHANG) == p->pid) {
            p->pid = 0;
            close(p->out);
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        usleep(50000);
    }
    kill(p->pid, SIGKILL);
    waitpid(p->pid, &st, 0);
    p->pid = 0;
    close(p->out);
    return 137;
}

/* ------------------------------------------------------------ database */

/* Starts a private PostgreSQL in DIR/pg with the harness, applies the
 * migrations in mdir and the seed file with shop-migrate, and connects g_db.
 * conninfo (cap bytes) receives the server's.  Each step is a TAP check;
 * returns false at the first that fails. */
__attribute__((unused)) static bool ot_start_db(const char *harness, const char *dir, const char *migrate,
                                                const char *mdir, const char *seed, char *conninfo, size_t cap)
{
    char cmd[1600];
    snprintf(cmd, sizeof cmd, "'%s' start '%s/pg'", harness, dir);
    FILE *f = popen(cmd, "r");
    bool got = f && fgets(conninfo, (int)cap, f);
    if (f)
        pclose(f);
    if (!got) {
        tap_check(0, "private PostgreSQL started");
        return false;
    }
    conninfo[strcspn(conninfo, "\n")] = '\0';
    snprintf(cmd, sizeof cmd, "'%s' --conninfo '%s' --dir '%s' --seed-file '%s' up >/dev/null && "
             "'%s' --conninfo '%s' --dir '%s' --seed-file '%s' seed >/dev/null",
             migrate, conninfo, mdir, seed, migrate, conninfo, mdir, seed);
    if (!tap_check(system(cmd) == 0, "shop-migrate up + seed"))
        return false;
    g_db = PQconnectdb(conninfo);
    return tap_check(PQstatus(g_db) == CONNECTION_OK, "test connection to PostgreSQL");
}

/* ------------------------------------------------------------ SQL */

__attribute__((unused)) static long long sql_int(const char *q)
{
    PGresult *r = PQexec(g_db, q);
    long long v = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
        v = atoll(PQgetvalue(r, 0, 0));
    else
        tap_diag("SQL %s: %s", q, PQerrorMessage(g_db));
    PQclear(r);
    return v;
}

__attribute__((unused)) static int sql_exec(const char *q)
{
    PGresult *r = PQexec(g_db, q);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
    if (!ok)
        tap_diag("SQL %s: %s", q, PQerrorMessage(g_db));
    PQclear(r);
    return ok ? 0 : -1;
}

__attribute__((unused)) static void check_invariants(const char *after)
{
    tap_check(sql_int("SELECT count(*) FROM test_initial i JOIN products p ON p.id = i.id "
                      "WHERE p.stock + coalesce((SELECT sum(quantity) FROM orders o WHERE "
                      "o.product_id = i.id AND o.status = 'completed'), 0) <> i.stock") == 0,
              "%s: stock + units sold = initial stock, every test product", after);
    tap_check(sql_int("SELECT count(*) FROM orders o WHERE o.status = 'completed' AND (SELECT "
                      "count(*) FROM payments p WHERE p.order_id = o.id AND p.status = "
                      "'succeeded') <> 1") == 0,
              "%s: one succeeded payment per completed order", after);
    tap_check(sql_int("SELECT count(*) FROM orders o JOIN payments p ON p.order_id = o.id "
                      "WHERE o.status = 'failed' AND p.status = 'succeeded'") == 0,
              "%s: no succeeded payment for a failed order", after);
    tap_check(sql_int("SELECT count(*) FROM orders o WHERE o.status = 'completed' AND NOT EXISTS "
                      "(SELECT 1 FROM outbox e WHERE e.aggregate_id = o.id AND e.event_type = "
                      "'order.completed')") == 0,
              "%s: no completed order without its outbox event", after);
    tap_check(sql_int("SELECT count(*) FROM stock_movements r WHERE r.kind = 'reduce' AND NOT "
                      "EXISTS (SELECT 1 FROM orders o WHERE o.id = r.order_id AND o.status = "
                      "'completed') AND NOT EXISTS (SELECT 1 FROM stock_movements s WHERE "
                      "s.order_id = r.order_id AND s.kind = 'restore')") == 0,
              "%s: no orphan reservation (reduce without completion or restore)", after);
    tap_check(sql_int("SELECT count(*) FROM orders WHERE status = 'pending'") == 0,
              "%s: no order left pending", after);
}

/* ------------------------------------------------------------ gRPC calls */

typedef struct {
    int done;
    grpc_status_t status;
    char message[300];
    char id[72];
    int ostatus; /* Shop__V1__OrderStatus */
    bool replayed;
    char failure[64];
} res_t;

static int g_pending;

__attribute__((unused)) static void on_create(const grpc_result_t *r, void *arg)
{
    res_t *x = arg;
    x->done = 1;
    x->status = r->status;
    snprintf(x->message, sizeof x->message, "%s", r->message ? r->message : "");
    if (r->status == GRPC_STATUS_OK) {
        Shop__V1__CreateOrderResponse *c =
            shop__v1__create_order_response__unpack(NULL, r->response_len, r->response);
        if (c && c->order) {
            snprintf(x->id, sizeof x->id, "%s", c->order->id);
            x->ostatus = c->order->status;
            x->replayed = c->replayed;
            snprintf(x->failure, sizeof x->failure, "%s", c->order->failure_reason);
        }
        if (c)
            shop__v1__create_order_response__free_unpacked(c, NULL);
    }
    if (--g_pending == 0)
        loop_stop(g_loop);
}

__attribute__((unused)) static void on_timeout(loop_t *l, loop_timer_t *t, void *a)
{
    (void)t;
    (void)a;
    loop_stop(l);
}

__attribute__((unused)) static void run_pending(uint64_t ms)
{
    loop_timer_t t;
    loop_timer_init(&t);
    loop_timer_start(g_loop, &t, ms * MS, 0, on_timeout, NULL);
    while (g_pending > 0 && loop_timer_active(&t))
        loop_run(g_loop);
    loop_timer_stop(g_loop, &t);
}

__attribute__((unused)) static void start_create(const char *user, const char *product, int qty, long long amount,
                         const char *key, const char *traceparent, res_t *out)
{
    Shop__V1__CreateOrderRequest q = SHOP__V1__CREATE_ORDER_REQUEST__INIT;
    q.user_id = (char *)(uintptr_t)user;
    q.product_id = (char *)(uintptr_t)product;
    q.quantity = qty;
    q.amount_cents = amount;
    q.idempotency_key = (char *)(uintptr_t)(key ? key : "");
    uint8_t buf[512];
    size_t n = shop__v1__create_order_request__pack(&q, buf);
    grpc_md_t md = {"traceparent", (const uint8_t *)traceparent, traceparent ? strlen(traceparent) : 0};
    memset(out, 0, sizeof *out);
    g_pending++;
    if (grpc_call_unary(g_ch, "/shop.v1.OrderService/CreateOrder", buf, n, false, 10000 * MS,
                        traceparent ? &md : NULL, traceparent ? 1 : 0, on_create, out) != 0)
        g_pending--;
}

__attribute__((unused)) static res_t create(const char *user, const char *product, int qty, long long amount,
                    const char *key)
{
    res_t r;
    start_create(user, product, qty, amount, key, NULL, &r);
    run_pending(15000);
    return r;
}

__attribute__((unused)) static void on_get(const grpc_result_t *r, void *arg)
{
    res_t *x = arg;
    x->done = 1;
    x->status = r->status;
    if (r->status == GRPC_STATUS_OK) {
        Shop__V1__GetOrderResponse *g = shop__v1__get_order_response__unpack(NULL, r->response_len, r->response);
        if (g && g->order) {
            snprintf(x->id, sizeof x->id, "%s", g->order->id);
            x->ostatus = g->order->status;
            snprintf(x->failure, sizeof x->failure, "%s", g->order->failure_reason);
        }
        if (g)
            shop__v1__get_order_response__free_unpacked(g, NULL);
    }
    if (--g_pending == 0)
        loop_stop(g_loop);
}

__attribute__((unused)) static res_t get_order(const char *id)
{
    Shop__V1__GetOrderRequest q = SHOP__V1__GET_ORDER_REQUEST__INIT;
    q.id = (char *)(uintptr_t)id;
    uint8_t buf[256];
    size_t n = shop__v1__get_order_request__pack(&q, buf);
    res_t r;
    memset(&r, 0, sizeof r);
    g_pending++;
    grpc_call_unary(g_ch, "/shop.v1.OrderService/GetOrder", buf, n, false, 5000 * MS, NULL, 0, on_get, &r);
    run_pending(6000);
    return r;
}

typedef struct {
    grpc_status_t status;
    int n;
    char ids[100][72];
    char token[256];
} list_res_t;

__attribute__((unused)) static void on_list(const grpc_result_t *r, void *arg)
{
    list_res_t *x = arg;
    x->status = r->status;
    if (r->status == GRPC_STATUS_OK) {
        Shop__V1__ListOrdersResponse *l =
            shop__v1__list_orders_response__unpack(NULL, r->response_len, r->response);
        if (l) {
            for (size_t i = 0; i < l->n_orders && i < 100; i++)
                snprintf(x->ids[x->n++], 72, "%s", l->orders[i]->id);
            snprintf(x->token, sizeof x->token, "%s", l->next_page_token);
            shop__v1__list_orders_response__free_unpacked(l, NULL);
        }
    }
    if (--g_pending == 0)
        loop_stop(g_loop);
}

__attribute__((unused)) static list_res_t list_orders(const char *user, int size, const char *token)
{
    Shop__V1__ListOrdersRequest q = SHOP__V1__LIST_ORDERS_REQUEST__INIT;
    q.user_id = (char *)(uintptr_t)user;
    q.page_size = size;
    q.page_token = (char *)(uintptr_t)token;
    uint8_t buf[512];
    size_t n = shop__v1__list_orders_request__pack(&q, buf);
    list_res_t r;
    memset(&r, 0, sizeof r);
    g_pending++;
    grpc_call_unary(g_ch, "/shop.v1.OrderService/ListOrders", buf, n, false, 5000 * MS, NULL, 0, on_list, &r);
    run_pending(6000);
    return r;
}

/* After a peer restarts, order-svc's channel may still be in its
 * reconnect back-off: retry while CheckStock (which writes nothing) is
 * what failed. */
__attribute__((unused)) static res_t create_retry(const char *user, const char *product, int qty, long long amount)
{
    res_t r;
    for (int i = 0; i < 40; i++) {
        r = create(user, product, qty, amount, NULL);
        if (!(r.status == GRPC_STATUS_UNAVAILABLE && strncmp(r.message, "inventory-svc:", 14) == 0))
            break;
        usleep(200000);
    }
    return r;
}

#endif
