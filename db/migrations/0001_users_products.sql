-- 0001: users (user-svc) and products with their stock (inventory-svc).
-- Ids are short strings chosen by the shop ("user123", "prod456"); money is
-- bigint minor units (cents), never numeric/float.

CREATE TABLE users (
    id          text        PRIMARY KEY CHECK (id <> '' AND length(id) <= 64),
    name        text        NOT NULL,
    email       text        NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE products (
    id           text        PRIMARY KEY CHECK (id <> '' AND length(id) <= 64),
    name         text        NOT NULL,
    price_cents  bigint      NOT NULL CHECK (price_cents > 0),
    -- The last line of defence against overselling: ReduceStock's
    -- conditional UPDATE (stock = stock - q WHERE stock >= q) is the first.
    stock        integer     NOT NULL CHECK (stock >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
