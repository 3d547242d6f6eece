/*
 * services/common/svc.c - the service runtime (see svc.h): command line,
 * config, tracing, loop, gRPC server + grpc.health.v1, clients, shutdown,
 * database error mapping.
 */
#include "svc.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buildconf.h"
#include "grpc/health/v1/health.pb-c.h"

#define SVC__MS 1000000ull
#define SVC__HOOKS_MAX 8
#define SVC__NAMES_MAX 8

struct st_svc_t {
    svc_options_t opt;
    config_t *cfg;
    loop_t *loop;
    grpc_server_t *srv;
    pg_pool_t *pg;
    redis_client_t *redis;
    uint16_t port;
    bool traced;    /* trace_init succeeded */
    bool stopping;  /* graceful shutdown started */
    bool forced;    /* second signal */
    svc_health_cb health_cb;
    void *health_arg;
    struct {
        svc_shutdown_cb cb;
        void *arg;
    } hooks[SVC__HOOKS_MAX];
    int nhooks;
    const char *names[SVC__NAMES_MAX]; /* services for Health/Check */
    int nnames;
    char conninfo[1024];
};

/* One service per process: the error helpers log through it. */
static svc_t *svc__self;

void svc_log(const svc_t *svc, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s: %s\n", svc && svc->opt.name ? svc->opt.name : "svc", buf);
}

static void svc__usage(FILE *f, const char *name)
{
    fprintf(f,
            "usage: %s [--config FILE] [--check-config]\n"
            "  --config FILE   the shop-trace configuration (default: $SHOP_CONFIG, else ./shop.conf)\n"
            "  --check-config  validate the configuration and the environment, print ok, exit\n",
            name);
}

static void svc__dump_line(void *u, const char *s) { svc_log(u, "config: %s", s); }

/* libpq conninfo value: single-quoted, with \ and ' escaped. */
static void svc__ci_append(char *buf, size_t cap, const char *key, const char *val)
{
    size_t n = strlen(buf);
    int k = snprintf(buf + n, cap - n, "%s%s='", n ? " " : "", key);
    if (k < 0 || (size_t)k >= cap - n)
        return;
    n += (size_t)k;
    for (const char *p = val; *p && n + 3 < cap; p++) {
        if (*p == '\'' || *p == '\\')
            buf[n++] = '\\';
        buf[n++] = *p;
    }
    if (n + 1 < cap)
        buf[n++] = '\'';
    buf[n] = '\0';
}

/* ------------------------------------------------------------ health */

static bool svc__known_service(const svc_t *svc, const char *name)
{
    if (name == NULL || name[0] == '\0')
        return true;
    for (int i = 0; i < svc->nnames; i++)
        if (strcmp(svc->names[i], name) == 0)
            return true;
    return false;
}

bool svc_healthy(svc_t *svc)
{
    if (svc->stopping)
        return false;
    if (svc->pg && pg_pool_ready(svc->pg) == 0)
        return false;
    if (svc->health_cb && !svc->health_cb(svc, svc->health_arg))
        return false;
    return true;
}

static void svc__health_check(grpc_server_call_t *call, const ProtobufCMessage *msg, void *arg)
{
    svc_t *svc = arg;
    const Grpc__Health__V1__HealthCheckRequest *req = (const Grpc__Health__V1__HealthCheckRequest *)msg;
    if (!svc__known_service(svc, req->service)) {
        char m[200];
        snprintf(m, sizeof m, "health: unknown service \"%.120s\"", req->service);
        grpc_server_reply(call, GRPC_STATUS_NOT_FOUND, m, NULL);
        return;
    }
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = svc_healthy(svc) ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                                   : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
    grpc_server_reply(call, GRPC_STATUS_OK, NULL, &resp.base);
}

/* Check, then Watch (NULL: UNIMPLEMENTED; the server is unary only). */
static const grpc_server_handler_cb svc__health_handlers[] = {svc__health_check, NULL};

/* ------------------------------------------------------------ create */

