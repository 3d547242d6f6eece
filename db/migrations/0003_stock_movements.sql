-- 0003: stock_movements (inventory-svc): one row per order and kind, which
-- makes ReduceStock and RestoreStock idempotent per order id.
--
-- ReduceStock, in one transaction:
--   refuse if a 'restore' row exists for the order (a late retry after the
--   saga compensated); INSERT ('reduce') ON CONFLICT DO NOTHING; if the row
--   is new, UPDATE products SET stock = stock - q WHERE id = p AND stock >= q
--   (no row updated = not enough stock: roll back); else already applied.
-- RestoreStock, in one transaction:
--   INSERT ('restore') ON CONFLICT DO NOTHING; if new and a 'reduce' row
--   exists, UPDATE products SET stock = stock + q. The 'restore' row is
--   written even without a reduction: it is the tombstone that stops a late
--   ReduceStock for that order.

CREATE TABLE stock_movements (
    order_id    text        NOT NULL CHECK (order_id <> ''),
    kind        text        NOT NULL CHECK (kind IN ('reduce', 'restore')),
    product_id  text        NOT NULL REFERENCES products (id),
    quantity    integer     NOT NULL CHECK (quantity > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, kind)
);

CREATE INDEX stock_movements_product ON stock_movements (product_id, created_at);
