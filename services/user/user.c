/*
 * services/user/user.c - user-svc: shop.v1.UserService/GetUser with a Redis
 * cache-aside in front of PostgreSQL.
 *
 * Usage:
 *   user-svc --config shop.conf            # listens on [user_svc] address:port
 *   user-svc --config shop.conf --check-config
 *   grpcurl -plaintext -import-path proto -proto shop/v1/user.proto \
 *     -d '{"user_id":"user123"}' 127.0.0.1:9091 shop.v1.UserService/GetUser
 *
 * GetUser(id):
 *   1. GET user:{id} from Redis ([redis] command_timeout, 50 ms by default).
 *      A hit is the packed shop.v1.User message: answered at once.
 *   2. A miss, or Redis down / slow / answering garbage: SELECT from
 *      users.  The cache is never a reason to fail: every Redis problem
 *      falls through to PostgreSQL (the cost is the timeout when Redis
 *      hangs; while the client reconnects, redis_command refuses at once).
 *   3. After a clean miss (Redis answered nil) the row is written back with
 *      SET user:{id} <bytes> EX [user_svc] cache_ttl, sent before the reply
 *      so the SET span has the SERVER span as parent and a following GET on
 *      the same (ordered) connection sees it.  Not after a Redis error: the
 *      server is probably gone, and a SET would only wait for its timeout.
 * Unknown user: NOT_FOUND (not cached).  Empty or over-long id:
 * INVALID_ARGUMENT.  PostgreSQL errors map through svc_reply_pg_error.
 *
 * Spans: the SERVER span (automatic), "GET" (redis), on a miss
 * "SELECT users" (postgresql) and "SET" (redis), all children of it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shop/v1/user.pb-c.h"
#include "svc.h"

#define USER__KEY_PREFIX "user:"
#define USER__CACHED_MAX 4096u /* bytes of a packed User we accept from Redis */

typedef struct {
    svc_t *svc;
    uint32_t ttl_s;    /* [user_svc] cache_ttl */
    uint64_t hits, misses, cache_errors;
} user_svc_t;

/* One GetUser in flight (freed when it is answered). */
typedef struct {
    user_svc_t *us;
    grpc_server_call_t *call;
    bool fill;                                   /* Redis answered nil: write the row back */
    char key[sizeof USER__KEY_PREFIX + SVC_ID_MAX];
    const char *id;                              /* points into key */
} user_get_t;

static void user__reply(user_get_t *g, const Shop__V1__User *u)
{
    Shop__V1__GetUserResponse resp = SHOP__V1__GET_USER_RESPONSE__INIT;
    resp.user = (Shop__V1__User *)(uintptr_t)u;
    grpc_server_reply(g->call, GRPC_STATUS_OK, NULL, &resp.base);
    free(g);
}

static void user__set_done(redis_client_t *c, int status, const redisReply *r, const char *msg, void *arg)
{
    (void)c;
    (void)r;
    user_svc_t *us = arg;
    if (status != 0) {
        us->cache_errors++;
        svc_log(us->svc, "cache fill: %s", msg ? msg : redis_strerror(status));
    }
}

static void user__fill(user_get_t *g, const Shop__V1__User *u)
{
    redis_client_t *rc = svc_redis(g->us->svc);
    if (!g->fill || rc == NULL)
        return;
    uint8_t buf[USER__CACHED_MAX];
    size_t n = shop__v1__user__get_packed_size(u);
    if (n > sizeof buf)
        return; /* a row this large is read from PostgreSQL every time */
    shop__v1__user__pack(u, buf);
    char ttl[16];
    snprintf(ttl, sizeof ttl, "%u", g->us->ttl_s);
    const char *argv[] = {"SET", g->key, (const char *)buf, "EX", ttl};
    const size_t lens[] = {3, strlen(g->key), n, 2, strlen(ttl)};
    redis_cmd_opts_t o = {.parent = svc_call_ctx(g->call)};
    (void)redis_command(rc, &o, user__set_done, g->us, 5, argv, lens);
}

static void user__on_row(pg_pool_t *p, int status, const PGresult *r, const char *msg, void *arg)
{
    (void)p;
    user_get_t *g = arg;
    if (status != 0) {
        char what[128];
        snprintf(what, sizeof what, "GetUser %.64s: SELECT users", g->id);
        svc_reply_pg_error(g->call, what, status, r, msg);
        free(g);
        return;
    }
    if (PQntuples(r) == 0) {
        char m[128];
        snprintf(m, sizeof m, "user %.64s not found", g->id);
        grpc_server_reply(g->call, GRPC_STATUS_NOT_FOUND, m, NULL);
        free(g);
        return;
    }
    Shop__V1__User u = SHOP__V1__USER__INIT;
    u.id = PQgetvalue(r, 0, 0);
    u.name = PQgetvalue(r, 0, 1);
    u.email = PQgetvalue(r, 0, 2);
    u.created_at_ms = strtoll(PQgetvalue(r, 0, 3), NULL, 10);
    user__fill(g, &u);
    user__reply(g, &u);
}