static int svc__make_clients(svc_t *svc)
{
    const config_t *c = svc->cfg;
    int rc;
    if (svc->opt.needs & SVC_NEED_PG) {
        char num[32];
        svc->conninfo[0] = '\0';
        svc__ci_append(svc->conninfo, sizeof svc->conninfo, "host", config_str(c, CONFIG_POSTGRES_HOST));
        snprintf(num, sizeof num, "%lld", (long long)config_int(c, CONFIG_POSTGRES_PORT));
        svc__ci_append(svc->conninfo, sizeof svc->conninfo, "port", num);
        svc__ci_append(svc->conninfo, sizeof svc->conninfo, "dbname", config_str(c, CONFIG_POSTGRES_DBNAME));
        svc__ci_append(svc->conninfo, sizeof svc->conninfo, "user", config_str(c, CONFIG_POSTGRES_USER));
        svc__ci_append(svc->conninfo, sizeof svc->conninfo, "application_name", svc->opt.name);
        pg_options_t po = {
            .conninfo = svc->conninfo,
            .pool_size = (unsigned)config_int(c, CONFIG_POSTGRES_POOL_SIZE),
            .pipeline_depth = (unsigned)config_int(c, CONFIG_POSTGRES_PIPELINE_DEPTH),
            .statement_timeout_ms = (uint32_t)config_int(c, CONFIG_POSTGRES_STATEMENT_TIMEOUT),
            .connect_timeout_ms = (uint32_t)config_int(c, CONFIG_POSTGRES_CONNECT_TIMEOUT),
        };
        if ((rc = pg_pool_create(svc->loop, &po, &svc->pg)) < 0) {
            svc_log(svc, "pg_pool_create(%s): %s", svc->conninfo, pg_strerror(rc));
            return rc;
        }
    }
    if (svc->opt.needs & SVC_NEED_REDIS) {
        redis_options_t ro = {
            .host = config_str(c, CONFIG_REDIS_HOST),
            .port = (uint16_t)config_int(c, CONFIG_REDIS_PORT),
            .connect_timeout_ms = (uint32_t)config_int(c, CONFIG_REDIS_CONNECT_TIMEOUT),
            .command_timeout_ms = (uint32_t)config_int(c, CONFIG_REDIS_COMMAND_TIMEOUT),
        };
        if ((rc = redis_create(svc->loop, &ro, &svc->redis)) < 0) {
            svc_log(svc, "redis_create(%s:%u): %s", ro.host, ro.port, strerror(-rc));
            return rc;
        }
    }
    return 0;
}

