/*
 * core/pg.c - PostgreSQL pool on the io_uring loop (see pg.h for the API
 * and the callback contract).
 *
 * Shape:
 *  - each connection is a state machine (DOWN -> CONNECTING -> READY ->
 *    DOWN on loss), driven by loop_watch_* readiness on libpq's socket and
 *    one loop timer (connect timeout or reconnect backoff);
 *  - every connection runs in libpq's pipeline mode (entered after each
 *    connect): up to pg_options_t.pipeline_depth statements in flight, in
 *    the connection's FIFO (c->pipe), answered in order.  Each statement is
 *    followed by its own sync (PQpipelineSync), so each is its own implicit
 *    transaction segment: a failing statement fails alone, the ones before
 *    and after it in the pipeline still run.  Its results are read with
 *    PQgetResult until NULL, then its PGRES_PIPELINE_SYNC closes it;
 *  - requests wait in the pool's FIFO (or their transaction's FIFO);
 *    pg__pump() gives each to the least-loaded READY connection with room,
 *    so a request waits in the FIFO only while every connection holds
 *    pipeline_depth statements, and flushes each connection once per pass;
 *  - a connection owned by a transaction (BEGIN sent) takes no pooled
 *    statements, and the transaction's statements go one at a time;
 *  - the API never completes a request itself: it queues and arms the
 *    pool's zero-delay "kick" timer, whose callback sends and delivers, so
 *    no callback runs inside pg_query & co;
 *  - a timed-out in-flight request is reported at once and "abandoned": it
 *    stays in its connection's FIFO until the server's answer arrives and is
 *    dropped, so the statements behind it keep their places.  PQcancel is
 *    sent only when it is the statement the server runs (first in flight,
 *    its results not complete yet): a cancel hits whatever runs.
 *
 * Limits, admitted: a slow statement delays the ones queued behind it on
 * its connection (head-of-line; the least-loaded choice and
 * query_timeout_ms bound it).  A cancel that reaches the server just after
 * the timed-out statement finished hits the next one in the pipeline,
 * which then fails with PG_ERR_TIMEOUT (57014); with one statement at a
 * time the same race hit the next statement sent.  libpq 15's
 * PQpipelineSync flushes, so each statement is still one send(); libpq 17's
 * PQsendPipelineSync (used when the header has it) leaves the flush to the
 * one PQflush per connection and pump pass.  The gain is on the receiving
 * side: one read returns many answers, and the server reads many statements
 * per wake-up.
 *
 * Prepared statements (pg_query_opts_t.prepare): the first time a session
 * runs one, PREPARE + sync is put into the pipeline and the execution by
 * name + sync right behind it.  The name counts as prepared from then on,
 * so requests behind it execute by name without a second PREPARE.  If the
 * PREPARE fails, its request reports that error (its execution's answer,
 * 26000, is dropped) and the name is forgotten; executions of the same
 * statement already queued behind it fail with 26000.
 *
 * COPY is refused (the connection is dropped); LISTEN/NOTIFY is not used
 * (notifications are read and discarded).
 */
#include "pg.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const trace_scope_t pg__scope = TRACE_SCOPE("shop.core.pg", "0.1.0");

#define PG__NS_PER_MS 1000000u
#define PG__PREP_MAX 32u /* prepared statements remembered per connection */

typedef enum { PG__Q_QUERY = 1, PG__Q_BEGIN, PG__Q_END } pg__kind_t;
typedef enum { PG__C_DOWN = 1, PG__C_CONNECTING, PG__C_READY } pg__cstate_t;

typedef struct pg__conn pg__conn_t;

/* One request.  Invariant: on exactly one list at a time: the pool queue,
 * its txn queue, the done list, or in flight in one connection's pipeline
 * (conn != NULL); or on none while being delivered. */
typedef struct pg__req {
    struct pg__req *next;
    pg_pool_t *pool;
    pg__kind_t kind;
    pg_txn_t *txn;      /* BEGIN/END, and queries of a transaction */
    pg__conn_t *conn;   /* in flight: in this connection's pipe FIFO; else NULL */
    bool abandoned;     /* reported (timeout, failed PREPARE) while in flight:
                         * the answer is dropped and r freed when it comes */
    int done_status;    /* on the done list: status to deliver */
    const char *done_msg;
    char *sql;
    int nparams;
    const char **values;
    int *lengths, *formats;
    int rfmt;
    bool prepare;       /* pg_query_opts_t.prepare */
    bool preparing;     /* its PREPARE's segment is still ahead of its execution's */
    uint64_t sql_hash;  /* names the prepared statement (prepare only) */
    pg_result_cb cb;
    pg_txn_cb tcb;
    void *arg;
    loop_timer_t timer; /* local timeout; not armed when 0 */
    trace_span_t span;
} pg__req_t;

typedef struct {
    pg__req_t *head, **tail;
} pg__fifo_t;

struct pg__conn {
    pg_pool_t *pool;
    unsigned idx;
    pg__cstate_t state;
    PGconn *pc;
    loop_watch_t *w;
    int fd;            /* fd the watch is on */
    pg__fifo_t pipe;   /* in flight, in the order the server answers */
    unsigned n_pipe;   /* requests in pipe; n_pipe <= pipeline_depth */
    bool seg_end;      /* pipe.head's current statement returned its NULL: its
                        * PGRES_PIPELINE_SYNC is next */
    bool unflushed;    /* statements added in this pump pass, flush pending */
    PGresult *keep;    /* result kept for pipe.head's current segment (the
                        * error, else the last) */
    pg_txn_t *txn;     /* transaction owning this connection, or NULL */
    loop_timer_t timer;/* connect timeout (CONNECTING) or backoff (DOWN) */
    uint32_t backoff_ms;
    uint64_t prepared[PG__PREP_MAX]; /* sql hashes prepared in this session */
    unsigned n_prepared;             /* n_prepared <= PG__PREP_MAX */
};

struct st_pg_txn_t {
    pg_pool_t *pool;
    pg__conn_t *conn;  /* NULL until BEGIN is sent, and after loss */
    pg__fifo_t q;
    bool dead;         /* connection lost: everything fails with PG_ERR_TXN */
    bool ending;       /* pg_txn_end called */
    trace_context_t parent;
    bool has_parent;
};

