-- db/seed.sql: deterministic demo and benchmark data, loaded by
-- `shop-migrate seed` (in one transaction, after every migration applied).
--
-- Idempotent: every INSERT is ON CONFLICT DO NOTHING, so running it again
-- adds nothing and leaves existing rows (and their stock, which the demo
-- may have consumed) as they are. Nothing random: the same rows every time.
--
--   users     user1 .. user10000            (user123 is the demo user)
--   products  prod1 .. prod5000             (prod456 is the demo product)
-- Prices and stock vary by id so benchmarks spread over many rows; stock
-- starts at 100000+ so a benchmark run does not sell out.

-- The original design's example order: user123 buys 2 x prod456.
INSERT INTO users (id, name, email) VALUES
    ('user123', 'Demo User', 'user123@example.com')
ON CONFLICT DO NOTHING;

INSERT INTO products (id, name, price_cents, stock) VALUES
    ('prod456', 'Demo Widget', 4999, 1000000)
ON CONFLICT DO NOTHING;

INSERT INTO users (id, name, email)
SELECT 'user' || i, 'User ' || i, 'user' || i || '@example.com'
FROM generate_series(1, 10000) AS i
ON CONFLICT DO NOTHING;

INSERT INTO products (id, name, price_cents, stock)
SELECT 'prod' || i,
       'Product ' || i,
       199 + (i * 7907) % 49801,       -- 1.99 .. 500.00
       100000 + (i * 7919) % 900001    -- 100000 .. 1000000
FROM generate_series(1, 5000) AS i
ON CONFLICT DO NOTHING;
