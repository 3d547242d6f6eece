/*
 * services/common/svc.h - the runtime every shop-trace service main uses:
 * command line, configuration, tracing, the loop, the gRPC server with the
 * standard health service, PostgreSQL/Redis clients built from the config,
 * graceful shutdown, and the mapping of database errors to gRPC statuses.
 *
 * Usage (a whole service main):
 *   int main(int argc, char **argv) {
 *       svc_options_t o = {.name = "inventory-svc", .listen_address = CONFIG_INVENTORY_SVC_ADDRESS,
 *                          .listen_port = CONFIG_INVENTORY_SVC_PORT, .needs = SVC_NEED_PG};
 *       svc_t *svc;
 *       int rc = svc_create(&o, argc, argv, &svc);
 *       if (svc == NULL)
 *           return rc;                       // --check-config, --help, or a start-up error
 *       svc_add_service(svc, &shop__v1__inventory_service__descriptor, handlers, NULL);
 *       rc = svc_run(svc);                   // until SIGTERM/SIGINT
 *       svc_free(svc);
 *       return rc;
 *   }
 *
 * Command line: SERVICE [--config FILE] [--check-config].  Without
 * --config, config_load's rules apply ($SHOP_CONFIG, else ./shop.conf).
 * --check-config loads and validates the file (and the environment) with
 * every key's range and the service's own rules (svc_options_t.check), so
 * that "ok" means the service will accept it; prints "ok" on stdout and
 * exits 0, or prints the error (file:line: [section] key = value: reason)
 * on stderr and exits 2.
 *
 * Start-up (svc_create): config_load, one log line per effective key
 * (stderr, "<name>: config: section.key = value  (origin)"), trace_init
 * from config_trace_options with service.name = o->name and
 * service.version, creating the ring when missing so a service may start
 * before the exporter; the loop; the gRPC server with grpc.health.v1.Health;
 * the PostgreSQL pool and Redis client asked for in o->needs.  svc_run()
 * listens on the configured address and port and prints one line on stdout,
 * "<name> listening on ADDR:PORT" (the bound port when the config says 0),
 * which scripts and tests wait for.
 *
 * Health: grpc.health.v1.Health/Check answers SERVING when every dependency
 * is up: the PostgreSQL pool has a ready connection (SVC_NEED_PG), and the
 * service's own check (svc_set_health) says so; NOT_SERVING otherwise.
 * Redis is not a dependency: the cache is optional by design.  service ""
 * is the whole process; a registered service name ("shop.v1.UserService")
 * answers for that service; any other name is NOT_FOUND.  Watch is
 * UNIMPLEMENTED (unary server).
 *
 * Shutdown: SIGTERM or SIGINT starts a graceful shutdown: the shutdown
 * hooks run (stop background work), listeners close, connections get
 * GOAWAY, calls in flight finish within [service] shutdown_grace ms (then
 * they are reset), clients close, tracing is flushed, and svc_run returns
 * 0.  A second signal stops at once (svc_run returns 1).
 *
 * Threads: one loop thread; every function runs on it.
 * Return convention: 0 or -errno unless said otherwise (STYLE.md).
 */
#ifndef SHOP_SERVICES_SVC_H
#define SHOP_SERVICES_SVC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "core.h"
#include "grpc.h"
#include "loop.h"
#include "pg.h"
#include "redis.h"

/* ------------------------------------------------------------ return codes */

#define SVC_EXIT_OK 0     /* graceful shutdown, --check-config ok, --help */
#define SVC_EXIT_FAIL 1   /* start-up failed, or stopped by a second signal */
#define SVC_EXIT_CONFIG 2 /* bad command line or configuration */

/* Longest id the shop accepts (docs/DATA.md: text ids, 1..64 bytes). */
#define SVC_ID_MAX 64u

/* ------------------------------------------------------------------ flags */

#define SVC_NEED_PG 0x01u    /* create svc_pg() from [postgres]; health depends on it */
#define SVC_NEED_REDIS 0x02u /* create svc_redis() from [redis]; optional for health */

/* --------------------------------------------------------------- callbacks */

typedef struct st_svc_t svc_t;

/* Extra health condition: true when the service can serve. */
typedef bool (*svc_health_cb)(svc_t *svc, void *arg);
/* Runs once when a graceful shutdown starts, before listeners close. */
typedef void (*svc_shutdown_cb)(svc_t *svc, void *arg);
/* The service's own rules on its configuration, beyond each key's range
 * (one key against another, an address that must be numeric): 0, or -1
 * with "ORIGIN: [section] key = value: reason" in err. */
typedef int (*svc_check_cb)(const config_t *c, char *err, size_t errlen);

/* ----------------------------------------------------------------- structs */

