/*
 * core/redis.c - Redis client on the io_uring loop (see redis.h for the API
 * and the callback contract).
 *
 * Shape: hiredis (0.14+) async API; its event-library hooks (ev.addRead,
 * delRead, addWrite, delWrite, cleanup) map onto one loop_watch_t on the
 * context's socket, whose callback calls redisAsyncHandleRead/Write.  The
 * client is a small state machine: DOWN (backoff timer armed) ->
 * CONNECTING (connect timer armed) -> READY -> DOWN on disconnect.
 * hiredis 0.14 has no timeouts of its own in the async API, so command and
 * connect timeouts are loop timers; a timed-out command keeps its request
 * alive (hiredis owns it as privdata) until the answer or the disconnect
 * comes, and the callback is not run twice.
 */
#include "redis.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const trace_scope_t redis__scope = TRACE_SCOPE("shop.core.redis", "0.1.0");

#define REDIS__NS_PER_MS 1000000u
#define REDIS__QTEXT_MAX 256

typedef enum { REDIS__S_DOWN = 1, REDIS__S_CONNECTING, REDIS__S_READY } redis__state_t;

typedef struct redis__req {
    redis_client_t *c;
    bool done;          /* reported (timeout): drop the late answer */
    redis_reply_cb cb;
    void *arg;
    loop_timer_t timer;
    trace_span_t span;
} redis__req_t;

struct st_redis_client_t {
    loop_t *loop;
    redis_options_t opt;
    char host[64];
    redis__state_t state;
    redisAsyncContext *ac; /* NULL while DOWN */
    loop_watch_t *w;       /* on ac's socket, NULL while DOWN */
    unsigned want;         /* LOOP_WATCH_* hiredis asked for */
    loop_timer_t timer;    /* backoff (DOWN) or connect timeout (CONNECTING) */
    uint32_t backoff_ms;
    bool destroying;
    redis_counters_t ctr;
};

__attribute__((noreturn)) static void redis__fatal_at(const char *file, int line, const char *msg)
{
    fprintf(stderr, "redis: fatal: %s:%d: %s\n", file, line, msg);
    abort();
}
#define redis__fatal(msg) redis__fatal_at(__FILE__, __LINE__, (msg))

const char *redis_strerror(int status)
{
    switch (status) {
    case 0:
        return "ok";
#define REDIS__E_STR(name, val, str) \
    case name:                       \
        return str;
        REDIS_E_MAP(REDIS__E_STR)
#undef REDIS__E_STR
    }
    return status < 0 && status > -4096 ? strerror(-status) : "unknown redis status";
}

/* --------------------------------------------------------- loop adapter */

static void redis__watch_cb(loop_watch_t *w, unsigned ev, void *arg)
{
    (void)w;
    redis_client_t *c = arg;
    redisAsyncContext *ac = c->ac;
    if (ac == NULL)
        return;
    if (ev & LOOP_WATCH_READ) {
        redisAsyncHandleRead(ac);
        if (c->ac != ac) /* freed inside (EOF, error) */
            return;
    }
    if (ev & LOOP_WATCH_WRITE)
        redisAsyncHandleWrite(ac);
}

static void redis__ev_set(redis_client_t *c, unsigned want)
{
    c->want = want;
    if (c->w != NULL)
        loop_watch_set(c->w, want);
}
static void redis__ev_add_read(void *p)
{
    redis_client_t *c = p;
    redis__ev_set(c, c->want | LOOP_WATCH_READ);
}
static void redis__ev_del_read(void *p)
{
    redis_client_t *c = p;
    redis__ev_set(c, c->want & ~LOOP_WATCH_READ);
}
static void redis__ev_add_write(void *p)
{
    redis_client_t *c = p;
    redis__ev_set(c, c->want | LOOP_WATCH_WRITE);
}
static void redis__ev_del_write(void *p)
{
    redis_client_t *c = p;
    redis__ev_set(c, c->want & ~LOOP_WATCH_WRITE);
}
/* hiredis frees the context: stop watching its socket (hiredis closes it). */
static void redis__ev_cleanup(void *p)
{
    redis_client_t *c = p;
    if (c->w != NULL) {
        loop_watch_close(c->w);
        c->w = NULL;
    }
    c->want = 0;
}

