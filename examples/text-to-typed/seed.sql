-- examples/text-to-typed: payments whose amount was stored as text by an
-- early version of the app ('12.50', ' 7', '0.5'), to become numeric(12,2).

CREATE TABLE payments (
    id        serial PRIMARY KEY,
    reference text NOT NULL,
    amount    text NOT NULL,
    currency  text NOT NULL DEFAULT 'EUR',
    paid_at   timestamptz
);

INSERT INTO payments (reference, amount, currency, paid_at)
SELECT 'PAY-' || lpad(g::text, 8, '0'),
       CASE g % 4
           WHEN 0 THEN ((g % 100000) / 100.0)::text   -- 12.34
           WHEN 1 THEN (g % 5000)::text                -- 42
           WHEN 2 THEN ' ' || ((g % 700) / 10.0)::text -- ' 3.5' (stray space)
           ELSE ((g % 3000) / 100.0)::numeric(10,2)::text
       END,
       (ARRAY['EUR', 'USD', 'GBP'])[1 + g % 3],
       CASE WHEN g % 10 = 0 THEN NULL ELSE timestamptz '2024-01-01 00:00:00+00' + g * interval '30 seconds' END
FROM generate_series(1, 200000) g;
