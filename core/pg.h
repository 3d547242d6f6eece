/*
 * core/pg.h - PostgreSQL client for the io_uring loop: a pool of N libpq
 * connections in non-blocking pipeline mode (up to pipeline_depth
 * statements in flight on each), queued parameterised queries, per-query
 * timeouts, transactions, reconnect with backoff, and one CLIENT span per
 * query (OpenTelemetry semantic conventions v1.37.0, DB spans).
 *
 * Usage:
 *   static void on_rows(pg_pool_t *p, int st, const PGresult *r, const char *msg, void *arg) {
 *       if (st != 0) { fprintf(stderr, "query: %s\n", msg); return; }
 *       printf("%s\n", PQgetvalue(r, 0, 0));
 *   }
 *   pg_options_t o = {.conninfo = "host=127.0.0.1 port=5432 dbname=shop", .pool_size = 4,
 *                     .pipeline_depth = 8};
 *   pg_pool_t *pool;
 *   pg_pool_create(loop, &o, &pool);
 *   const char *v[] = {"42"};
 *   pg_query_opts_t q = {.operation = "SELECT", .collection = "products"};
 *   pg_query(pool, "SELECT stock FROM products WHERE id = $1", 1, v, NULL, NULL, &q, on_rows, NULL);
 *
 * ------------------------------------------------------------------------
 * CALLBACK CONTRACT
 *  - Everything runs on the loop's thread; no function here blocks (libpq
 *    is driven by fd readiness: PQconnectStartParams/PQconnectPoll,
 *    PQsendQueryParams/PQflush, PQconsumeInput/PQisBusy/PQgetResult).  One
 *    exception, off the loop thread: cancelling a timed-out statement uses
 *    PQcancel (blocking by design in libpq 15) from a short-lived thread.
 *  - A result callback never runs inside the call that queued it; it runs
 *    exactly once per accepted query (pg_query returned 0), also on error,
 *    timeout and pg_pool_destroy (PG_ERR_SHUTDOWN).
 *  - The PGresult and msg are valid during the callback only (the pool
 *    PQclears the result after it returns).  r is non-NULL when the server
 *    answered (also for a server error, with the SQLSTATE in it).
 *  - Query text and parameters are copied: the caller's buffers may go
 *    away when pg_query returns.
 *  - Pipelining: each connection carries up to pipeline_depth statements
 *    at once, answered in order; a statement waits in the pool's queue only
 *    while every connection is full.  Every statement is its own implicit
 *    transaction (a sync follows each): one failing (unique violation,
 *    division by zero) fails alone, the others in flight still succeed.  A
 *    slow statement delays the ones behind it on its connection.
 *  - Timeouts report PG_ERR_TIMEOUT at the deadline; the statement's answer
 *    is dropped when it comes.  The statement is cancelled (PQcancel) only
 *    when it is the one the server is running; behind another it runs to
 *    its end.  A cancel racing with the statement's own end may hit the
 *    next statement in the pipeline, which then reports PG_ERR_TIMEOUT.
 *  - Connection loss fails every statement in flight on it with
 *    PG_ERR_CONNECTION; queued ones wait for another connection.
 *  - Transactions: the connection of an open transaction takes no other
 *    statements; the transaction's own go one at a time.
 *  - Spans: a CLIENT span starts in pg_query (queue time included) and ends
 *    right before the callback runs.  db.query.text is the parameterised
 *    text as given ($1, $2 ...): values are never put in the span.  None
 *    with pg_query_opts_t.untraced.
 * ------------------------------------------------------------------------
 */
#ifndef SHOP_CORE_PG_H
#define SHOP_CORE_PG_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#include "core.h"
#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------ return codes */

/* Statuses of a result callback, and errors of the API (besides -errno). */
#define PG_ERR_MAP(X)                                                                      \
    X(PG_ERR_SERVER, -1000, "server error")           /* r holds the error (SQLSTATE) */   \
    X(PG_ERR_TIMEOUT, -1001, "query timed out")       /* local timer or 57014 */           \
    X(PG_ERR_CONNECTION, -1002, "connection lost")    /* in flight when the server went */ \
    X(PG_ERR_SHUTDOWN, -1003, "pool destroyed")       /* pg_pool_destroy with it queued */ \
    X(PG_ERR_TXN, -1004, "transaction unusable")      /* its connection was lost */

typedef enum {
#define PG__ERR_ENUM(name, val, str) name = (val),
    PG_ERR_MAP(PG__ERR_ENUM)
#undef PG__ERR_ENUM
} pg_error_t;

/* A static string for a status (0, PG_ERR_*, or -errno). */
const char *pg_strerror(int status);

/* --------------------------------------------------------------- callbacks */

typedef struct st_pg_pool_t pg_pool_t;
typedef struct st_pg_txn_t pg_txn_t;

/* status 0: r is the (last) result of the statement; else PG_ERR_* with a
 * message naming what failed. */
