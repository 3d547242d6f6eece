-- 0002: orders (order-svc), the saga's record.
-- No foreign keys to users/products: those tables belong to other services,
-- which order-svc reaches only over gRPC (docs/DATA.md, "Ownership").

CREATE TABLE orders (
    id               text        PRIMARY KEY CHECK (id <> '' AND length(id) <= 64),
    user_id          text        NOT NULL,
    product_id       text        NOT NULL,
    quantity         integer     NOT NULL CHECK (quantity > 0),
    amount_cents     bigint      NOT NULL CHECK (amount_cents > 0),
    status           text        NOT NULL DEFAULT 'pending'
                                 CHECK (status IN ('pending', 'completed', 'failed')),
    -- Why the saga gave up ("insufficient_stock", "payment_declined", ...);
    -- set exactly when the order failed.
    failure_reason   text        CHECK ((status = 'failed') = (failure_reason IS NOT NULL)),
    -- Client key (HTTP Idempotency-Key); NULL = none. request_hash is a digest
    -- of the request body that made the order, so a replay with another
    -- body can be told apart (409) from a true retry.
    idempotency_key  text        CHECK (idempotency_key <> '' AND length(idempotency_key) <= 255),
    request_hash     text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- NULL keys are distinct, so orders without a key never collide.
    CONSTRAINT orders_user_idempotency_key UNIQUE (user_id, idempotency_key)
);

-- ListOrders: a user's orders newest first, keyset-paged on (created_at, id).
CREATE INDEX orders_user_created ON orders (user_id, created_at DESC, id DESC);

-- Recovery of sagas interrupted by a crash: the few orders still pending.
CREATE INDEX orders_pending ON orders (created_at) WHERE status = 'pending';
