-- The orders example: today's table, as an application created it years ago.
-- 100,000 rows; about 1 in 20 has no email.
CREATE TABLE public.orders (
    id         serial PRIMARY KEY,
    email      text,
    amount     int NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO public.orders (email, amount, created_at)
SELECT CASE WHEN g % 20 = 0 THEN NULL ELSE 'customer' || (g % 5000) || '@example.com' END,
       (g * 37) % 100000,
       timestamptz '2024-01-01' + g * interval '5 minutes'
  FROM generate_series(1, 100000) AS g;