struct st_pg_pool_t {
    loop_t *loop;
    pg_options_t opt;
    const char **kw, **val; /* connect parameters (NULL-terminated) */
    PQconninfoOption *parsed;
    char *options_buf;      /* "options" value with statement_timeout */
    const char *host, *dbname;
    int port;
    pg__conn_t *conns;
    pg__fifo_t q;           /* waiting for a free connection */
    pg__fifo_t done;        /* completed by the API path, delivered by kick */
    loop_timer_t kick;
    pg_counters_t ctr;
    bool destroying;
};

/* ------------------------------------------------------------- helpers */

__attribute__((noreturn)) static void pg__fatal_at(const char *file, int line, const char *msg)
{
    fprintf(stderr, "pg: fatal: %s:%d: %s\n", file, line, msg);
    abort();
}
#define pg__fatal(msg) pg__fatal_at(__FILE__, __LINE__, (msg))

const char *pg_strerror(int status)
{
    switch (status) {
    case 0:
        return "ok";
#define PG__ERR_STR(name, val, str) \
    case name:                      \
        return str;
        PG_ERR_MAP(PG__ERR_STR)
#undef PG__ERR_STR
    }
    return status < 0 && status > -4096 ? strerror(-status) : "unknown pg status";
}

static void pg__fifo_init(pg__fifo_t *f)
{
    f->head = NULL;
    f->tail = &f->head;
}

static void pg__fifo_push(pg__fifo_t *f, pg__req_t *r)
{
    r->next = NULL;
    *f->tail = r;
    f->tail = &r->next;
}

static void pg__fifo_push_front(pg__fifo_t *f, pg__req_t *r)
{
    r->next = f->head;
    f->head = r;
    if (r->next == NULL)
        f->tail = &r->next;
}

static pg__req_t *pg__fifo_pop(pg__fifo_t *f)
{
    pg__req_t *r = f->head;
    if (r != NULL) {
        f->head = r->next;
        if (f->head == NULL)
            f->tail = &f->head;
        r->next = NULL;
    }
    return r;
}

/* O(n), used on timeouts only. */
static bool pg__fifo_remove(pg__fifo_t *f, pg__req_t *r)
{
    for (pg__req_t **pp = &f->head; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == r) {
            *pp = r->next;
            if (*pp == NULL)
                f->tail = pp;
            r->next = NULL;
            return true;
        }
    }
    return false;
}

static void pg__kick_cb(loop_t *loop, loop_timer_t *t, void *arg);

static void pg__kick(pg_pool_t *p)
{
    if (!loop_timer_active(&p->kick) && loop_timer_start(p->loop, &p->kick, 0, 0, pg__kick_cb, p) != 0)
        pg__fatal("loop_timer_start(kick): out of memory");
}

/* ------------------------------------------------------------ requests */

static void pg__timeout_cb(loop_t *loop, loop_timer_t *t, void *arg);

/* The operation name: the caller's, else the first word of the SQL,
 * upper-cased (semconv: the first operation of the query text). */
static size_t pg__operation(const char *given, const char *sql, char *out, size_t cap)
{
    size_t n = 0;
    if (given != NULL) {
        n = strlen(given);
        if (n >= cap)
            n = cap - 1;
        memcpy(out, given, n);
    } else {
        while (*sql == ' ' || *sql == '\t' || *sql == '\n' || *sql == '(')
            sql++;
        while (n + 1 < cap && ((sql[n] >= 'a' && sql[n] <= 'z') || (sql[n] >= 'A' && sql[n] <= 'Z'))) {
            out[n] = (char)(sql[n] >= 'a' ? sql[n] - 'a' + 'A' : sql[n]);
            n++;
        }
    }
    out[n] = '\0';
    return n;
}

/* Allocates a request with copies of sql and the parameters, and starts
 * its span.  NULL on out-of-memory. */
static pg__req_t *pg__req_new(pg_pool_t *p, pg__kind_t kind, const char *sql, int nparams,
                              const char *const *values, const int *lengths, const int *formats,
                              const pg_query_opts_t *o, const trace_context_t *parent)
{
    size_t sql_len = strlen(sql), need = sizeof(pg__req_t) + sql_len + 1;
    size_t *vlen = NULL;
    if (nparams > 0) {
        vlen = calloc((size_t)nparams, sizeof *vlen);
        if (vlen == NULL)
            return NULL;
        need += (size_t)nparams * (sizeof(char *) + 2 * sizeof(int));
        for (int i = 0; i < nparams; i++) {
            if (values == NULL || values[i] == NULL)
                continue;
            bool bin = formats != NULL && formats[i] == 1;
            vlen[i] = bin && lengths != NULL ? (size_t)lengths[i] : strlen(values[i]);
            need += vlen[i] + 1;
        }
    }
    pg__req_t *r = calloc(1, need);
    if (r == NULL) {
        free(vlen);
        return NULL;
    }
    uint8_t *cur = (uint8_t *)(r + 1);
    if (nparams > 0) {
        r->values = (const char **)(void *)cur;
        cur += (size_t)nparams * sizeof(char *);
        r->lengths = (int *)(void *)cur;
        cur += (size_t)nparams * sizeof(int);
        r->formats = (int *)(void *)cur;
        cur += (size_t)nparams * sizeof(int);
        for (int i = 0; i < nparams; i++) {
            r->formats[i] = formats != NULL ? formats[i] : 0;
            r->lengths[i] = (int)vlen[i];
            if (values == NULL || values[i] == NULL)
                continue;
            memcpy(cur, values[i], vlen[i]);
            cur[vlen[i]] = '\0';
            r->values[i] = (const char *)cur;
            cur += vlen[i] + 1;
        }
    }
    free(vlen);
    r->sql = (char *)cur;
    memcpy(r->sql, sql, sql_len + 1);
    r->pool = p;
    r->kind = kind;
    r->nparams = nparams;
    r->rfmt = o != NULL ? o->result_format : 0;
    if (o != NULL && o->prepare) {
        /* FNV-1a of the text names the statement; a 64-bit collision between
         * two statements of one program is the admitted risk. */
        uint64_t h = 1469598103934665603ull;
        for (size_t i = 0; i < sql_len; i++) {
            h ^= (unsigned char)sql[i];
            h *= 1099511628211ull;
        }
        r->prepare = true;
        r->sql_hash = h;
    }
    loop_timer_init(&r->timer);
    if (o != NULL && o->untraced)
        return r; /* r->span stays zero: not recording, its end writes nothing */

    /* Span name per semconv v1.37: "{db.operation.name} {target}", else the
     * operation, else db.system.name. */
    char op[32], name[160];
    size_t op_len = pg__operation(o != NULL ? o->operation : NULL, sql, op, sizeof op);
    const char *coll = o != NULL ? o->collection : NULL;
    int nl;
    if (op_len > 0 && coll != NULL)
        nl = snprintf(name, sizeof name, "%s %s", op, coll);
    else if (op_len > 0)
        nl = snprintf(name, sizeof name, "%s", op);
    else
        nl = snprintf(name, sizeof name, "postgresql");
    if (nl < 0 || (size_t)nl >= sizeof name)
        nl = (int)strlen(name);
    trace_span_start(&r->span, &pg__scope, name, (size_t)nl, TRACE_KIND_CLIENT, parent);
    trace_span_set_str(&r->span, "db.system.name", "postgresql");
    if (p->dbname != NULL)
        trace_span_set_str(&r->span, "db.namespace", p->dbname);
    if (op_len > 0)
        trace_span_set_str_n(&r->span, "db.operation.name", 17, op, op_len);
    if (coll != NULL)
        trace_span_set_str(&r->span, "db.collection.name", coll);
    trace_span_set_str_n(&r->span, "db.query.text", 13, sql, sql_len);
    if (p->host != NULL)
        trace_span_set_str(&r->span, "server.address", p->host);
    if (p->port > 0)
        trace_span_set_int(&r->span, "server.port", p->port);
    return r;
}