static void user__from_db(user_get_t *g)
{
    static const char sql[] = "SELECT id, name, email, (extract(epoch FROM created_at) * 1000)::bigint "
                              "FROM users WHERE id = $1";
    const char *vals[] = {g->id};
    pg_query_opts_t o = {.operation = "SELECT", .collection = "users", .parent = svc_call_ctx(g->call)};
    int rc = pg_query(svc_pg(g->us->svc), sql, 1, vals, NULL, NULL, &o, user__on_row, g);
    if (rc < 0) {
        svc_reply_pg_error(g->call, "GetUser: SELECT users", rc, NULL, NULL);
        free(g);
    }
}

static void user__on_get(redis_client_t *c, int status, const redisReply *r, const char *msg, void *arg)
{
    (void)c;
    user_get_t *g = arg;
    user_svc_t *us = g->us;
    if (status == 0 && r->type == REDIS_REPLY_STRING) {
        Shop__V1__User *u = shop__v1__user__unpack(NULL, r->len, (const uint8_t *)r->str);
        if (u != NULL && strcmp(u->id, g->id) == 0) {
            us->hits++;
            user__reply(g, u);
            shop__v1__user__free_unpacked(u, NULL);
            return;
        }
        if (u != NULL)
            shop__v1__user__free_unpacked(u, NULL);
        us->cache_errors++;
        svc_log(us->svc, "cache: %s holds no valid user; reading PostgreSQL and overwriting it", g->key);
        g->fill = true;
    } else if (status == 0 && r->type == REDIS_REPLY_NIL) {
        us->misses++;
        g->fill = true;
    } else {
        us->cache_errors++;
        if (us->cache_errors < 10 || us->cache_errors % 1000 == 0)
            svc_log(us->svc, "cache GET %s: %s; falling back to PostgreSQL", g->key,
                    msg ? msg : redis_strerror(status));
    }
    user__from_db(g);
}

static void user__get_user(grpc_server_call_t *call, const ProtobufCMessage *msg, void *arg)
{
    user_svc_t *us = arg;
    const Shop__V1__GetUserRequest *req = (const Shop__V1__GetUserRequest *)msg;
    char m[160];
    if (svc_check_id(req->user_id, "user_id", m, sizeof m) < 0) {
        grpc_server_reply(call, GRPC_STATUS_INVALID_ARGUMENT, m, NULL);
        return;
    }
    user_get_t *g = calloc(1, sizeof *g);
    if (g == NULL) {
        grpc_server_reply(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "GetUser: out of memory", NULL);
        return;
    }
    g->us = us;
    g->call = call;
    snprintf(g->key, sizeof g->key, USER__KEY_PREFIX "%s", req->user_id);
    g->id = g->key + strlen(USER__KEY_PREFIX);
    redis_client_t *rc = svc_redis(us->svc);
    const char *argv[] = {"GET", g->key};
    redis_cmd_opts_t o = {.parent = svc_call_ctx(call)};
    if (redis_command(rc, &o, user__on_get, g, 2, argv, NULL) < 0) {
        us->cache_errors++; /* reconnecting: the cache is unavailable, no wait */
        user__from_db(g);
    }
}

static void user__on_shutdown(svc_t *svc, void *arg)
{
    user_svc_t *us = arg;
    svc_log(svc, "cache: %llu hits, %llu misses, %llu errors", (unsigned long long)us->hits,
            (unsigned long long)us->misses, (unsigned long long)us->cache_errors);
}

int main(int argc, char **argv)
{
    svc_options_t o = {
        .name = "user-svc",
        .listen_address = CONFIG_USER_SVC_ADDRESS,
        .listen_port = CONFIG_USER_SVC_PORT,
        .needs = SVC_NEED_PG | SVC_NEED_REDIS,
    };
    svc_t *svc;
    int rc = svc_create(&o, argc, argv, &svc);
    if (svc == NULL)
        return rc;
    static user_svc_t us;
    us.svc = svc;
    us.ttl_s = (uint32_t)config_int(svc_config(svc), CONFIG_USER_SVC_CACHE_TTL);
    static const grpc_server_handler_cb handlers[] = {user__get_user};
    if ((rc = svc_add_service(svc, &shop__v1__user_service__descriptor, handlers, &us)) < 0 ||
        (rc = svc_on_shutdown(svc, user__on_shutdown, &us)) < 0) {
        svc_log(svc, "start-up: %s", strerror(-rc));
        svc_free(svc);
        return SVC_EXIT_FAIL;
    }
    rc = svc_run(svc);
    svc_free(svc);
    return rc;
}