int svc_create(const svc_options_t *o, int argc, char **argv, svc_t **out)
{
    *out = NULL;
    if (o == NULL || o->name == NULL) {
        fprintf(stderr, "svc_create: options without a name\n");
        return SVC_EXIT_FAIL;
    }
    const char *path = NULL;
    bool check = false;
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", no_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c': path = optarg; break;
        case 'k': check = true; break;
        case 'h': svc__usage(stdout, o->name); return SVC_EXIT_OK;
        default: svc__usage(stderr, o->name); return SVC_EXIT_CONFIG;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "%s: unexpected argument %s\n", o->name, argv[optind]);
        svc__usage(stderr, o->name);
        return SVC_EXIT_CONFIG;
    }

    svc_t *svc = calloc(1, sizeof *svc);
    if (svc == NULL) {
        fprintf(stderr, "%s: out of memory\n", o->name);
        return SVC_EXIT_FAIL;
    }
    svc->opt = *o;
    if (svc->opt.version == NULL)
        svc->opt.version = SHOP_VERSION;
    char err[512];
    int rc = config_load(path, &svc->cfg, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "%s\n", err);
        free(svc);
        return rc == -EINVAL || rc == -ENOENT || rc == -EACCES ? SVC_EXIT_CONFIG : SVC_EXIT_FAIL;
    }
    config_trace_t store = {0};
    trace_options_t to = {0}; /* config_trace_options sets only its own fields */
    if (config_trace_options(svc->cfg, &store, &to, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        config_free(svc->cfg);
        free(svc);
        return SVC_EXIT_CONFIG;
    }
    if (o->check != NULL && o->check(svc->cfg, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        config_free(svc->cfg);
        free(svc);
        return SVC_EXIT_CONFIG;
    }
    if (check) {
        printf("ok\n");
        fflush(stdout);
        config_free(svc->cfg);
        free(svc);
        return SVC_EXIT_OK;
    }
    svc__self = svc;
    svc_log(svc, "starting version %s, config %s", svc->opt.version,
            config_path(svc->cfg) ? config_path(svc->cfg) : "(defaults)");
    config_dump(svc->cfg, svc__dump_line, svc);

    signal(SIGPIPE, SIG_IGN);
    to.service_name = svc->opt.name;
    to.service_version = svc->opt.version;
    to.create_ring = true; /* services may start before the exporter */
    if ((rc = trace_init(&to, err, sizeof err)) < 0) {
        svc_log(svc, "trace_init: %s", err);
        goto err;
    }
    svc->traced = true;
    if ((rc = loop_create(&svc->loop, NULL)) < 0) {
        svc_log(svc, "loop_create: %s", strerror(-rc));
        goto err;
    }
    if ((rc = grpc_server_new(svc->loop, o->server, &svc->srv)) < 0) {
        svc_log(svc, "grpc_server_new: %s", strerror(-rc));
        goto err;
    }
    if ((rc = grpc_server_add_service(svc->srv, &grpc__health__v1__health__descriptor, svc__health_handlers,
                                      svc)) < 0) {
        svc_log(svc, "grpc_server_add_service(grpc.health.v1.Health): %s", strerror(-rc));
        goto err;
    }
    if (svc__make_clients(svc) < 0)
        goto err;
    *out = svc;
    return 0;
err:
    svc_free(svc);
    return SVC_EXIT_FAIL;
}

void svc_free(svc_t *svc)
{
    if (svc == NULL)
        return;
    if (svc->srv)
        grpc_server_free(svc->srv);
    if (svc->redis)
        redis_destroy(svc->redis);
    if (svc->pg)
        pg_pool_destroy(svc->pg);
    if (svc->loop)
        loop_destroy(svc->loop);
    if (svc->traced)
        trace_shutdown();
    config_free(svc->cfg);
    if (svc__self == svc)
        svc__self = NULL;
    free(svc);
}

int svc_add_service(svc_t *svc, const ProtobufCServiceDescriptor *desc, const grpc_server_handler_cb *handlers,
                    void *arg)
{
    int rc = grpc_server_add_service(svc->srv, desc, handlers, arg);
    if (rc == 0 && svc->nnames < SVC__NAMES_MAX)
        svc->names[svc->nnames++] = desc->name;
    return rc;
}

void svc_set_health(svc_t *svc, svc_health_cb cb, void *arg)
{
    svc->health_cb = cb;
    svc->health_arg = arg;
}

int svc_on_shutdown(svc_t *svc, svc_shutdown_cb cb, void *arg)
{
    if (svc->nhooks >= SVC__HOOKS_MAX)
        return -ENOMEM;
    svc->hooks[svc->nhooks].cb = cb;
    svc->hooks[svc->nhooks].arg = arg;
    svc->nhooks++;
    return 0;
}

/* ------------------------------------------------------------ run/shutdown */

static void svc__server_done(grpc_server_t *srv, void *arg)
{
    (void)srv;
    svc_t *svc = arg;
    svc_log(svc, "shutdown: every connection closed");
    loop_stop(svc->loop);
}

void svc_shutdown(svc_t *svc)
{
    if (svc->stopping)
        return;
    svc->stopping = true;
    for (int i = 0; i < svc->nhooks; i++)
        svc->hooks[i].cb(svc, svc->hooks[i].arg);
    uint64_t grace = (uint64_t)config_int(svc->cfg, CONFIG_SERVICE_SHUTDOWN_GRACE) * SVC__MS;
    int rc = grpc_server_shutdown(svc->srv, grace, svc__server_done, svc);
    if (rc < 0) {
        svc_log(svc, "grpc_server_shutdown: %s", strerror(-rc));
        loop_stop(svc->loop);
    }
}

bool svc_stopping(const svc_t *svc) { return svc->stopping; }

static void svc__on_signal(loop_t *loop, int signo, void *arg)
{
    svc_t *svc = arg;
    if (svc->stopping) {
        svc_log(svc, "signal %d again: stopping now", signo);
        svc->forced = true;
        loop_stop(loop);
        return;
    }
    svc_log(svc, "signal %d: graceful shutdown (%lld ms for calls in flight)", signo,
            (long long)config_int(svc->cfg, CONFIG_SERVICE_SHUTDOWN_GRACE));
    svc_shutdown(svc);
}

int svc_run(svc_t *svc)
{
    const char *addr = config_str(svc->cfg, svc->opt.listen_address);
    uint16_t want = (uint16_t)config_int(svc->cfg, svc->opt.listen_port);
    int rc;
    if ((rc = loop_signal(svc->loop, SIGTERM, svc__on_signal, svc)) < 0 ||
        (rc = loop_signal(svc->loop, SIGINT, svc__on_signal, svc)) < 0) {
        svc_log(svc, "loop_signal: %s", strerror(-rc));
        return SVC_EXIT_FAIL;
    }
    if ((rc = grpc_server_listen(svc->srv, addr, want, &svc->port)) < 0) {
        svc_log(svc, "listen %s:%u: %s", addr, want, strerror(-rc));
        return SVC_EXIT_FAIL;
    }
    printf("%s listening on %s:%u\n", svc->opt.name, addr, svc->port);
    fflush(stdout);
    rc = loop_run(svc->loop);
    grpc_server_stats_t st;
    grpc_server_stats(svc->srv, &st);
    svc_log(svc, "exit: %llu connections, calls %llu started, %llu finished, %llu cancelled, %llu bad requests",
            (unsigned long long)st.conns_accepted, (unsigned long long)st.calls_started,
            (unsigned long long)st.calls_finished, (unsigned long long)st.calls_cancelled,
            (unsigned long long)st.bad_requests);
    if (svc->pg) {
        pg_counters_t pc;
        pg_pool_counters(svc->pg, &pc);
        svc_log(svc, "exit: postgres %llu queries, %llu errors, %llu timeouts, %llu connects, %llu lost",
                (unsigned long long)pc.queries, (unsigned long long)pc.errors, (unsigned long long)pc.timeouts,
                (unsigned long long)pc.connects, (unsigned long long)pc.conn_lost);
    }
    if (svc->redis) {
        redis_counters_t rcn;
        redis_counters(svc->redis, &rcn);
        svc_log(svc, "exit: redis %llu commands, %llu errors, %llu timeouts, %llu connects, %llu lost",
                (unsigned long long)rcn.commands, (unsigned long long)rcn.errors,
                (unsigned long long)rcn.timeouts, (unsigned long long)rcn.connects,
                (unsigned long long)rcn.conn_lost);
    }
    if (rc < 0) {
        svc_log(svc, "loop_run: %s", strerror(-rc));
        return SVC_EXIT_FAIL;
    }
    return svc->forced ? SVC_EXIT_FAIL : SVC_EXIT_OK;
}

/* ------------------------------------------------------------ accessors */

const char *svc_name(const svc_t *svc) { return svc->opt.name; }
loop_t *svc_loop(svc_t *svc) { return svc->loop; }
const config_t *svc_config(const svc_t *svc) { return svc->cfg; }
grpc_server_t *svc_server(svc_t *svc) { return svc->srv; }
pg_pool_t *svc_pg(svc_t *svc) { return svc->pg; }
redis_client_t *svc_redis(svc_t *svc) { return svc->redis; }
uint16_t svc_port(const svc_t *svc) { return svc->port; }

const trace_context_t *svc_call_ctx(grpc_server_call_t *call)
{
    return trace_span_context(grpc_server_call_span(call));
}

int svc_check_id(const char *id, const char *field, char *msg, size_t cap)
{
    if (id == NULL || id[0] == '\0') {
        snprintf(msg, cap, "%s: must not be empty", field);
        return -EINVAL;
    }
    size_t n = strlen(id);
    if (n > SVC_ID_MAX) {
        snprintf(msg, cap, "%s: %zu bytes, at most %u allowed", field, n, SVC_ID_MAX);
        return -EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)id[i];
        if (ch < 0x20 || ch == 0x7f) {
            snprintf(msg, cap, "%s: control character at byte %zu", field, i);
            return -EINVAL;
        }
    }
    return 0;
}