/* ------------------------------------------------------------ connection */

static void redis__timer_cb(loop_t *loop, loop_timer_t *t, void *arg);

static void redis__schedule(redis_client_t *c)
{
    c->state = REDIS__S_DOWN;
    c->ac = NULL;
    if (c->destroying)
        return;
    if (loop_timer_start(c->loop, &c->timer, (uint64_t)c->backoff_ms * REDIS__NS_PER_MS, 0,
                         redis__timer_cb, c) != 0)
        redis__fatal("loop_timer_start(backoff): out of memory");
    c->backoff_ms = c->backoff_ms * 2 > c->opt.backoff_max_ms ? c->opt.backoff_max_ms
                                                              : c->backoff_ms * 2;
}

static void redis__on_connect(const redisAsyncContext *ac, int status)
{
    redis_client_t *c = ac->data;
    if (c->ac != ac)
        return;
    loop_timer_stop(c->loop, &c->timer);
    if (status != REDIS_OK) {
        /* hiredis frees the context after this callback returns */
        redis__schedule(c);
        return;
    }
    c->state = REDIS__S_READY;
    c->backoff_ms = c->opt.backoff_min_ms;
    c->ctr.connects++;
}

static void redis__on_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    redis_client_t *c = ac->data;
    if (c->ac != ac)
        return;
    if (c->state == REDIS__S_READY) {
        c->ctr.conn_lost++;
        c->backoff_ms = c->opt.backoff_min_ms;
    }
    loop_timer_stop(c->loop, &c->timer);
    redis__schedule(c);
}

static void redis__connect(redis_client_t *c)
{
    redisAsyncContext *ac = redisAsyncConnect(c->host, c->opt.port);
    if (ac == NULL)
        redis__fatal("redisAsyncConnect: out of memory");
    if (ac->err) {
        redisAsyncFree(ac);
        redis__schedule(c);
        return;
    }
    if (loop_watch_start(c->loop, ac->c.fd, redis__watch_cb, c, &c->w) != 0)
        redis__fatal("loop_watch_start: out of memory");
    c->ac = ac;
    c->want = 0;
    ac->data = c;
    ac->ev.data = c;
    ac->ev.addRead = redis__ev_add_read;
    ac->ev.delRead = redis__ev_del_read;
    ac->ev.addWrite = redis__ev_add_write;
    ac->ev.delWrite = redis__ev_del_write;
    ac->ev.cleanup = redis__ev_cleanup;
    c->state = REDIS__S_CONNECTING;
    /* the connect callback also registers for writability: the first
     * writable report completes the non-blocking connect */
    redisAsyncSetConnectCallback(ac, redis__on_connect);
    redisAsyncSetDisconnectCallback(ac, redis__on_disconnect);
    if (loop_timer_start(c->loop, &c->timer, (uint64_t)c->opt.connect_timeout_ms * REDIS__NS_PER_MS,
                         0, redis__timer_cb, c) != 0)
        redis__fatal("loop_timer_start(connect timeout): out of memory");
}

static void redis__timer_cb(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    redis_client_t *c = arg;
    switch (c->state) {
    case REDIS__S_DOWN:
        redis__connect(c);
        return;
    case REDIS__S_CONNECTING: { /* connect timeout */
        redisAsyncContext *ac = c->ac;
        c->ac = NULL; /* the callbacks below see a context we dropped */
        redisAsyncFree(ac);
        redis__schedule(c);
        return;
    }
    case REDIS__S_READY:
        return;
    }
    redis__fatal("redis: client in an unknown state");
}

