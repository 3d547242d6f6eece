-- 0005: outbox (order-svc): events written in the same transaction as the
-- order's final UPDATE, then published to Kafka by the relay, so an order
-- never completes without its event and no event is lost while Kafka is
-- down (transactional outbox).
--
-- Relay: SELECT ... WHERE sent_at IS NULL ORDER BY id LIMIT n
--        FOR UPDATE SKIP LOCKED; produce; UPDATE outbox SET sent_at = now().
-- Delivery is at least once (a crash between produce and UPDATE resends);
-- consumers deduplicate on the event id carried in the payload.

CREATE TABLE outbox (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    aggregate_id  text        NOT NULL CHECK (aggregate_id <> ''),  -- the order id
    event_type    text        NOT NULL CHECK (event_type <> ''),    -- "order.completed", "order.failed"
    topic         text        NOT NULL DEFAULT 'order-events' CHECK (topic <> ''),
    key           text        NOT NULL,                             -- Kafka message key (= order id)
    payload       jsonb       NOT NULL,                             -- Kafka message value
    -- W3C trace context of the request that wrote the event; the relay's
    -- PRODUCER span links to it and sends it as the traceparent header.
    traceparent   text        CHECK (traceparent ~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    sent_at       timestamptz,
    attempts      integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error    text,
    -- A retried final transaction cannot queue the same event twice.
    CONSTRAINT outbox_aggregate_event UNIQUE (aggregate_id, event_type)
);

-- The relay's queue: only unsent rows, in order.
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
