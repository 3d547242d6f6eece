/*
 * services/inventory/inventory.c - inventory-svc: shop.v1.InventoryService
 * (CheckStock, ReduceStock, RestoreStock) over the products and
 * stock_movements tables (docs/DATA.md).
 *
 * Usage:
 *   inventory-svc --config shop.conf       # listens on [inventory_svc] address:port
 *   grpcurl -plaintext -import-path proto -proto shop/v1/inventory.proto \
 *     -d '{"order_id":"o1","product_id":"prod456","quantity":2}' \
 *     127.0.0.1:9092 shop.v1.InventoryService/ReduceStock
 *
 * ReduceStock and RestoreStock are idempotent per order id.  Each runs as
 * one short transaction:
 *   BEGIN
 *   SELECT pg_advisory_xact_lock(hashtextextended(order_id, 0))
 *   one data-modifying statement (below)
 *   COMMIT
 * The statement does the whole decision atomically: for ReduceStock,
 *   UPDATE products SET stock = stock - q WHERE id = p AND stock >= q
 *     AND no (order, 'restore') row AND no (order, 'reduce') row
 *   INSERT (order, 'reduce') only for the row the UPDATE returned.
 * Concurrent buyers of the last unit: the UPDATE takes the product's row
 * lock and PostgreSQL re-checks `stock >= q` on the newest row version
 * (READ COMMITTED EvalPlanQual), so stock never goes below zero and
 * exactly `stock` callers succeed.  The per-order conditions are not
 * re-checked that way (they read the statement's snapshot), which is why
 * the advisory lock comes first: two calls for the same order (a retry
 * racing the original, or a RestoreStock racing a late ReduceStock) run
 * one after the other, and the second one's statement, started after the
 * first committed, sees its row.  The lock is per order id, so distinct
 * orders never wait for each other (only for the product row).
 *
 * RestoreStock writes the (order, 'restore') row ON CONFLICT DO NOTHING
 * even when nothing was reduced (the tombstone that refuses a late
 * ReduceStock), and only when that row is new and a reduction exists adds
 * the reduced quantity (of the reduced product) back.
 *
 * Statuses: INVALID_ARGUMENT (empty/over-long ids, quantity <= 0),
 * NOT_FOUND (unknown product), FAILED_PRECONDITION (not enough stock; a
 * ReduceStock after the order's RestoreStock), database errors through
 * svc_reply_pg_error.
 *
 * Spans: the SERVER span, then "SELECT products" (CheckStock) or BEGIN,
 * SELECT (the lock), "UPDATE products", COMMIT.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shop/v1/inventory.pb-c.h"
#include "svc.h"

typedef struct {
    svc_t *svc;
} inv_svc_t;

typedef enum { INV_REDUCE = 1, INV_RESTORE } inv_kind_t;

/* One ReduceStock/RestoreStock in flight; freed when answered. */
typedef struct {
    inv_svc_t *is;
    grpc_server_call_t *call;
    inv_kind_t kind;
    pg_txn_t *txn;
    char order_id[SVC_ID_MAX + 1], product_id[SVC_ID_MAX + 1], qty[16];
    grpc_status_t st;   /* the answer, decided before COMMIT/ROLLBACK */
    char msg[384];
    int32_t remaining;  /* ReduceStock */
    bool already, restored;
} inv_op_t;

static const char inv__reduce_sql[] =
    "WITH tomb AS (SELECT 1 FROM stock_movements WHERE order_id = $1 AND kind = 'restore'), "
    "prev AS (SELECT 1 FROM stock_movements WHERE order_id = $1 AND kind = 'reduce'), "
    "upd AS (UPDATE products SET stock = stock - $3::int, updated_at = now() "
    "WHERE id = $2 AND stock >= $3::int AND NOT EXISTS (SELECT 1 FROM tomb) "
    "AND NOT EXISTS (SELECT 1 FROM prev) RETURNING stock), "
    "ins AS (INSERT INTO stock_movements (order_id, kind, product_id, quantity) "
    "SELECT $1, 'reduce', $2, $3::int FROM upd RETURNING 1) "
    "SELECT EXISTS (SELECT 1 FROM tomb), EXISTS (SELECT 1 FROM prev), (SELECT stock FROM upd), "
    "(SELECT stock FROM products WHERE id = $2), (SELECT count(*) FROM ins)";