/* ------------------------------------------------------------ error mapping */

grpc_status_t svc_pg_status(int status, const PGresult *r)
{
    switch (status) {
    case 0: return GRPC_STATUS_OK;
    case PG_ERR_TIMEOUT:
        /* A query that timed out in the queue of a pool with no connection
         * says "database unreachable" (retry elsewhere/later), not "slow". */
        if (svc__self && svc__self->pg && pg_pool_ready(svc__self->pg) == 0)
            return GRPC_STATUS_UNAVAILABLE;
        return GRPC_STATUS_DEADLINE_EXCEEDED;
    case PG_ERR_CONNECTION:
    case PG_ERR_SHUTDOWN:
    case PG_ERR_TXN:
    case -ENOTCONN:
    case -ECONNREFUSED: return GRPC_STATUS_UNAVAILABLE;
    case -ENOMEM: return GRPC_STATUS_RESOURCE_EXHAUSTED;
    case PG_ERR_SERVER: break;
    default: return GRPC_STATUS_INTERNAL;
    }
    const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    if (st == NULL || strlen(st) != 5)
        return GRPC_STATUS_INTERNAL;
    if (strcmp(st, "57014") == 0)
        return GRPC_STATUS_DEADLINE_EXCEEDED;
    if (strncmp(st, "08", 2) == 0 || strncmp(st, "57P", 3) == 0 || strncmp(st, "53", 2) == 0)
        return GRPC_STATUS_UNAVAILABLE;
    if (strcmp(st, "40001") == 0 || strcmp(st, "40P01") == 0)
        return GRPC_STATUS_ABORTED;
    if (strcmp(st, "23505") == 0)
        return GRPC_STATUS_ALREADY_EXISTS;
    if (strcmp(st, "23503") == 0 || strcmp(st, "23514") == 0)
        return GRPC_STATUS_FAILED_PRECONDITION;
    if (strncmp(st, "22", 2) == 0)
        return GRPC_STATUS_INVALID_ARGUMENT;
    return GRPC_STATUS_INTERNAL;
}

