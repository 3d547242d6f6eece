-- 0004: payments (payment-svc): at most one payment per order, so a
-- retried ProcessPayment can never charge twice.
--
-- ProcessPayment: INSERT ... ('pending') ON CONFLICT (order_id) DO NOTHING;
-- only the call that inserted the row calls the processor, then UPDATEs
-- status; every other call returns the row as it stands.

CREATE TABLE payments (
    id              text        PRIMARY KEY CHECK (id <> '' AND length(id) <= 64),
    order_id        text        NOT NULL CHECK (order_id <> ''),
    user_id         text        NOT NULL,
    amount_cents    bigint      NOT NULL CHECK (amount_cents > 0),
    currency        text        NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    status          text        NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'succeeded', 'failed', 'refunded')),
    failure_reason  text        CHECK (status <> 'failed' OR failure_reason IS NOT NULL),
    processor_ref   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payments_order_id UNIQUE (order_id)
);