static const char inv__restore_sql[] =
    "WITH red AS (SELECT product_id, quantity FROM stock_movements WHERE order_id = $1 AND kind = 'reduce'), "
    "ins AS (INSERT INTO stock_movements (order_id, kind, product_id, quantity) "
    "SELECT $1, 'restore', COALESCE((SELECT product_id FROM red), $2), "
    "COALESCE((SELECT quantity FROM red), $3::int) "
    "WHERE EXISTS (SELECT 1 FROM red) OR EXISTS (SELECT 1 FROM products WHERE id = $2) "
    "ON CONFLICT (order_id, kind) DO NOTHING RETURNING 1), "
    "upd AS (UPDATE products p SET stock = p.stock + red.quantity, updated_at = now() FROM red "
    "WHERE p.id = red.product_id AND EXISTS (SELECT 1 FROM ins) RETURNING p.stock) "
    "SELECT (SELECT count(*) FROM ins), EXISTS (SELECT 1 FROM red), (SELECT count(*) FROM upd), "
    "EXISTS (SELECT 1 FROM products WHERE id = $2)";

static bool inv__bool(const PGresult *r, int col) { return PQgetvalue(r, 0, col)[0] == 't'; }

static const char *inv__what(const inv_op_t *op)
{
    return op->kind == INV_REDUCE ? "ReduceStock" : "RestoreStock";
}

static void inv__answer(inv_op_t *op)
{
    if (op->st != GRPC_STATUS_OK) {
        grpc_server_reply(op->call, op->st, op->msg, NULL);
    } else if (op->kind == INV_REDUCE) {
        Shop__V1__ReduceStockResponse resp = SHOP__V1__REDUCE_STOCK_RESPONSE__INIT;
        resp.remaining_stock = op->remaining;
        resp.already_applied = op->already;
        grpc_server_reply(op->call, GRPC_STATUS_OK, NULL, &resp.base);
    } else {
        Shop__V1__RestoreStockResponse resp = SHOP__V1__RESTORE_STOCK_RESPONSE__INIT;
        resp.restored = op->restored;
        resp.already_applied = op->already;
        grpc_server_reply(op->call, GRPC_STATUS_OK, NULL, &resp.base);
    }
    free(op);
}

static void inv__on_end(pg_pool_t *p, int status, const PGresult *r, const char *msg, void *arg)
{
    (void)p;
    inv_op_t *op = arg;
    if (status != 0 && op->st == GRPC_STATUS_OK) {
        char what[160];
        snprintf(what, sizeof what, "%s order %s: COMMIT", inv__what(op), op->order_id);
        svc_pg_message(op->msg, sizeof op->msg, what, status, r, msg);
        op->st = svc_pg_status(status, r);
        svc_log(NULL, "inventory-svc: %s", op->msg);
    }
    inv__answer(op);
}

/* Ends the transaction (COMMIT when the answer is OK) and answers after. */
static void inv__finish(inv_op_t *op)
{
    if (pg_txn_end(op->txn, op->st == GRPC_STATUS_OK, inv__on_end, op) < 0) {
        if (op->st == GRPC_STATUS_OK) {
            op->st = GRPC_STATUS_INTERNAL;
            snprintf(op->msg, sizeof op->msg, "%s order %s: could not end the transaction", inv__what(op),
                     op->order_id);
        }
        inv__answer(op);
    }
}

static void inv__fail(inv_op_t *op, const char *step, int status, const PGresult *r, const char *msg)
{
    char what[160];
    snprintf(what, sizeof what, "%s order %s: %s", inv__what(op), op->order_id, step);
    svc_pg_message(op->msg, sizeof op->msg, what, status, r, msg);
    op->st = svc_pg_status(status, r);
    if (op->st == GRPC_STATUS_OK)
        op->st = GRPC_STATUS_INTERNAL;
    svc_log(op->is->svc, "%s -> %s", op->msg, grpc_status_name((int)op->st));
    inv__finish(op);
}

