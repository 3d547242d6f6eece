/*
 * tests/db/test_redis.c - core/redis against a real redis-server started by
 * tests/db/redis-harness.sh: GET/SET/DEL, a timeout against a paused
 * server (SIGSTOP) and recovery (SIGCONT), reconnect after a restart, and
 * one CLIENT span per command without values in db.query.text.
 *
 * Usage: test_redis /path/to/redis-harness.sh
 */
#include <stdint.h>
#include <unistd.h>

#include "redis.h"
#include "db_test.h"
#include "tap.h"

static redis_client_t *rc;
static int n_done, last_status, last_type;
static long long last_int;
static char last_str[256];

static void on_reply(redis_client_t *c, int st, const redisReply *r, const char *msg, void *arg)
{
    (void)c;
    (void)msg;
    (void)arg;
    n_done++;
    last_status = st;
    last_type = r != NULL ? r->type : -1;
    last_int = r != NULL ? r->integer : 0;
    snprintf(last_str, sizeof last_str, "%s", r != NULL && r->str != NULL ? r->str : "");
}

static int want;
static bool reached(void *arg)
{
    (void)arg;
    return n_done >= want;
}
static bool connected(void *arg)
{
    (void)arg;
    return redis_connected(rc);
}
static bool disconnected(void *arg)
{
    (void)arg;
    return !redis_connected(rc);
}

static int cmd(loop_t *loop, uint32_t timeout_ms, int argc, const char *const *argv)
{
    n_done = 0;
    last_status = 1;
    redis_cmd_opts_t o = {.timeout_ms = timeout_ms};
    int ret = redis_command(rc, &o, on_reply, NULL, argc, argv, NULL);
    if (ret != 0)
        return ret;
    want = 1;
    dbt_run_until(loop, reached, NULL, 5000);
    return last_status;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test_redis redis-harness.sh\n");
        return 2;
    }
    char tmpl[] = "/tmp/shop-redis-XXXXXX";
    if (mkdtemp(tmpl) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    const char *hp = dbt_harness(argv[1], "start", tmpl);
    if (!tap_check(hp != NULL && *hp != '\0', "private redis-server started: %s", hp ? hp : "(failed)"))
        return tap_done();
    char host[64];
    unsigned port = 0;
    sscanf(hp, "%63s %u", host, &port);
    tap_check(dbt_trace_init() == 0, "trace_init with a span sink");

    loop_t *loop;
    if (loop_create(&loop, NULL) != 0)
        return 1;
    redis_options_t o = {.host = host, .port = (uint16_t)port, .command_timeout_ms = 1000};
    tap_check(redis_create(loop, &o, &rc) == 0, "client created");
    tap_check(dbt_run_until(loop, connected, NULL, 5000), "connected");

    const char *set[] = {"SET", "user:42", "secret-value \"Zoë\""};
    const char *get[] = {"GET", "user:42"};
    const char *del[] = {"DEL", "user:42"};
    tap_check(cmd(loop, 0, 3, set) == 0 && strcmp(last_str, "OK") == 0, "SET user:42");
    tap_check(cmd(loop, 0, 2, get) == 0 && strcmp(last_str, "secret-value \"Zoë\"") == 0, "GET returns the value");
    tap_check(cmd(loop, 0, 2, del) == 0 && last_int == 1, "DEL removes 1 key");
    tap_check(cmd(loop, 0, 2, get) == 0 && last_type == REDIS_REPLY_NIL, "GET after DEL: nil");
    const char *bad[] = {"INCR", "user:43", "extra"};
    tap_check(cmd(loop, 0, 3, bad) == REDIS_E_REPLY, "wrong arity: REDIS_E_REPLY (%s)", last_str);

    /* paused server: timeout, then recovery */
    tap_check(dbt_harness(argv[1], "pause", tmpl) != NULL, "server paused (SIGSTOP)");
    uint64_t t0 = loop_now_ns();
    int st = cmd(loop, 200, 2, get);
    double ms = (double)(loop_now_ns() - t0) / 1e6;
    tap_check(st == REDIS_E_TIMEOUT && ms < 800, "GET against a paused server: REDIS_E_TIMEOUT after %.0f ms", ms);
    tap_check(dbt_harness(argv[1], "resume", tmpl) != NULL, "server resumed (SIGCONT)");
    tap_check(cmd(loop, 0, 3, set) == 0 && cmd(loop, 0, 2, get) == 0 && strcmp(last_str, "secret-value \"Zoë\"") == 0,
              "SET/GET work after SIGCONT (late reply dropped)");

    /* restart: reconnect */
    redis_counters_t c0;
    redis_counters(rc, &c0);
    tap_check(dbt_harness(argv[1], "restart", tmpl) != NULL, "server restarted");
    tap_check(dbt_run_until(loop, disconnected, NULL, 5000), "client noticed the restart");
    tap_check(dbt_run_until(loop, connected, NULL, 10000), "client reconnected");
    tap_check(cmd(loop, 0, 3, set) == 0 && cmd(loop, 0, 2, get) == 0 && strcmp(last_str, "secret-value \"Zoë\"") == 0,
              "SET/GET after reconnect");
    redis_counters_t c1;
    redis_counters(rc, &c1);
    tap_check(c1.conn_lost - c0.conn_lost == 1 && c1.connects - c0.connects == 1, "one loss, one reconnect");

    /* spans */
    int n = 0, bad_attr = 0, leaked = 0, timeouts = 0;
    for (int i = 0; i < dbt_nspans; i++) {
        const dbt_span_t *s = &dbt_spans[i];
        const char *sys = dbt_attr(s, "db.system.name");
        if (sys == NULL || strcmp(sys, "redis") != 0)
            continue;
        n++;
        const char *qt = dbt_attr(s, "db.query.text"), *op = dbt_attr(s, "db.operation.name");
        if (s->kind != TRACE_KIND_CLIENT || qt == NULL || op == NULL || strcmp(s->name, op) != 0 ||
            dbt_attr(s, "server.port") == NULL || dbt_attr(s, "db.namespace") == NULL)
            bad_attr++;
        if (qt != NULL && strstr(qt, "secret") != NULL)
            leaked++;
        if (s->status == TRACE_STATUS_ERROR && dbt_attr(s, "error.type") != NULL &&
            strcmp(dbt_attr(s, "error.type"), "timeout") == 0)
            timeouts++;
    }
    redis_counters(rc, &c1);
    tap_check((uint64_t)n == c1.commands, "one CLIENT span per command: %d spans, %llu commands", n,
              (unsigned long long)c1.commands);
    tap_check(bad_attr == 0, "spans named by the command, with db.* and server.* attributes (%d bad)", bad_attr);
    tap_check(leaked == 0, "no value in db.query.text (e.g. \"SET user:42 ?\")");
    tap_check(timeouts == 1, "the timed-out command's span has error.type=timeout");

    redis_destroy(rc);
    loop_destroy(loop);
    trace_shutdown();
    dbt_harness(argv[1], "stop", tmpl);
    return tap_done();
}
