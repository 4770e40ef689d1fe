-- The orders-with-items example: orders.id is an int about to run out, and
-- order_items.order_id references it, so both widen together.
-- 20,000 orders with 1 to 3 items each.
CREATE TABLE public.orders (
    id         serial PRIMARY KEY,
    email      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.order_items (
    id       serial PRIMARY KEY,
    order_id int NOT NULL REFERENCES public.orders (id) ON DELETE CASCADE,
    sku      text NOT NULL,
    qty      int NOT NULL CHECK (qty > 0)
);
CREATE INDEX order_items_order_id_idx ON public.order_items (order_id);

INSERT INTO public.orders (email, created_at)
SELECT 'customer' || (g % 5000) || '@example.com', timestamptz '2024-01-01' + g * interval '5 minutes'
  FROM generate_series(1, 20000) AS g;

INSERT INTO public.order_items (order_id, sku, qty)
SELECT o.id, 'sku-' || ((o.id * 7 + n) % 500), 1 + (o.id + n) % 4
  FROM public.orders o, generate_series(1, 1 + o.id % 3) AS n;