static void inv__on_main(pg_pool_t *p, int status, const PGresult *r, const char *msg, void *arg)
{
    (void)p;
    inv_op_t *op = arg;
    if (status != 0) {
        inv__fail(op, op->kind == INV_REDUCE ? "UPDATE products" : "UPDATE products (restore)", status, r, msg);
        return;
    }
    if (PQntuples(r) != 1 || PQnfields(r) < 4) {
        inv__fail(op, "unexpected result shape", PG_ERR_SERVER, NULL, "statement returned no row");
        return;
    }
    op->st = GRPC_STATUS_OK;
    if (op->kind == INV_REDUCE) {
        if (inv__bool(r, 0)) {
            op->st = GRPC_STATUS_FAILED_PRECONDITION;
            snprintf(op->msg, sizeof op->msg,
                     "order %s was already compensated (RestoreStock ran first): late ReduceStock refused",
                     op->order_id);
        } else if (inv__bool(r, 1)) {
            op->already = true;
            op->remaining = PQgetisnull(r, 0, 3) ? 0 : atoi(PQgetvalue(r, 0, 3));
        } else if (!PQgetisnull(r, 0, 2)) {
            op->remaining = atoi(PQgetvalue(r, 0, 2));
        } else if (PQgetisnull(r, 0, 3)) {
            op->st = GRPC_STATUS_NOT_FOUND;
            snprintf(op->msg, sizeof op->msg, "product %s not found", op->product_id);
        } else {
            op->st = GRPC_STATUS_FAILED_PRECONDITION;
            snprintf(op->msg, sizeof op->msg, "insufficient stock for product %s: %s in stock, %s requested",
                     op->product_id, PQgetvalue(r, 0, 3), op->qty);
        }
    } else {
        bool inserted = atoi(PQgetvalue(r, 0, 0)) > 0, reduced = inv__bool(r, 1);
        if (!inserted && !reduced && !inv__bool(r, 3)) {
            op->st = GRPC_STATUS_NOT_FOUND;
            snprintf(op->msg, sizeof op->msg, "product %s not found", op->product_id);
        } else if (!inserted) {
            op->already = true;
            op->restored = reduced;
        } else {
            op->restored = atoi(PQgetvalue(r, 0, 2)) > 0;
        }
    }
    inv__finish(op);
}

static void inv__on_lock(pg_pool_t *p, int status, const PGresult *r, const char *msg, void *arg)
{
    (void)p;
    inv_op_t *op = arg;
    if (status != 0) {
        inv__fail(op, "advisory lock", status, r, msg);
        return;
    }
    const char *vals[] = {op->order_id, op->product_id, op->qty};
    pg_query_opts_t o = {.operation = "UPDATE", .collection = "products", .parent = svc_call_ctx(op->call)};
    const char *sql = op->kind == INV_REDUCE ? inv__reduce_sql : inv__restore_sql;
    int rc = pg_txn_query(op->txn, sql, 3, vals, NULL, NULL, &o, inv__on_main, op);
    if (rc < 0)
        inv__fail(op, "UPDATE products", rc, NULL, NULL);
}

static void inv__on_begin(pg_pool_t *p, int status, pg_txn_t *txn, const char *msg, void *arg)
{
    (void)p;
    inv_op_t *op = arg;
    if (status != 0) {
        char what[160];
        snprintf(what, sizeof what, "%s order %s: BEGIN", inv__what(op), op->order_id);
        svc_reply_pg_error(op->call, what, status, NULL, msg);
        free(op);
        return;
    }
    op->txn = txn;
    const char *vals[] = {op->order_id};
    pg_query_opts_t o = {.operation = "SELECT", .parent = svc_call_ctx(op->call)};
    int rc = pg_txn_query(txn, "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", 1, vals, NULL, NULL, &o,
                          inv__on_lock, op);
    if (rc < 0)
        inv__fail(op, "advisory lock", rc, NULL, NULL);
}

/* Validates and starts a ReduceStock/RestoreStock. */
static void inv__start(inv_svc_t *is, grpc_server_call_t *call, inv_kind_t kind, const char *order_id,
                       const char *product_id, int32_t quantity)
{
    char m[160];
    if (svc_check_id(order_id, "order_id", m, sizeof m) < 0 ||
        svc_check_id(product_id, "product_id", m, sizeof m) < 0) {
        grpc_server_reply(call, GRPC_STATUS_INVALID_ARGUMENT, m, NULL);
        return;
    }
    if (quantity <= 0) {
        snprintf(m, sizeof m, "quantity: must be > 0, got %d", quantity);
        grpc_server_reply(call, GRPC_STATUS_INVALID_ARGUMENT, m, NULL);
        return;
    }
    inv_op_t *op = calloc(1, sizeof *op);
    if (op == NULL) {
        grpc_server_reply(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "inventory: out of memory", NULL);
        return;
    }
    op->is = is;
    op->call = call;
    op->kind = kind;
    snprintf(op->order_id, sizeof op->order_id, "%s", order_id);
    snprintf(op->product_id, sizeof op->product_id, "%s", product_id);
    snprintf(op->qty, sizeof op->qty, "%d", quantity);
    int rc = pg_txn_begin(svc_pg(is->svc), svc_call_ctx(call), inv__on_begin, op);
    if (rc < 0) {
        svc_reply_pg_error(call, kind == INV_REDUCE ? "ReduceStock: BEGIN" : "RestoreStock: BEGIN", rc, NULL, NULL);
        free(op);
    }
}