/* ------------------------------------------------------------- commands */

static void redis__finish(redis__req_t *r, int status, const redisReply *reply, const char *msg)
{
    redis_client_t *c = r->c;
    loop_timer_stop(c->loop, &r->timer);
    c->ctr.commands++;
    if (status != 0) {
        c->ctr.errors++;
        if (status == REDIS_E_TIMEOUT)
            c->ctr.timeouts++;
        if (msg == NULL)
            msg = redis_strerror(status);
        if (status == REDIS_E_REPLY && reply != NULL && reply->str != NULL) {
            /* the error prefix ("ERR", "WRONGTYPE") is the status code */
            size_t n = strcspn(reply->str, " ");
            trace_span_set_str_n(&r->span, "db.response.status_code", 23, reply->str, n);
            trace_span_set_str_n(&r->span, "error.type", 10, reply->str, n);
        } else {
            trace_span_set_str(&r->span, "error.type",
                               status == REDIS_E_TIMEOUT      ? "timeout"
                               : status == REDIS_E_CONNECTION ? "connection_lost"
                               : status == REDIS_E_SHUTDOWN   ? "shutdown"
                                                              : "_OTHER");
        }
        trace_span_set_status(&r->span, TRACE_STATUS_ERROR, msg, strlen(msg));
    }
    trace_span_end(&r->span);
    if (r->cb != NULL)
        r->cb(c, status, reply, msg, r->arg);
}

static void redis__reply_cb(redisAsyncContext *ac, void *reply_v, void *privdata)
{
    redis__req_t *r = privdata;
    redisReply *reply = reply_v;
    if (!r->done) {
        r->done = true;
        if (reply == NULL) {
            redis_client_t *c = r->c;
            redis__finish(r, c->destroying ? REDIS_E_SHUTDOWN : REDIS_E_CONNECTION, NULL,
                          c->destroying ? NULL : ac->errstr[0] ? ac->errstr : "connection closed");
        } else {
            redis__finish(r, reply->type == REDIS_REPLY_ERROR ? REDIS_E_REPLY : 0, reply,
                          reply->type == REDIS_REPLY_ERROR ? reply->str : NULL);
        }
    }
    free(r);
}

static void redis__timeout_cb(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    redis__req_t *r = arg;
    if (r->done)
        return;
    r->done = true; /* hiredis still owns r as privdata and frees it later */
    redis__finish(r, REDIS_E_TIMEOUT, NULL, "redis command timed out");
}