static void pg__arm_timeout(pg__req_t *r, uint32_t timeout_ms)
{
    if (timeout_ms == 0)
        return;
    if (loop_timer_start(r->pool->loop, &r->timer, (uint64_t)timeout_ms * PG__NS_PER_MS, 0,
                         pg__timeout_cb, r) != 0)
        pg__fatal("loop_timer_start(query timeout): out of memory");
}

/* error.type per semconv: the SQLSTATE when the server sent one, else a
 * short description of the client-side failure. */
static void pg__span_finish(pg__req_t *r, int status, const PGresult *res, const char *msg)
{
    if (status != 0) {
        const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        if (state != NULL) {
            trace_span_set_str(&r->span, "db.response.status_code", state);
            trace_span_set_str(&r->span, "error.type", state);
        } else {
            trace_span_set_str(&r->span, "error.type",
                               status == PG_ERR_TIMEOUT      ? "timeout"
                               : status == PG_ERR_CONNECTION ? "connection_lost"
                               : status == PG_ERR_SHUTDOWN   ? "shutdown"
                               : status == PG_ERR_TXN        ? "transaction_aborted"
                                                             : "_OTHER");
        }
        const char *m = msg != NULL ? msg : pg_strerror(status);
        trace_span_set_status(&r->span, TRACE_STATUS_ERROR, m, strlen(m));
    }
    trace_span_end(&r->span);
}

/* Ends the span, runs the callback, frees the request (and, for BEGIN
 * failures and ENDs, the transaction).  r must be off every list. */
static void pg__deliver(pg__req_t *r, int status, const PGresult *res, const char *msg)
{
    pg_pool_t *p = r->pool;
    loop_timer_stop(p->loop, &r->timer);
    p->ctr.queries++;
    if (status != 0)
        p->ctr.errors++;
    if (status == PG_ERR_TIMEOUT)
        p->ctr.timeouts++;
    if (msg == NULL && status != 0)
        msg = pg_strerror(status);
    pg__span_finish(r, status, res, msg);
    pg_txn_t *txn = r->txn;
    switch (r->kind) {
    case PG__Q_QUERY:
        if (r->cb != NULL)
            r->cb(p, status, res, msg, r->arg);
        break;
    case PG__Q_BEGIN:
        if (status == 0 && !txn->dead) {
            r->tcb(p, 0, txn, NULL, r->arg);
        } else {
            if (txn->conn != NULL)
                txn->conn->txn = NULL;
            r->tcb(p, status != 0 ? status : PG_ERR_TXN, NULL, msg, r->arg);
            free(txn);
        }
        break;
    case PG__Q_END:
        if (txn->conn != NULL)
            txn->conn->txn = NULL;
        if (r->cb != NULL)
            r->cb(p, status, res, msg, r->arg);
        free(txn);
        break;
    }
    free(r);
}

/* Reports a query in flight before its answer came (timeout, failed
 * PREPARE): counters, span and callback as pg__deliver, but r stays in its
 * connection's pipeline, abandoned, and is freed when its answer arrives. */
static void pg__report_early(pg__req_t *r, int status, const PGresult *res, const char *msg)
{
    pg_pool_t *p = r->pool;
    pg_result_cb cb = r->cb;
    void *cbarg = r->arg;
    loop_timer_stop(p->loop, &r->timer);
    r->abandoned = true;
    r->cb = NULL;
    p->ctr.queries++;
    if (status != 0)
        p->ctr.errors++;
    if (status == PG_ERR_TIMEOUT)
        p->ctr.timeouts++;
    pg__span_finish(r, status, res, msg);
    if (cb != NULL)
        cb(p, status, res, msg, cbarg);
}

/* Completion from an API path: delivered by the kick timer. */
static void pg__defer(pg__req_t *r, int status, const char *msg)
{
    r->done_status = status;
    r->done_msg = msg;
    pg__fifo_push(&r->pool->done, r);
    pg__kick(r->pool);
}

/* ---------------------------------------------------------- connections */