static void inv__reduce(grpc_server_call_t *call, const ProtobufCMessage *msg, void *arg)
{
    const Shop__V1__ReduceStockRequest *req = (const Shop__V1__ReduceStockRequest *)msg;
    inv__start(arg, call, INV_REDUCE, req->order_id, req->product_id, req->quantity);
}

static void inv__restore(grpc_server_call_t *call, const ProtobufCMessage *msg, void *arg)
{
    const Shop__V1__RestoreStockRequest *req = (const Shop__V1__RestoreStockRequest *)msg;
    inv__start(arg, call, INV_RESTORE, req->order_id, req->product_id, req->quantity);
}

/* ------------------------------------------------------------ CheckStock */

typedef struct {
    grpc_server_call_t *call;
    int32_t quantity;
    char product_id[SVC_ID_MAX + 1];
} inv_check_t;

static void inv__on_check(pg_pool_t *p, int status, const PGresult *r, const char *msg, void *arg)
{
    (void)p;
    inv_check_t *c = arg;
    if (status != 0) {
        char what[128];
        snprintf(what, sizeof what, "CheckStock %s: SELECT products", c->product_id);
        svc_reply_pg_error(c->call, what, status, r, msg);
    } else if (PQntuples(r) == 0) {
        char m[128];
        snprintf(m, sizeof m, "product %s not found", c->product_id);
        grpc_server_reply(c->call, GRPC_STATUS_NOT_FOUND, m, NULL);
    } else {
        Shop__V1__CheckStockResponse resp = SHOP__V1__CHECK_STOCK_RESPONSE__INIT;
        resp.stock = atoi(PQgetvalue(r, 0, 0));
        resp.unit_price_cents = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
        resp.available = resp.stock >= c->quantity;
        grpc_server_reply(c->call, GRPC_STATUS_OK, NULL, &resp.base);
    }
    free(c);
}

static void inv__check(grpc_server_call_t *call, const ProtobufCMessage *msg, void *arg)
{
    inv_svc_t *is = arg;
    const Shop__V1__CheckStockRequest *req = (const Shop__V1__CheckStockRequest *)msg;
    char m[160];
    if (svc_check_id(req->product_id, "product_id", m, sizeof m) < 0) {
        grpc_server_reply(call, GRPC_STATUS_INVALID_ARGUMENT, m, NULL);
        return;
    }
    if (req->quantity <= 0) {
        snprintf(m, sizeof m, "quantity: must be > 0, got %d", req->quantity);
        grpc_server_reply(call, GRPC_STATUS_INVALID_ARGUMENT, m, NULL);
        return;
    }
    inv_check_t *c = calloc(1, sizeof *c);
    if (c == NULL) {
        grpc_server_reply(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "CheckStock: out of memory", NULL);
        return;
    }
    c->call = call;
    c->quantity = req->quantity;
    snprintf(c->product_id, sizeof c->product_id, "%s", req->product_id);
    const char *vals[] = {c->product_id};
    pg_query_opts_t o = {.operation = "SELECT", .collection = "products", .parent = svc_call_ctx(call)};
    int rc = pg_query(svc_pg(is->svc), "SELECT stock, price_cents FROM products WHERE id = $1", 1, vals, NULL,
                      NULL, &o, inv__on_check, c);
    if (rc < 0) {
        svc_reply_pg_error(call, "CheckStock: SELECT products", rc, NULL, NULL);
        free(c);
    }
}

int main(int argc, char **argv)
{
    svc_options_t o = {
        .name = "inventory-svc",
        .listen_address = CONFIG_INVENTORY_SVC_ADDRESS,
        .listen_port = CONFIG_INVENTORY_SVC_PORT,
        .needs = SVC_NEED_PG,
    };
    svc_t *svc;
    int rc = svc_create(&o, argc, argv, &svc);
    if (svc == NULL)
        return rc;
    static inv_svc_t is;
    is.svc = svc;
    /* Order of shop.v1.InventoryService's methods in the descriptor
     * (protoc-c sorts nothing: declaration order). */
    static const grpc_server_handler_cb handlers[] = {inv__check, inv__reduce, inv__restore};
    if ((rc = svc_add_service(svc, &shop__v1__inventory_service__descriptor, handlers, &is)) < 0) {
        svc_log(svc, "start-up: %s", strerror(-rc));
        svc_free(svc);
        return SVC_EXIT_FAIL;
    }
    rc = svc_run(svc);
    svc_free(svc);
    return rc;
}