int redis_command(redis_client_t *c, const redis_cmd_opts_t *o, redis_reply_cb cb, void *arg,
                  int argc, const char *const *argv, const size_t *argvlen)
{
    if (argc < 1 || argv == NULL)
        return -EINVAL;
    if (c->ac == NULL)
        return -ENOTCONN;
    redis__req_t *r = calloc(1, sizeof *r);
    if (r == NULL)
        return -ENOMEM;
    r->c = c;
    r->cb = cb;
    r->arg = arg;
    loop_timer_init(&r->timer);

    /* db.operation.name: the command, upper-case; db.query.text: command,
     * key, "?" per further argument (see redis.h). */
    char op[32], text[REDIS__QTEXT_MAX];
    size_t l0 = argvlen != NULL ? argvlen[0] : strlen(argv[0]), n = 0;
    for (; n < l0 && n + 1 < sizeof op; n++) {
        char ch = argv[0][n];
        op[n] = (char)(ch >= 'a' && ch <= 'z' ? ch - 'a' + 'A' : ch);
    }
    op[n] = '\0';
    size_t tl = (size_t)snprintf(text, sizeof text, "%s", op);
    if (argc > 1) {
        size_t l1 = argvlen != NULL ? argvlen[1] : strlen(argv[1]);
        int k = snprintf(text + tl, sizeof text - tl, " %.*s", (int)(l1 > 128 ? 128 : l1), argv[1]);
        tl += k > 0 ? (size_t)k : 0;
        if (tl >= sizeof text)
            tl = sizeof text - 1;
    }
    for (int i = 2; i < argc && tl + 2 < sizeof text; i++) {
        text[tl++] = ' ';
        text[tl++] = '?';
    }
    text[tl] = '\0';
    trace_span_start(&r->span, &redis__scope, op, n, TRACE_KIND_CLIENT,
                     o != NULL ? o->parent : NULL);
    trace_span_set_str(&r->span, "db.system.name", "redis");
    trace_span_set_str(&r->span, "db.namespace", "0");
    trace_span_set_str_n(&r->span, "db.operation.name", 17, op, n);
    trace_span_set_str_n(&r->span, "db.query.text", 13, text, tl);
    trace_span_set_str(&r->span, "server.address", c->host);
    trace_span_set_int(&r->span, "server.port", c->opt.port);

    if (redisAsyncCommandArgv(c->ac, redis__reply_cb, r, argc, (const char **)(uintptr_t)argv,
                              argvlen) != REDIS_OK) {
        r->cb = NULL;
        trace_span_set_str(&r->span, "error.type", "_OTHER");
        trace_span_end(&r->span);
        free(r);
        return -ENOTCONN;
    }
    uint32_t tmo = o != NULL && o->timeout_ms != 0 ? o->timeout_ms : c->opt.command_timeout_ms;
    if (loop_timer_start(c->loop, &r->timer, (uint64_t)tmo * REDIS__NS_PER_MS, 0,
                         redis__timeout_cb, r) != 0)
        redis__fatal("loop_timer_start(command timeout): out of memory");
    return 0;
}

/* ------------------------------------------------------------------ API */

int redis_create(loop_t *loop, const redis_options_t *opt, redis_client_t **out)
{
    const char *host = opt->host != NULL ? opt->host : "127.0.0.1";
    unsigned char tmp[16];
    if (strlen(host) >= 64 ||
        (inet_pton(AF_INET, host, tmp) != 1 && inet_pton(AF_INET6, host, tmp) != 1))
        return -EINVAL;
    redis_client_t *c = calloc(1, sizeof *c);
    if (c == NULL)
        return -ENOMEM;
    c->loop = loop;
    c->opt = *opt;
    snprintf(c->host, sizeof c->host, "%s", host);
    if (c->opt.port == 0)
        c->opt.port = 6379;
    if (c->opt.connect_timeout_ms == 0)
        c->opt.connect_timeout_ms = 2000;
    if (c->opt.command_timeout_ms == 0)
        c->opt.command_timeout_ms = 1000;
    if (c->opt.backoff_min_ms == 0)
        c->opt.backoff_min_ms = 50;
    if (c->opt.backoff_max_ms == 0)
        c->opt.backoff_max_ms = 2000;
    c->backoff_ms = c->opt.backoff_min_ms;
    c->state = REDIS__S_DOWN;
    loop_timer_init(&c->timer);
    /* connect from the loop: nothing happens inside redis_create */
    if (loop_timer_start(loop, &c->timer, 0, 0, redis__timer_cb, c) != 0) {
        free(c);
        return -ENOMEM;
    }
    *out = c;
    return 0;
}

void redis_destroy(redis_client_t *c)
{
    if (c == NULL)
        return;
    c->destroying = true;
    loop_timer_stop(c->loop, &c->timer);
    if (c->ac != NULL) {
        redisAsyncContext *ac = c->ac;
        redisAsyncFree(ac); /* pending callbacks get NULL: REDIS_E_SHUTDOWN */
        c->ac = NULL;
    }
    free(c);
}

bool redis_connected(const redis_client_t *c)
{
    return c->state == REDIS__S_READY;
}

void redis_counters(const redis_client_t *c, redis_counters_t *out)
{
    *out = c->ctr;
}
