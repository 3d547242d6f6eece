/*
 * core/redis.h - Redis client for the io_uring loop: one hiredis async
 * context driven by an adapter on loop_watch_* readiness, per-command
 * timeouts, reconnect with backoff after a server restart, and one CLIENT
 * span per command (OpenTelemetry semantic conventions v1.37.0).
 *
 * Usage:
 *   static void on_get(redis_client_t *c, int st, const redisReply *r, const char *msg, void *a) {
 *       if (st == 0 && r->type == REDIS_REPLY_STRING) printf("%s\n", r->str);
 *   }
 *   redis_options_t o = {.host = "127.0.0.1", .port = 6379, .command_timeout_ms = 200};
 *   redis_client_t *rc;
 *   redis_create(loop, &o, &rc);
 *   const char *argv[] = {"GET", "user:42"};
 *   redis_command(rc, NULL, on_get, NULL, 2, argv, NULL);
 *
 * ------------------------------------------------------------------------
 * CALLBACK CONTRACT
 *  - Everything runs on the loop's thread and nothing blocks (the host is a
 *    numeric address: a name would need a blocking resolver).
 *  - A reply callback never runs inside redis_command(); it runs exactly
 *    once per accepted command: with the reply, or with an error status
 *    (timeout, connection lost, client destroyed).  The reply is valid
 *    during the callback only (hiredis frees it after).
 *  - A command that timed out is reported at once; the connection is kept
 *    (Redis answers in order, so the late answer is recognised and dropped).
 *  - While the client is reconnecting, redis_command() returns -ENOTCONN
 *    and no callback runs: callers treat the cache as unavailable.
 *  - Do not call redis_destroy() from a reply callback.
 *  - Spans: db.query.text is the command and its first argument (the key),
 *    every further argument replaced by "?": semconv v1.37 asks to sanitise
 *    query text that is not parameterised, and values (cached user rows)
 *    must not leak into traces while keys identify the access.
 * ------------------------------------------------------------------------
 */
#ifndef SHOP_CORE_REDIS_H
#define SHOP_CORE_REDIS_H

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"
#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------ return codes */

/* Named REDIS_E_* because hiredis owns REDIS_ERR_*. */
#define REDIS_E_MAP(X)                                                               \
    X(REDIS_E_REPLY, -1100, "error reply")     /* the reply is REDIS_REPLY_ERROR */  \
    X(REDIS_E_TIMEOUT, -1101, "command timed out")                                   \
    X(REDIS_E_CONNECTION, -1102, "connection lost")                                  \
    X(REDIS_E_SHUTDOWN, -1103, "client destroyed")

typedef enum {
#define REDIS__E_ENUM(name, val, str) name = (val),
    REDIS_E_MAP(REDIS__E_ENUM)
#undef REDIS__E_ENUM
} redis_error_t;

const char *redis_strerror(int status);

/* --------------------------------------------------------------- callbacks */

typedef struct st_redis_client_t redis_client_t;

/* status 0 or REDIS_E_REPLY: reply non-NULL; else reply NULL and msg says why. */
typedef void (*redis_reply_cb)(redis_client_t *c, int status, const redisReply *reply,
                               const char *msg, void *arg);

/* ----------------------------------------------------------------- structs */

typedef struct {
    const char *host;             /* numeric IPv4/IPv6; NULL = "127.0.0.1" */
    uint16_t port;                /* 0 = 6379 */
    uint32_t connect_timeout_ms;  /* 0 = 2000 */
    uint32_t command_timeout_ms;  /* default per command; 0 = 1000 */
    uint32_t backoff_min_ms;      /* reconnect backoff, doubling; 0 = 50 */
    uint32_t backoff_max_ms;      /* 0 = 2000 */
} redis_options_t;

typedef struct {
    const trace_context_t *parent; /* span parent; NULL = new trace */
    uint32_t timeout_ms;           /* 0 = command_timeout_ms */
} redis_cmd_opts_t;

typedef struct {
    uint64_t commands;  /* completed, any status */
    uint64_t errors;    /* status != 0 */
    uint64_t timeouts;
    uint64_t connects;  /* successful connects */
    uint64_t conn_lost; /* disconnects after a successful connect */
} redis_counters_t;

/* -------------------------------------------------------------- prototypes */

/* Creates the client and starts connecting (on the loop).  Free with
 * redis_destroy().  Errors: -ENOMEM, -EINVAL (host not numeric). */
int redis_create(loop_t *loop, const redis_options_t *opt, redis_client_t **out);
/* Fails pending commands with REDIS_E_SHUTDOWN (callbacks run inside this
 * call) and frees the client. */
void redis_destroy(redis_client_t *c);
/* Sends argv[0..argc) (argvlen NULL = strlen).  o may be NULL.  Errors:
 * -EINVAL (argc < 1), -ENOTCONN (reconnecting), -ENOMEM. */
int redis_command(redis_client_t *c, const redis_cmd_opts_t *o, redis_reply_cb cb, void *arg,
                  int argc, const char *const *argv, const size_t *argvlen);
/* True once connected and until the connection is lost. */
bool redis_connected(const redis_client_t *c);
void redis_counters(const redis_client_t *c, redis_counters_t *out);

#ifdef __cplusplus
}
#endif

#endif