static void pg__conn_watch_cb(loop_watch_t *w, unsigned ev, void *arg);
static void pg__conn_timer_cb(loop_t *loop, loop_timer_t *t, void *arg);
static void pg__pump(pg_pool_t *p);

static void pg__conn_close_handles(pg__conn_t *c)
{
    if (c->w != NULL) {
        loop_watch_close(c->w);
        c->w = NULL;
    }
    if (c->keep != NULL) {
        PQclear(c->keep);
        c->keep = NULL;
    }
    if (c->pc != NULL) {
        PQfinish(c->pc);
        c->pc = NULL;
    }
    c->n_prepared = 0; /* prepared statements live as long as the session */
    c->seg_end = false;
    c->unflushed = false;
    loop_timer_stop(c->pool->loop, &c->timer);
}

static void pg__conn_schedule(pg__conn_t *c)
{
    pg_pool_t *p = c->pool;
    c->state = PG__C_DOWN;
    if (p->destroying)
        return;
    if (loop_timer_start(p->loop, &c->timer, (uint64_t)c->backoff_ms * PG__NS_PER_MS, 0,
                         pg__conn_timer_cb, c) != 0)
        pg__fatal("loop_timer_start(backoff): out of memory");
    c->backoff_ms = c->backoff_ms * 2 > p->opt.backoff_max_ms ? p->opt.backoff_max_ms
                                                              : c->backoff_ms * 2;
}

/* The socket may change during PQconnectPoll (next host, SSL retry). */
static int pg__conn_watch_fd(pg__conn_t *c, unsigned events)
{
    int fd = PQsocket(c->pc);
    if (fd < 0)
        return -EBADF;
    if (c->w != NULL && c->fd != fd) {
        loop_watch_close(c->w);
        c->w = NULL;
    }
    if (c->w == NULL) {
        int ret = loop_watch_start(c->pool->loop, fd, pg__conn_watch_cb, c, &c->w);
        if (ret != 0)
            return ret;
        c->fd = fd;
    }
    loop_watch_set(c->w, events);
    return 0;
}

static void pg__conn_start(pg__conn_t *c)
{
    pg_pool_t *p = c->pool;
    c->pc = PQconnectStartParams(p->kw, p->val, 0);
    if (c->pc == NULL)
        pg__fatal("PQconnectStartParams: out of memory");
    if (PQstatus(c->pc) == CONNECTION_BAD || pg__conn_watch_fd(c, LOOP_WATCH_WRITE) != 0) {
        pg__conn_close_handles(c);
        pg__conn_schedule(c);
        return;
    }
    c->state = PG__C_CONNECTING;
    if (loop_timer_start(p->loop, &c->timer, (uint64_t)p->opt.connect_timeout_ms * PG__NS_PER_MS,
                         0, pg__conn_timer_cb, c) != 0)
        pg__fatal("loop_timer_start(connect timeout): out of memory");
}

/* Fails everything bound to the connection (every statement in its
 * pipeline with PG_ERR_CONNECTION, its transaction's queue with
 * PG_ERR_TXN) and schedules a reconnect.  Requests still in the pool's
 * queue are not touched: another connection takes them. */
static void pg__conn_lost(pg__conn_t *c, const char *why)
{
    pg_pool_t *p = c->pool;
    char msg[256];
    const char *em = c->pc != NULL ? PQerrorMessage(c->pc) : "";
    snprintf(msg, sizeof msg, "postgresql connection %u lost (%s): %s", c->idx, why,
             em != NULL && *em != '\0' ? em : "no detail");
    size_t ml = strlen(msg);
    while (ml > 0 && (msg[ml - 1] == '\n' || msg[ml - 1] == ' '))
        msg[--ml] = '\0';
    bool was_ready = c->state == PG__C_READY;
    pg__req_t *pipe = c->pipe.head;
    pg_txn_t *txn = c->txn;
    pg__fifo_init(&c->pipe);
    c->n_pipe = 0;
    c->txn = NULL;
    pg__conn_close_handles(c);
    if (was_ready) {
        p->ctr.conn_lost++;
        c->backoff_ms = p->opt.backoff_min_ms;
    }
    pg__conn_schedule(c);
    /* A BEGIN failing here frees its transaction: look before delivering. */
    bool begin_lost = false;
    for (pg__req_t *r = pipe; r != NULL; r = r->next)
        begin_lost |= r->kind == PG__Q_BEGIN;
    if (txn != NULL) {
        txn->dead = true;
        txn->conn = NULL;
    }
    while (pipe != NULL) {
        pg__req_t *r = pipe;
        pipe = r->next;
        r->next = NULL;
        r->conn = NULL;
        if (r->abandoned)
            free(r);
        else
            pg__deliver(r, PG_ERR_CONNECTION, NULL, msg);
    }
    if (txn != NULL && !begin_lost) {
        /* queued statements of the dead transaction fail; its END (if
         * queued) fails last and frees it. */
        pg__req_t *r;
        while ((r = pg__fifo_pop(&txn->q)) != NULL)
            pg__deliver(r, PG_ERR_TXN, NULL, "transaction aborted: its connection was lost");
    }
}

static bool pg__is_conn_state(const char *st)
{
    /* 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now,
     * 08xxx connection exceptions. */
    return st != NULL && ((st[0] == '5' && st[1] == '7' && st[2] == 'P') || (st[0] == '0' && st[1] == '8'));
}

static bool pg__is_prepared(const pg__conn_t *c, uint64_t h)
{
    for (unsigned i = 0; i < c->n_prepared; i++)
        if (c->prepared[i] == h)
            return true;
    return false;
}

static void pg__forget_prepared(pg__conn_t *c, uint64_t h)
{
    for (unsigned i = 0; i < c->n_prepared; i++) {
        if (c->prepared[i] == h) {
            c->prepared[i] = c->prepared[--c->n_prepared];
            return;
        }
    }
}

/* out: at least 22 bytes ("shop_" + 16 hex digits + NUL). */
static void pg__stmt_name(uint64_t h, char *out)
{
    snprintf(out, 22, "shop_%016llx", (unsigned long long)h);
}

/* The status of a statement from its kept result; *msg is NULL or points
 * into res. */
