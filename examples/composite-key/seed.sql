-- examples/composite-key: a multi-tenant documents table keyed by a global
-- id, to be re-keyed by (tenant_id, id) so each tenant's rows cluster
-- together in the primary key index.

CREATE TABLE documents (
    id         bigserial PRIMARY KEY,
    tenant_id  integer NOT NULL,
    title      text NOT NULL,
    body       text,
    amount     integer NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO documents (tenant_id, title, body, amount, updated_at)
SELECT 1 + (g * 7919) % 200,
       'document ' || g,
       CASE WHEN g % 5 = 0 THEN NULL ELSE repeat(md5(g::text), 1 + g % 4) END,
       g % 1000,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute'
FROM generate_series(1, 200000) g;

CREATE INDEX documents_tenant_idx ON documents (tenant_id);