grpc_status_t svc_redis_status(int status)
{
    switch (status) {
    case 0: return GRPC_STATUS_OK;
    case REDIS_E_TIMEOUT: return GRPC_STATUS_DEADLINE_EXCEEDED;
    case REDIS_E_CONNECTION:
    case REDIS_E_SHUTDOWN:
    case -ENOTCONN: return GRPC_STATUS_UNAVAILABLE;
    case -ENOMEM: return GRPC_STATUS_RESOURCE_EXHAUSTED;
    default: return GRPC_STATUS_INTERNAL;
    }
}

const char *svc_pg_message(char *out, size_t cap, const char *what, int status, const PGresult *r,
                           const char *msg)
{
    const char *primary = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    if (primary && st)
        snprintf(out, cap, "%s: %s (SQLSTATE %s)", what, primary, st);
    else
        snprintf(out, cap, "%s: %s", what, msg && msg[0] ? msg : pg_strerror(status));
    return out;
}

int svc_reply_pg_error(grpc_server_call_t *call, const char *what, int status, const PGresult *r,
                       const char *msg)
{
    char m[512];
    svc_pg_message(m, sizeof m, what, status, r, msg);
    grpc_status_t gs = svc_pg_status(status, r);
    svc_log(svc__self, "%s -> %s", m, grpc_status_name((int)gs));
    return grpc_server_reply(call, gs, m, NULL);
}

int svc_reply_redis_error(grpc_server_call_t *call, const char *what, int status, const char *msg)
{
    char m[512];
    snprintf(m, sizeof m, "%s: %s", what, msg && msg[0] ? msg : redis_strerror(status));
    grpc_status_t gs = svc_redis_status(status);
    svc_log(svc__self, "%s -> %s", m, grpc_status_name((int)gs));
    return grpc_server_reply(call, gs, m, NULL);
}