static int pg__status_of(const PGresult *res, const char **msg)
{
    *msg = NULL;
    if (res == NULL) {
        *msg = "no result from the server";
        return PG_ERR_CONNECTION;
    }
    switch (PQresultStatus(res)) {
    case PGRES_COMMAND_OK:
    case PGRES_TUPLES_OK:
    case PGRES_EMPTY_QUERY:
        return 0;
    case PGRES_PIPELINE_ABORTED:
        /* Only after an earlier failure in the same segment, which one sync
         * per statement rules out; reported, never taken for success. */
        *msg = "statement skipped: its pipeline segment was aborted by an earlier error";
        return PG_ERR_SERVER;
    default: {
        const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        *msg = PQresultErrorMessage(res);
        return st != NULL && strcmp(st, "57014") == 0 ? PG_ERR_TIMEOUT
               : pg__is_conn_state(st)                ? PG_ERR_CONNECTION
                                                      : PG_ERR_SERVER;
    }
    }
}

/* pipe.head's segment is complete (its PGRES_PIPELINE_SYNC arrived): a
 * PREPARE's segment hands over to the execution's; an execution's
 * delivers the request and takes it off the pipe. */
static void pg__segment_done(pg__conn_t *c)
{
    pg__req_t *r = c->pipe.head;
    PGresult *res = c->keep;
    const char *msg;
    int status;
    c->keep = NULL;
    if (r->preparing) {
        r->preparing = false;
        if (res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK) {
            PQclear(res);
            return;
        }
        /* The name does not exist in the session: the next request asking
         * for it prepares again.  The execution behind fails (26000) and is
         * dropped; this request reports why the PREPARE failed. */
        pg__forget_prepared(c, r->sql_hash);
        if (!r->abandoned) {
            status = pg__status_of(res, &msg);
            pg__report_early(r, status != 0 ? status : PG_ERR_SERVER, res,
                             msg != NULL ? msg : "PREPARE failed");
        }
        PQclear(res);
        return;
    }
    pg__fifo_pop(&c->pipe);
    c->n_pipe--;
    r->conn = NULL;
    if (r->abandoned) {
        PQclear(res);
        free(r);
        return;
    }
    status = pg__status_of(res, &msg);
    if (r->kind == PG__Q_BEGIN && status == 0)
        r->txn->conn = c;
    pg__deliver(r, status, res, msg);
    PQclear(res);
}

/* Reads the results that arrived, in pipeline order, without blocking
 * (PQgetResult only when PQisBusy says it will not wait).  false when the
 * connection was lost (c is then DOWN). */
static bool pg__collect(pg__conn_t *c)
{
    while (c->pipe.head != NULL && PQstatus(c->pc) != CONNECTION_BAD && !PQisBusy(c->pc)) {
        PGresult *res = PQgetResult(c->pc);
        if (res == NULL) {
            /* End of the current statement's results; its sync follows.  A
             * second NULL means libpq has nothing queued while requests are
             * in flight: out of step, so the connection goes (else this
             * loop would spin). */
            if (c->seg_end) {
                pg__conn_lost(c, "pipeline out of step: no result for a statement in flight");
                return false;
            }
            c->seg_end = true;
            continue;
        }
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            c->seg_end = false;
            pg__segment_done(c);
            continue;
        }
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
            PQclear(res);
            pg__conn_lost(c, "COPY is not supported");
            return false;
        }
        bool is_err = st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE;
        if (c->keep == NULL || is_err || PQresultStatus(c->keep) != PGRES_FATAL_ERROR) {
            PQclear(c->keep);
            c->keep = res;
        } else {
            PQclear(res);
        }
    }
    if (c->state == PG__C_READY && PQstatus(c->pc) == CONNECTION_BAD) {
        pg__conn_lost(c, "server closed the connection");
        return false;
    }
    return true;
}

static void pg__flush(pg__conn_t *c)
{
    int r = PQflush(c->pc);
    if (r < 0) {
        pg__conn_lost(c, "send failed");
        return;
    }
    loop_watch_set(c->w, LOOP_WATCH_READ | (r == 1 ? LOOP_WATCH_WRITE : 0u));
}

/* Closes the statement just queued in libpq with its own sync (one
 * implicit transaction segment per statement).  libpq 17 queues the sync
 * only; libpq 15's PQpipelineSync also flushes. */
static int pg__sync(PGconn *pc)
{
#ifdef LIBPQ_HAS_SEND_PIPELINE_SYNC
    return PQsendPipelineSync(pc);
#else
    return PQpipelineSync(pc);
#endif
}

/* Before the first statement goes to an idle connection: a FATAL + EOF
 * may sit in its socket (server restart while it was idle); read it so the
 * statement is not sent into it.  false when c was lost. */
static bool pg__check_idle(pg__conn_t *c)
{
    if (c->n_pipe > 0 || c->unflushed)
        return true;
    if (!PQconsumeInput(c->pc) || PQstatus(c->pc) == CONNECTION_BAD) {
        pg__conn_lost(c, "found closed before sending");
        return false;
    }
    return true;
}

/* Puts r (popped from `from`) into c's pipeline behind what is in flight,
 * without flushing: the caller flushes once per pass.  A statement to
 * prepare that the session does not have yet goes as PREPARE + sync, then
 * its execution by name + sync; past PG__PREP_MAX statements a connection
 * sends the others unprepared.  false when r was not added: either c was
 * lost (r is back at the front of `from`, for another connection) or libpq
 * refused the statement on a good connection (r delivered with the error). */
