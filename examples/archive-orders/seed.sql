-- An orders table whose archived rows dwarf the live ones: split it
-- horizontally into orders (live) and orders_archive (spec.yaml).
CREATE TABLE orders (
    id          bigserial PRIMARY KEY,
    customer_id bigint NOT NULL,
    status      text NOT NULL DEFAULT 'open',
    total       numeric(12,2) NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO orders (customer_id, status, total, created_at)
SELECT g % 97, CASE WHEN g % 3 = 0 THEN 'archived' WHEN g % 3 = 1 THEN 'open' ELSE 'shipped' END,
       (g % 500) + 0.25, '2026-01-01'::timestamptz + g * interval '1 hour'
  FROM generate_series(1, 3000) g;
ANALYZE orders;