typedef struct st_svc_options_t {
    const char *name;           /* service.name and log prefix ("user-svc"); required */
    const char *version;        /* service.version; NULL = the project version */
    config_id_t listen_address; /* key of the listen address (CONFIG_USER_SVC_ADDRESS) */
    config_id_t listen_port;    /* key of the listen port (CONFIG_USER_SVC_PORT) */
    unsigned needs;             /* SVC_NEED_* */
    const grpc_server_opts_t *server; /* NULL = grpc_server_new defaults */
    svc_check_cb check;         /* NULL = none; run by --check-config and at start-up */
} svc_options_t;

/* -------------------------------------------------------------- prototypes */

/* Parses argv, loads the configuration, starts tracing, creates the loop,
 * the server and the clients (nothing listens yet).  On success *out is the
 * service and the return is 0.  Otherwise *out is NULL and the return value
 * is the process exit status: SVC_EXIT_OK after --check-config ok or
 * --help, SVC_EXIT_CONFIG for a bad command line or configuration,
 * SVC_EXIT_FAIL for anything else; the reason is on stderr. */
int svc_create(const svc_options_t *o, int argc, char **argv, svc_t **out);
/* Frees everything svc_create made (also after svc_run). */
void svc_free(svc_t *svc);

/* Adds a protobuf-c service to the server (grpc_server_add_service) and to
 * the health service's names.  Errors: those of grpc_server_add_service. */
int svc_add_service(svc_t *svc, const struct ProtobufCServiceDescriptor *desc,
                    const grpc_server_handler_cb *handlers, void *arg);
void svc_set_health(svc_t *svc, svc_health_cb cb, void *arg);
/* Errors: -ENOMEM (more than 8 hooks). */
int svc_on_shutdown(svc_t *svc, svc_shutdown_cb cb, void *arg);

/* Listens, prints the "listening on" line and runs the loop until the
 * shutdown ends.  Returns the process exit status (SVC_EXIT_*). */
int svc_run(svc_t *svc);
/* Starts the graceful shutdown as SIGTERM does (tests, fatal errors). */
void svc_shutdown(svc_t *svc);
/* True once a shutdown started. */
bool svc_stopping(const svc_t *svc);

const char *svc_name(const svc_t *svc);
loop_t *svc_loop(svc_t *svc);
const config_t *svc_config(const svc_t *svc);
grpc_server_t *svc_server(svc_t *svc);
pg_pool_t *svc_pg(svc_t *svc);          /* NULL without SVC_NEED_PG */
redis_client_t *svc_redis(svc_t *svc);  /* NULL without SVC_NEED_REDIS */
/* The port the server listens on (after svc_run started), else 0. */
uint16_t svc_port(const svc_t *svc);
/* True when the dependencies are up (what Health/Check reports). */
bool svc_healthy(svc_t *svc);

/* "<name>: message" on stderr, one line. */
void svc_log(const svc_t *svc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The parent context for a handler's client spans: the call's SERVER span. */
const trace_context_t *svc_call_ctx(grpc_server_call_t *call);

/* Checks a request id field: non-empty, at most SVC_ID_MAX bytes, no
 * control characters.  Returns 0, or -EINVAL with "field: reason" in msg
 * (answer INVALID_ARGUMENT). */
int svc_check_id(const char *id, const char *field, char *msg, size_t cap);

/* ---- database errors -> gRPC status (with a precise message) ----
 * PostgreSQL: PG_ERR_TIMEOUT and SQLSTATE 57014 -> DEADLINE_EXCEEDED, but
 * UNAVAILABLE when the pool has no ready connection (unreachable server);
 * PG_ERR_CONNECTION, PG_ERR_TXN, PG_ERR_SHUTDOWN, -ENOTCONN, class 08
 * (connection), 57P0x (server shutting down), 53xxx (resources) ->
 * UNAVAILABLE; 40001/40P01 (serialization, deadlock) -> ABORTED; 23505
 * -> ALREADY_EXISTS; 23503/23514 (foreign key, check) ->
 * FAILED_PRECONDITION; class 22 (bad data) -> INVALID_ARGUMENT; anything
 * else INTERNAL.  Redis: REDIS_E_TIMEOUT -> DEADLINE_EXCEEDED; connection
 * states -> UNAVAILABLE; an error reply -> INTERNAL. */
grpc_status_t svc_pg_status(int status, const PGresult *r);
grpc_status_t svc_redis_status(int status);
/* Writes "<what>: <reason>[ (SQLSTATE xxxxx)]" (the server's primary
 * message when there is one) into out; returns out. */
const char *svc_pg_message(char *out, size_t cap, const char *what, int status, const PGresult *r,
                           const char *msg);
/* Answers call with the mapped status and message, logs it; returns
 * grpc_server_reply's value. */
int svc_reply_pg_error(grpc_server_call_t *call, const char *what, int status, const PGresult *r,
                       const char *msg);
int svc_reply_redis_error(grpc_server_call_t *call, const char *what, int status, const char *msg);

#endif