static bool pg__send(pg__conn_t *c, pg__req_t *r, pg__fifo_t *from)
{
    char name[24];
    bool prep = false, partly = false;
    int ok;
    if (r->prepare && (pg__is_prepared(c, r->sql_hash) || c->n_prepared < PG__PREP_MAX)) {
        pg__stmt_name(r->sql_hash, name);
        if (!pg__is_prepared(c, r->sql_hash)) {
            ok = PQsendPrepare(c->pc, name, r->sql, r->nparams, NULL);
            if (ok) {
                partly = true;
                ok = pg__sync(c->pc);
            }
            if (!ok)
                goto fail;
            prep = true;
        }
        ok = PQsendQueryPrepared(c->pc, name, r->nparams, r->values, r->lengths, r->formats,
                                 r->rfmt);
    } else {
        ok = PQsendQueryParams(c->pc, r->sql, r->nparams, NULL, r->values, r->lengths,
                               r->formats, r->rfmt);
    }
    if (ok) {
        partly = true;
        ok = pg__sync(c->pc);
    }
    if (!ok)
        goto fail;
    if (prep) {
        /* from now on requests behind it execute by name */
        c->prepared[c->n_prepared++] = r->sql_hash;
        c->pool->ctr.prepares++;
    }
    r->preparing = prep;
    r->conn = c;
    pg__fifo_push(&c->pipe, r);
    c->n_pipe++;
    c->unflushed = true;
    if (r->kind == PG__Q_BEGIN) {
        c->txn = r->txn;
        r->txn->conn = c;
    }
    return true;

fail:
    /* Half a statement in libpq's queue (no sync) leaves the pipeline out
     * of step with the FIFO: the connection goes, r is retried elsewhere. */
    if (partly || PQstatus(c->pc) == CONNECTION_BAD) {
        pg__fifo_push_front(from, r);
        pg__conn_lost(c, "sending a statement");
        return false;
    }
    pg__deliver(r, PG_ERR_SERVER, NULL, PQerrorMessage(c->pc));
    return false;
}

/* The READY connection without a transaction and with the fewest
 * statements in flight below the depth, or NULL when all are full. */
static pg__conn_t *pg__least_loaded(pg_pool_t *p)
{
    pg__conn_t *best = NULL;
    for (unsigned i = 0; i < p->opt.pool_size; i++) {
        pg__conn_t *c = &p->conns[i];
        if (c->state != PG__C_READY || c->txn != NULL || c->n_pipe >= p->opt.pipeline_depth)
            continue;
        if (best == NULL || c->n_pipe < best->n_pipe) {
            best = c;
            if (c->n_pipe == 0)
                break;
        }
    }
    return best;
}

/* Sends queued requests: a transaction's next statement to its idle
 * connection, pooled ones to the least-loaded connections up to the depth;
 * then one flush per connection that got statements. */
static void pg__pump(pg_pool_t *p)
{
    for (unsigned i = 0; i < p->opt.pool_size; i++) {
        pg__conn_t *c = &p->conns[i];
        if (c->state != PG__C_READY || c->txn == NULL || c->n_pipe > 0 || c->txn->q.head == NULL)
            continue;
        if (!pg__check_idle(c))
            continue;
        pg_txn_t *txn = c->txn;
        pg__send(c, pg__fifo_pop(&txn->q), &txn->q);
    }
    pg__conn_t *c;
    while (p->q.head != NULL && (c = pg__least_loaded(p)) != NULL) {
        if (!pg__check_idle(c))
            continue;
        pg__send(c, pg__fifo_pop(&p->q), &p->q);
    }
    for (unsigned i = 0; i < p->opt.pool_size; i++) {
        c = &p->conns[i];
        if (c->unflushed) {
            c->unflushed = false;
            if (c->state == PG__C_READY)
                pg__flush(c);
        }
    }
}

static void pg__conn_watch_cb(loop_watch_t *w, unsigned ev, void *arg)
{
    (void)w;
    pg__conn_t *c = arg;
    switch (c->state) {
    case PG__C_CONNECTING: {
        PostgresPollingStatusType st = PQconnectPoll(c->pc);
        switch (st) {
        case PGRES_POLLING_READING:
        case PGRES_POLLING_WRITING:
            if (pg__conn_watch_fd(c, st == PGRES_POLLING_READING ? LOOP_WATCH_READ
                                                                 : LOOP_WATCH_WRITE) != 0) {
                pg__conn_close_handles(c);
                pg__conn_schedule(c);
            }
            return;
        case PGRES_POLLING_OK:
            loop_timer_stop(c->pool->loop, &c->timer);
            if (PQsetnonblocking(c->pc, 1) != 0 || PQenterPipelineMode(c->pc) != 1 ||
                pg__conn_watch_fd(c, LOOP_WATCH_READ) != 0) {
                pg__conn_close_handles(c);
                pg__conn_schedule(c);
                return;
            }
            c->state = PG__C_READY;
            c->backoff_ms = c->pool->opt.backoff_min_ms;
            c->pool->ctr.connects++;
            pg__pump(c->pool);
            return;
        case PGRES_POLLING_FAILED:
        default:
            pg__conn_close_handles(c);
            pg__conn_schedule(c);
            return;
        }
    }
    case PG__C_READY:
        if (ev & LOOP_WATCH_WRITE) {
            pg__flush(c);
            if (c->state != PG__C_READY)
                return;
        }
        if (ev & LOOP_WATCH_READ) {
            if (!PQconsumeInput(c->pc)) {
                /* EOF: answers read before it were collected on earlier
                 * reports; the statements still in flight fail (their
                 * outcome is unknown), the server's FATAL message is in
                 * the error text. */
                pg__conn_lost(c, "read failed");
                return;
            }
            PGnotify *n;
            while ((n = PQnotifies(c->pc)) != NULL)
                PQfreemem(n);
            if (!pg__collect(c))
                return;
        }
        pg__pump(c->pool);
        return;
    case PG__C_DOWN:
        return; /* a stale report from the old socket */
    }
    pg__fatal("pg: connection in an unknown state");
}

static void pg__conn_timer_cb(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    pg__conn_t *c = arg;
    switch (c->state) {
    case PG__C_DOWN:
        pg__conn_start(c);
        return;
    case PG__C_CONNECTING: /* connect timeout */
        pg__conn_close_handles(c);
        pg__conn_schedule(c);
        return;
    case PG__C_READY:
        return;
    }
    pg__fatal("pg: connection in an unknown state");
}

/* ------------------------------------------------------------- timeouts */

static void *pg__cancel_thread(void *arg)
{
    PGcancel *cn = arg;
    char err[256];
    if (!PQcancel(cn, err, sizeof err))
        fprintf(stderr, "pg: PQcancel: %s\n", err);
    PQfreeCancel(cn);
    return NULL;
}

