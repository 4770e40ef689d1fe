-- examples/partitioned: an append-mostly events table, one plain heap today,
-- to be range-partitioned by month on created_at.
--
-- Partitions for green: greenswap's target.ddl is one CREATE TABLE statement
-- (no room for CREATE TABLE ... PARTITION OF), so this example creates them
-- with an event trigger that fires when greenswap creates the partitioned
-- green table. See README.md: this is a workaround until the spec can list
-- partitions. Event triggers need a superuser.

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

-- Monthly partitions 2024-01 .. 2026-12, a default partition and the
-- secondary index, created in the same transaction as greenswap's green table.
CREATE FUNCTION public.events_green_partitions() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    m date;
BEGIN
    FOR r IN SELECT * FROM pg_event_trigger_ddl_commands()
             WHERE command_tag = 'CREATE TABLE' AND object_type = 'table'
    LOOP
        CONTINUE WHEN r.schema_name NOT LIKE 'gs\_%\_green'
            OR NOT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = r.objid)
            OR (SELECT relname FROM pg_class WHERE oid = r.objid) <> 'events';
        FOR m IN SELECT d::date FROM generate_series(date '2024-01-01', date '2026-12-01', interval '1 month') d
        LOOP
            EXECUTE format('CREATE TABLE %I.%I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
                           r.schema_name, 'events_' || to_char(m, 'YYYY_MM'), r.object_identity,
                           m, (m + interval '1 month')::date);
        END LOOP;
        EXECUTE format('CREATE TABLE %I.events_default PARTITION OF %s DEFAULT', r.schema_name, r.object_identity);
        -- Secondary indexes too: CREATE INDEX CONCURRENTLY (how greenswap
        -- builds target.indexes) is not supported on a partitioned table,
        -- and green is still empty here, so a plain CREATE INDEX is instant.
        EXECUTE format('CREATE INDEX events_account_idx ON %s (account_id)', r.object_identity);
    END LOOP;
END
$$;

CREATE EVENT TRIGGER events_green_partitions ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE')
    EXECUTE FUNCTION public.events_green_partitions();
