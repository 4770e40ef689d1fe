-- examples/partitioned: an append-mostly events table, one plain heap today,
-- to be range-partitioned by month on created_at. The partitions and the
-- secondary index of the new shape are in spec.yaml (target.partitions,
-- target.indexes): nothing here knows about greenswap.

CREATE TABLE events (
    id         bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    kind       text NOT NULL,
    account_id integer NOT NULL,
    amount     integer NOT NULL DEFAULT 0,
    payload    jsonb
);

INSERT INTO events (created_at, kind, account_id, amount, payload)
SELECT timestamptz '2024-01-01 00:00:00+00' + (g * interval '97 seconds'),
       (ARRAY['signup', 'login', 'purchase', 'refund'])[1 + g % 4],
       1 + (g * 7919) % 5000,
       g % 1000,
       CASE WHEN g % 3 = 0 THEN jsonb_build_object('n', g) END
FROM generate_series(1, 200000) g;

CREATE INDEX events_account_idx ON events (account_id);