static void pg__timeout_cb(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    pg__req_t *r = arg;
    pg_pool_t *p = r->pool;
    pg__conn_t *c = r->conn;
    if (c == NULL) {
        pg__fifo_t *from = r->txn != NULL && r->kind == PG__Q_QUERY ? &r->txn->q : &p->q;
        if (!pg__fifo_remove(from, r))
            return; /* on the done list: about to be delivered */
        pg__deliver(r, PG_ERR_TIMEOUT, NULL, "query timed out while waiting for a connection");
        return;
    }
    /* In flight: report now, keep r in the pipeline until its answer
     * arrives.  A cancel stops whatever statement the server runs, so it
     * is sent only when that is r's: first in flight, its results not all
     * in yet.  Behind another statement, r runs to its end and the answer
     * is dropped.  PQcancel blocks (its own connection to the server), so
     * it runs on a detached thread. */
    bool running = c->pipe.head == r && !c->seg_end;
    if (running) {
        PGcancel *cn = PQgetCancel(c->pc);
        if (cn != NULL) {
            pthread_t th;
            pthread_attr_t a;
            pthread_attr_init(&a);
            pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
            if (pthread_create(&th, &a, pg__cancel_thread, cn) != 0)
                PQfreeCancel(cn);
            else
                p->ctr.cancels++;
            pthread_attr_destroy(&a);
        }
    }
    pg__report_early(r, PG_ERR_TIMEOUT, NULL,
                     running ? "query timed out; cancel sent"
                             : "query timed out behind another statement on its connection");
}

static void pg__kick_cb(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    pg_pool_t *p = arg;
    pg__req_t *r;
    while ((r = pg__fifo_pop(&p->done)) != NULL)
        pg__deliver(r, r->done_status, NULL, r->done_msg);
    pg__pump(p);
}

/* ------------------------------------------------------------------ API */

int pg_pool_create(loop_t *loop, const pg_options_t *opt, pg_pool_t **out)
{
    int ret = -ENOMEM;
    pg_pool_t *p = calloc(1, sizeof *p);
    if (p == NULL)
        return -ENOMEM;
    p->loop = loop;
    p->opt = *opt;
    if (p->opt.pool_size == 0)
        p->opt.pool_size = 4;
    if (p->opt.pipeline_depth == 0)
        p->opt.pipeline_depth = 1;
    if (p->opt.connect_timeout_ms == 0)
        p->opt.connect_timeout_ms = 5000;
    if (p->opt.backoff_min_ms == 0)
        p->opt.backoff_min_ms = 50;
    if (p->opt.backoff_max_ms == 0)
        p->opt.backoff_max_ms = 2000;
    if (p->opt.query_timeout_ms == 0 && p->opt.statement_timeout_ms != 0)
        p->opt.query_timeout_ms = p->opt.statement_timeout_ms + 1000;
    pg__fifo_init(&p->q);
    pg__fifo_init(&p->done);
    loop_timer_init(&p->kick);

    char *perr = NULL;
    p->parsed = PQconninfoParse(opt->conninfo != NULL ? opt->conninfo : "", &perr);
    if (p->parsed == NULL) {
        fprintf(stderr, "pg: PQconninfoParse: %s", perr != NULL ? perr : "out of memory\n");
        ret = perr != NULL ? -EINVAL : -ENOMEM;
        PQfreemem(perr);
        goto err_pool;
    }
    size_t n = 0;
    for (PQconninfoOption *o = p->parsed; o->keyword != NULL; o++)
        n++;
    p->kw = calloc(n + 3, sizeof *p->kw);
    p->val = calloc(n + 3, sizeof *p->val);
    p->options_buf = malloc(512);
    if (p->kw == NULL || p->val == NULL || p->options_buf == NULL)
        goto err_parsed;
    size_t k = 0;
    const char *user_options = NULL;
    for (PQconninfoOption *o = p->parsed; o->keyword != NULL; o++) {
        if (o->val == NULL)
            continue;
        if (strcmp(o->keyword, "options") == 0) {
            user_options = o->val;
            continue;
        }
        if (strcmp(o->keyword, "host") == 0 || strcmp(o->keyword, "hostaddr") == 0)
            if (p->host == NULL || strcmp(o->keyword, "host") == 0)
                p->host = o->val;
        if (strcmp(o->keyword, "dbname") == 0)
            p->dbname = o->val;
        if (strcmp(o->keyword, "port") == 0)
            p->port = atoi(o->val);
        p->kw[k] = o->keyword;
        p->val[k++] = o->val;
    }
    /* statement_timeout on the session, in the startup packet: no extra
     * round trip and it survives reconnects. */
    snprintf(p->options_buf, 512, "%s%s-c statement_timeout=%u", user_options ? user_options : "",
             user_options ? " " : "", p->opt.statement_timeout_ms);
    p->kw[k] = "options";
    p->val[k++] = p->options_buf;
    p->kw[k] = "fallback_application_name";
    p->val[k++] = "shop-trace";
    if (p->port == 0)
        p->port = 5432;

    p->conns = calloc(p->opt.pool_size, sizeof *p->conns);
    if (p->conns == NULL)
        goto err_parsed;
    for (unsigned i = 0; i < p->opt.pool_size; i++) {
        pg__conn_t *c = &p->conns[i];
        c->pool = p;
        c->idx = i;
        c->fd = -1;
        pg__fifo_init(&c->pipe);
        c->backoff_ms = p->opt.backoff_min_ms;
        c->state = PG__C_DOWN;
        loop_timer_init(&c->timer);
        /* start through the timer: connection failures are reported on
         * the loop, never inside pg_pool_create */
        if (loop_timer_start(loop, &c->timer, 0, 0, pg__conn_timer_cb, c) != 0)
            goto err_conns;
    }
    *out = p;
    return 0;

err_conns:
    for (unsigned i = 0; i < p->opt.pool_size; i++)
        loop_timer_stop(loop, &p->conns[i].timer);
    free(p->conns);
err_parsed:
    free(p->options_buf);
    free(p->kw);
    free(p->val);
    PQconninfoFree(p->parsed);
err_pool:
    free(p);
    return ret;
}