typedef void (*pg_result_cb)(pg_pool_t *pool, int status, const PGresult *r, const char *msg,
                             void *arg);
/* BEGIN done (status 0, txn usable) or failed (txn NULL). */
typedef void (*pg_txn_cb)(pg_pool_t *pool, int status, pg_txn_t *txn, const char *msg, void *arg);

/* ----------------------------------------------------------------- structs */

typedef struct {
    const char *conninfo;           /* libpq connection string (key=value or URI); NULL = "" */
    unsigned pool_size;             /* connections; 0 = 4 */
    unsigned pipeline_depth;        /* statements in flight per connection (libpq pipeline
                                     * mode, one sync each); 0 or 1 = one at a time */
    uint32_t statement_timeout_ms;  /* SET on each session (server-side); 0 = none */
    uint32_t query_timeout_ms;      /* default local timeout per query, queue wait
                                     * included; 0 = statement_timeout_ms + 1000, or none */
    uint32_t connect_timeout_ms;    /* per connection attempt; 0 = 5000 */
    uint32_t backoff_min_ms;        /* reconnect backoff, doubling; 0 = 50 */
    uint32_t backoff_max_ms;        /* 0 = 2000 */
} pg_options_t;

/* Per-query options; the struct may be NULL. */
typedef struct {
    const char *operation;          /* db.operation.name ("SELECT"); NULL = first word of the SQL */
    const char *collection;         /* db.collection.name ("products"); may be NULL */
    const trace_context_t *parent;  /* span parent; NULL = new trace */
    uint32_t timeout_ms;            /* 0 = the pool's query_timeout_ms */
    int result_format;              /* 0 text, 1 binary */
    bool prepare;                   /* prepare the statement once per connection (named after a
                                     * hash of its text) and execute it by name afterwards: no
                                     * parse and plan per call, for statements run often */
    bool untraced;                  /* no span: for background polls, which would otherwise
                                     * each make a trace of their own in the trace store */
} pg_query_opts_t;

typedef struct {
    uint64_t queries;      /* queries completed (any status) */
    uint64_t errors;       /* completed with status != 0 */
    uint64_t timeouts;     /* PG_ERR_TIMEOUT */
    uint64_t connects;     /* successful connects, first ones included */
    uint64_t conn_lost;    /* connections lost after being ready */
    uint64_t cancels;      /* PQcancel requests sent */
    uint64_t prepares;     /* PREPAREs sent (pg_query_opts_t.prepare), once per session each */
} pg_counters_t;

/* -------------------------------------------------------------- prototypes */

/* Creates the pool and starts connecting every connection (asynchronously:
 * queries queue until one is ready).  The conninfo is parsed here: errors
 * -EINVAL (bad conninfo), -ENOMEM.  Free with pg_pool_destroy(). */
int pg_pool_create(loop_t *loop, const pg_options_t *opt, pg_pool_t **out);
/* Fails every queued and in-flight query with PG_ERR_SHUTDOWN (callbacks
 * run inside this call: the one synchronous exception), closes the
 * connections and frees the pool.  Open transactions must have ended. */
void pg_pool_destroy(pg_pool_t *pool);

/* Queues a statement with nparams parameters (values[i] NULL = SQL NULL;
 * lengths/formats as PQsendQueryParams, may be NULL for text).  Errors:
 * -EINVAL (sql NULL, nparams < 0), -ENOMEM; then cb will not run. */
int pg_query(pg_pool_t *pool, const char *sql, int nparams, const char *const *values,
             const int *lengths, const int *formats, const pg_query_opts_t *o, pg_result_cb cb,
             void *arg);

/* Transactions: pg_txn_begin waits for a free connection, runs BEGIN and
 * hands the connection to the transaction until pg_txn_end.  Queries of a
 * transaction run in order on that connection.  pg_txn_end(commit=true)
 * sends COMMIT, else ROLLBACK; its callback runs once, then txn is freed.
 * If the connection is lost, later queries and the end fail with
 * PG_ERR_TXN (the server rolled back).  Errors: -EINVAL, -ENOMEM,
 * -EALREADY (pg_txn_end called twice). */
int pg_txn_begin(pg_pool_t *pool, const trace_context_t *parent, pg_txn_cb cb, void *arg);
int pg_txn_query(pg_txn_t *txn, const char *sql, int nparams, const char *const *values,
                 const int *lengths, const int *formats, const pg_query_opts_t *o,
                 pg_result_cb cb, void *arg);
int pg_txn_end(pg_txn_t *txn, bool commit, pg_result_cb cb, void *arg);

/* Connections currently ready (idle or busy, not reconnecting). */
unsigned pg_pool_ready(const pg_pool_t *pool);
void pg_pool_counters(const pg_pool_t *pool, pg_counters_t *out);

#ifdef __cplusplus
}
#endif

#endif