void pg_pool_destroy(pg_pool_t *p)
{
    if (p == NULL)
        return;
    p->destroying = true;
    loop_timer_stop(p->loop, &p->kick);
    pg__req_t *r;
    while ((r = pg__fifo_pop(&p->done)) != NULL)
        pg__deliver(r, r->done_status, NULL, r->done_msg);
    for (unsigned i = 0; i < p->opt.pool_size; i++) {
        pg__conn_t *c = &p->conns[i];
        pg__req_t *pipe = c->pipe.head;
        pg_txn_t *txn = c->txn;
        pg__fifo_init(&c->pipe);
        c->n_pipe = 0;
        c->txn = NULL;
        pg__conn_close_handles(c);
        c->state = PG__C_DOWN;
        bool begin_in_pipe = false;
        for (r = pipe; r != NULL; r = r->next)
            begin_in_pipe |= r->kind == PG__Q_BEGIN;
        if (txn != NULL) {
            txn->conn = NULL;
            txn->dead = true;
        }
        while (pipe != NULL) {
            r = pipe;
            pipe = r->next;
            r->next = NULL;
            r->conn = NULL;
            if (r->abandoned)
                free(r);
            else
                pg__deliver(r, PG_ERR_SHUTDOWN, NULL, NULL);
        }
        if (txn != NULL && !begin_in_pipe)
            while ((r = pg__fifo_pop(&txn->q)) != NULL)
                pg__deliver(r, PG_ERR_SHUTDOWN, NULL, NULL);
    }
    while ((r = pg__fifo_pop(&p->q)) != NULL)
        pg__deliver(r, PG_ERR_SHUTDOWN, NULL, NULL);
    free(p->conns);
    free(p->options_buf);
    free(p->kw);
    free(p->val);
    PQconninfoFree(p->parsed);
    free(p);
}

static int pg__query_common(pg_pool_t *p, pg_txn_t *txn, const char *sql, int nparams,
                            const char *const *values, const int *lengths, const int *formats,
                            const pg_query_opts_t *o, pg_result_cb cb, void *arg)
{
    if (sql == NULL || nparams < 0)
        return -EINVAL;
    const trace_context_t *parent = o != NULL ? o->parent : NULL;
    if (parent == NULL && txn != NULL && txn->has_parent)
        parent = &txn->parent;
    pg__req_t *r = pg__req_new(p, PG__Q_QUERY, sql, nparams, values, lengths, formats, o, parent);
    if (r == NULL)
        return -ENOMEM;
    r->cb = cb;
    r->arg = arg;
    r->txn = txn;
    pg__arm_timeout(r, o != NULL && o->timeout_ms != 0 ? o->timeout_ms : p->opt.query_timeout_ms);
    if (txn != NULL && (txn->dead || txn->ending)) {
        pg__defer(r, PG_ERR_TXN, txn->dead ? "transaction aborted: its connection was lost"
                                           : "transaction already ending");
        return 0;
    }
    pg__fifo_push(txn != NULL ? &txn->q : &p->q, r);
    pg__kick(p);
    return 0;
}

int pg_query(pg_pool_t *p, const char *sql, int nparams, const char *const *values,
             const int *lengths, const int *formats, const pg_query_opts_t *o, pg_result_cb cb,
             void *arg)
{
    return pg__query_common(p, NULL, sql, nparams, values, lengths, formats, o, cb, arg);
}

int pg_txn_begin(pg_pool_t *p, const trace_context_t *parent, pg_txn_cb cb, void *arg)
{
    if (cb == NULL)
        return -EINVAL;
    pg_txn_t *txn = calloc(1, sizeof *txn);
    if (txn == NULL)
        return -ENOMEM;
    txn->pool = p;
    pg__fifo_init(&txn->q);
    if (parent != NULL) {
        txn->parent = *parent;
        txn->parent.tracestate = NULL; /* not owned: not kept */
        txn->parent.tracestate_len = 0;
        txn->has_parent = true;
    }
    pg_query_opts_t o = {.operation = "BEGIN", .parent = parent};
    pg__req_t *r = pg__req_new(p, PG__Q_BEGIN, "BEGIN", 0, NULL, NULL, NULL, &o, parent);
    if (r == NULL) {
        free(txn);
        return -ENOMEM;
    }
    r->txn = txn;
    r->tcb = cb;
    r->arg = arg;
    pg__fifo_push(&p->q, r);
    pg__kick(p);
    return 0;
}

int pg_txn_query(pg_txn_t *txn, const char *sql, int nparams, const char *const *values,
                 const int *lengths, const int *formats, const pg_query_opts_t *o,
                 pg_result_cb cb, void *arg)
{
    return pg__query_common(txn->pool, txn, sql, nparams, values, lengths, formats, o, cb, arg);
}

int pg_txn_end(pg_txn_t *txn, bool commit, pg_result_cb cb, void *arg)
{
    if (txn->ending)
        return -EALREADY;
    pg_pool_t *p = txn->pool;
    const char *sql = commit ? "COMMIT" : "ROLLBACK";
    pg_query_opts_t o = {.operation = sql, .parent = txn->has_parent ? &txn->parent : NULL};
    pg__req_t *r = pg__req_new(p, PG__Q_END, sql, 0, NULL, NULL, NULL, &o, o.parent);
    if (r == NULL)
        return -ENOMEM;
    r->txn = txn;
    r->cb = cb;
    r->arg = arg;
    txn->ending = true;
    if (txn->dead) {
        pg__defer(r, PG_ERR_TXN, "transaction aborted: its connection was lost");
        return 0;
    }
    pg__fifo_push(&txn->q, r);
    pg__kick(p);
    return 0;
}

unsigned pg_pool_ready(const pg_pool_t *p)
{
    unsigned n = 0;
    for (unsigned i = 0; i < p->opt.pool_size; i++)
        n += p->conns[i].state == PG__C_READY;
    return n;
}

void pg_pool_counters(const pg_pool_t *p, pg_counters_t *out)
{
    *out = p->ctr;
}
