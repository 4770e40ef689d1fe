package shadow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/spec"
)

var catalogRoleSeq atomic.Int64

// newCatalogRole creates a cluster-wide role with a name unique to this test
// and drops it (and its privileges in dsn's database) at cleanup. Register it
// after NewDB so it runs before the database is dropped.
func newCatalogRole(t *testing.T, dsn string) string {
	t.Helper()
	role := fmt.Sprintf("gs_cat_reader_%d_%d", os.Getpid(), catalogRoleSeq.Add(1))
	pgtest.Exec(t, dsn, `CREATE ROLE `+pgx.Identifier{role}.Sanitize()+` NOLOGIN`)
	t.Cleanup(func() {
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Errorf("drop role %s: %v", role, err)
			return
		}
		defer conn.Close(ctx)
		r := pgx.Identifier{role}.Sanitize()
		if _, err := conn.Exec(ctx, `DROP OWNED BY `+r+`; DROP ROLE `+r); err != nil {
			t.Errorf("drop role %s: %v", role, err)
		}
	})
	return role
}

const catalogSchema = `
CREATE SCHEMA app;
CREATE TABLE app.customers (id int PRIMARY KEY, name text);
INSERT INTO app.customers SELECT g, 'c' || g FROM generate_series(1, 5) g;
ANALYZE app.customers;

CREATE TABLE app.orders (
    id          serial PRIMARY KEY,
    ext_id      bigint GENERATED ALWAYS AS IDENTITY,
    customer_id int REFERENCES app.customers (id),
    gone        int,
    email       text COLLATE "C" NOT NULL DEFAULT 'none@invalid',
    amount      numeric(12,2) NOT NULL DEFAULT 0,
    cents       bigint GENERATED ALWAYS AS ((amount * 100)::bigint) STORED,
    status      text DEFAULT 'new',
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT orders_amount_check CHECK (amount >= 0),
    CONSTRAINT orders_email_key UNIQUE (email)
);
ALTER TABLE app.orders DROP COLUMN gone;
ALTER TABLE app.orders ADD CONSTRAINT orders_status_check CHECK (status <> '') NOT VALID;
ALTER TABLE app.orders REPLICA IDENTITY FULL;
CREATE INDEX orders_lower_email_idx ON app.orders (lower(email));
CREATE INDEX orders_new_idx ON app.orders (created_at, id) WHERE status = 'new';
CREATE INDEX orders_customer_idx ON app.orders (customer_id) INCLUDE (amount);
COMMENT ON TABLE app.orders IS 'all orders';
COMMENT ON COLUMN app.orders.email IS 'buyer email';
INSERT INTO app.orders (customer_id, email, amount) VALUES (1, 'a@x', 1.5), (2, 'b@x', 2), (NULL, 'c@x', 0);

CREATE TABLE app.order_items (
    order_id int,
    line     int,
    qty      int NOT NULL,
    PRIMARY KEY (order_id, line)
);
ALTER TABLE app.order_items ADD CONSTRAINT order_items_order_fk
    FOREIGN KEY (order_id) REFERENCES app.orders (id) NOT VALID;
-- self-reference: an FK on the table's own index must not show as its constraint
CREATE TABLE app.nodes (id int PRIMARY KEY, parent int REFERENCES app.nodes (id));

CREATE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
CREATE TRIGGER orders_audit BEFORE UPDATE ON app.orders FOR EACH ROW EXECUTE FUNCTION app.touch();
CREATE TRIGGER orders_off AFTER INSERT ON app.orders FOR EACH STATEMENT EXECUTE FUNCTION app.touch();
ALTER TABLE app.orders DISABLE TRIGGER orders_off;
CREATE TRIGGER gs_sync_orders_v2 AFTER INSERT ON app.orders FOR EACH ROW EXECUTE FUNCTION app.touch();

CREATE VIEW app.v1 AS SELECT id, email FROM app.orders;
CREATE VIEW app.v2 AS SELECT id FROM app.v1;
CREATE VIEW app.v3 AS SELECT v2.id FROM app.v2 JOIN app.orders USING (id);
CREATE MATERIALIZED VIEW app.mv AS SELECT count(*) AS n FROM app.orders;
CREATE VIEW app.unrelated AS SELECT id FROM app.customers;

ALTER TABLE app.orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.orders FORCE ROW LEVEL SECURITY;
CREATE POLICY orders_all ON app.orders USING (true) WITH CHECK (amount >= 0);
CREATE POLICY "Orders visible" ON app.orders AS RESTRICTIVE FOR SELECT TO %[1]s, CURRENT_USER
    USING (status <> 'hidden');

GRANT SELECT, INSERT ON app.orders TO %[1]s WITH GRANT OPTION;
GRANT SELECT ON app.orders TO PUBLIC;

CREATE PUBLICATION pub_orders FOR TABLE app.orders;
CREATE PUBLICATION pub_all FOR ALL TABLES;
CREATE PUBLICATION pub_customers FOR TABLE app.customers;

CREATE TABLE app.events (
    id bigint,
    at date,
    payload text,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE app.events_2024 PARTITION OF app.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE app.events_2025 PARTITION OF app.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO app.events SELECT g, date '2024-06-01' + g * 30, 'x' FROM generate_series(1, 10) g;
CREATE PUBLICATION pub_events FOR TABLE app.events;
CREATE TABLE app.event_refs (
    id bigint, at date,
    CONSTRAINT event_refs_event_fk FOREIGN KEY (id, at) REFERENCES app.events
);
`

type catalogFixture struct {
	pool  *pgxpool.Pool
	dsn   string
	role  string
	major int
	owner string
}

func newCatalogFixture(t *testing.T) *catalogFixture {
	t.Helper()
	pool, dsn := pgtest.NewPool(t)
	f := &catalogFixture{pool: pool, dsn: dsn, major: pgtest.ServerMajor(t)}
	f.role = newCatalogRole(t, dsn)
	pgtest.Exec(t, dsn, fmt.Sprintf(catalogSchema, pgx.Identifier{f.role}.Sanitize()))
	if f.major >= 15 {
		pgtest.Exec(t, dsn, `CREATE PUBLICATION pub_schema FOR TABLES IN SCHEMA app`)
	}
	if err := pool.QueryRow(t.Context(), `SELECT current_user::text`).Scan(&f.owner); err != nil {
		t.Fatal(err)
	}
	return f
}

// load runs LoadTable inside a REPEATABLE READ transaction, as callers do.
func (f *catalogFixture) load(t *testing.T, schema, name string) *Table {
	t.Helper()
	ctx := t.Context()
	tx, err := f.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	tbl, err := LoadTable(ctx, tx, spec.QualifiedName{Schema: schema, Name: name})
	if err != nil {
		t.Fatalf("LoadTable(%s.%s): %v", schema, name, err)
	}
	if testing.Verbose() {
		b, _ := json.MarshalIndent(tbl, "", "  ")
		t.Logf("%s.%s:\n%s", schema, name, b)
	}
	return tbl
}

func eq[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		g, _ := json.MarshalIndent(got, "", "  ")
		w, _ := json.MarshalIndent(want, "", "  ")
		t.Errorf("%s:\n got: %s\nwant: %s", what, g, w)
	}
}

func (f *catalogFixture) pubs(names ...string) []string {
	// Sorted: pub_all, pub_customers, pub_events, pub_orders, pub_schema.
	if f.major >= 15 {
		names = append(names, "pub_schema")
	}
	return names
}

func TestLoadTable(t *testing.T) {
	t.Parallel()
	f := newCatalogFixture(t)

	t.Run("orders", func(t *testing.T) {
		tbl := f.load(t, "app", "orders")
		var oid uint32
		if err := f.pool.QueryRow(t.Context(), `SELECT 'app.orders'::regclass::oid`).Scan(&oid); err != nil {
			t.Fatal(err)
		}
		eq(t, "OID", tbl.OID, oid)
		eq(t, "Name", tbl.Name, spec.QualifiedName{Schema: "app", Name: "orders"})
		eq(t, "Owner", tbl.Owner, f.owner)
		eq(t, "Kind", tbl.Kind, "r")
		eq(t, "Comment", tbl.Comment, "all orders")

		eq(t, "Columns", tbl.Columns, []Column{
			{Num: 1, Name: "id", Type: "integer", TypeOID: 23, NotNull: true,
				Default: "nextval('app.orders_id_seq'::regclass)"},
			{Num: 2, Name: "ext_id", Type: "bigint", TypeOID: 20, NotNull: true, Identity: "a"},
			{Num: 3, Name: "customer_id", Type: "integer", TypeOID: 23},
			{Num: 5, Name: "email", Type: "text", TypeOID: 25, NotNull: true,
				Default: "'none@invalid'::text", Collation: "C", Comment: "buyer email"},
			{Num: 6, Name: "amount", Type: "numeric(12,2)", TypeOID: 1700, NotNull: true, Default: "0"},
			{Num: 7, Name: "cents", Type: "bigint", TypeOID: 20, Generated: "s",
				GenerationExpr: "((amount * (100)::numeric))::bigint"},
			{Num: 8, Name: "status", Type: "text", TypeOID: 25, Default: "'new'::text"},
			{Num: 9, Name: "created_at", Type: "timestamp with time zone", TypeOID: 1184, NotNull: true,
				Default: "now()"},
		})
		if c := tbl.Column("email"); c == nil || c.Num != 5 {
			t.Errorf("Column(email) = %+v", c)
		}

		pk := Index{Name: "orders_pkey", Columns: []string{"id"}, Primary: true, Unique: true, Valid: true,
			Def:        "CREATE UNIQUE INDEX orders_pkey ON app.orders USING btree (id)",
			Constraint: "orders_pkey"}
		if tbl.PrimaryKey == nil {
			t.Fatal("PrimaryKey is nil")
		}
		eq(t, "PrimaryKey", *tbl.PrimaryKey, pk)
		eq(t, "Indexes", tbl.Indexes, []Index{
			pk,
			{Name: "orders_customer_idx", Columns: []string{"customer_id"}, Valid: true,
				Def: "CREATE INDEX orders_customer_idx ON app.orders USING btree (customer_id) INCLUDE (amount)"},
			{Name: "orders_email_key", Columns: []string{"email"}, Unique: true, Valid: true,
				Def:        "CREATE UNIQUE INDEX orders_email_key ON app.orders USING btree (email)",
				Constraint: "orders_email_key"},
			{Name: "orders_lower_email_idx", Columns: []string{}, Valid: true, Expression: true,
				Def: "CREATE INDEX orders_lower_email_idx ON app.orders USING btree (lower(email))"},
			{Name: "orders_new_idx", Columns: []string{"created_at", "id"}, Valid: true, Partial: true,
				Def: "CREATE INDEX orders_new_idx ON app.orders USING btree (created_at, id) WHERE (status = 'new'::text)"},
		})

		eq(t, "Constraints", tbl.Constraints, []Constraint{
			{Name: "orders_amount_check", Type: "c", Def: "CHECK ((amount >= (0)::numeric))", Validated: true},
			{Name: "orders_email_key", Type: "u", Def: "UNIQUE (email)", Validated: true},
			{Name: "orders_status_check", Type: "c", Def: "CHECK ((status <> ''::text)) NOT VALID", Validated: false},
		})
		eq(t, "ForeignKeys", tbl.ForeignKeys, []ForeignKey{{
			Name:  "orders_customer_id_fkey",
			Table: spec.QualifiedName{Schema: "app", Name: "orders"}, Columns: []string{"customer_id"},
			RefTable: spec.QualifiedName{Schema: "app", Name: "customers"}, RefColumns: []string{"id"},
			Def:       "FOREIGN KEY (customer_id) REFERENCES app.customers(id)",
			Validated: true,
		}})
		eq(t, "ReferencedBy", tbl.ReferencedBy, []ForeignKey{{
			Name:  "order_items_order_fk",
			Table: spec.QualifiedName{Schema: "app", Name: "order_items"}, Columns: []string{"order_id"},
			RefTable: spec.QualifiedName{Schema: "app", Name: "orders"}, RefColumns: []string{"id"},
			Def:       "FOREIGN KEY (order_id) REFERENCES app.orders(id) NOT VALID",
			Validated: false,
		}})

		eq(t, "Triggers", tbl.Triggers, []Trigger{
			{Name: "orders_audit", Enabled: "O",
				Def: "CREATE TRIGGER orders_audit BEFORE UPDATE ON app.orders FOR EACH ROW EXECUTE FUNCTION app.touch()"},
			{Name: "orders_off", Enabled: "D",
				Def: "CREATE TRIGGER orders_off AFTER INSERT ON app.orders FOR EACH STATEMENT EXECUTE FUNCTION app.touch()"},
		})

		type viewSummary struct {
			Name         string
			Materialized bool
			Depth        int
		}
		var views []viewSummary
		for _, v := range tbl.DependentViews {
			views = append(views, viewSummary{v.Name.String(), v.Materialized, v.Depth})
			if !strings.Contains(v.Def, "SELECT") {
				t.Errorf("view %s: Def = %q", v.Name, v.Def)
			}
		}
		eq(t, "DependentViews", views, []viewSummary{
			{"app.mv", true, 1},
			{"app.v1", false, 1},
			{"app.v2", false, 2},
			{"app.v3", false, 3}, // reads orders directly too; Depth is the longest path
		})
		if len(tbl.DependentViews) > 0 && !strings.Contains(tbl.DependentViews[0].Def, "count(*)") {
			t.Errorf("mv Def = %q", tbl.DependentViews[0].Def)
		}

		eq(t, "RLSEnabled", tbl.RLSEnabled, true)
		eq(t, "RLSForced", tbl.RLSForced, true)
		eq(t, "Policies", tbl.Policies, []Policy{
			{Name: "Orders visible", Cmd: "SELECT",
				Def: `CREATE POLICY "Orders visible" ON "app"."orders" AS RESTRICTIVE FOR SELECT TO "` + f.role +
					`", "` + f.owner + `" USING ((status <> 'hidden'::text))`,
				Roles: []string{f.role, f.owner}, Using: "(status <> 'hidden'::text)", Columns: []string{"status"}},
			{Name: "orders_all", Cmd: "ALL",
				Def:        `CREATE POLICY "orders_all" ON "app"."orders" AS PERMISSIVE FOR ALL TO PUBLIC USING (true) WITH CHECK ((amount >= (0)::numeric))`,
				Permissive: true, Roles: []string{""}, Using: "true", Check: "(amount >= (0)::numeric)", Columns: []string{"amount"}},
		})

		var wantGrants []Grant
		for _, p := range []string{"DELETE", "INSERT", "REFERENCES", "SELECT", "TRIGGER", "TRUNCATE", "UPDATE"} {
			wantGrants = append(wantGrants, Grant{Grantee: f.owner, Privilege: p})
		}
		if f.major >= 17 {
			wantGrants = append(wantGrants, Grant{Grantee: f.owner, Privilege: "MAINTAIN"})
		}
		wantGrants = append(wantGrants,
			Grant{Grantee: "PUBLIC", Privilege: "SELECT"},
			Grant{Grantee: f.role, Privilege: "INSERT", Grantable: true},
			Grant{Grantee: f.role, Privilege: "SELECT", Grantable: true},
		)
		// The query orders by grantee then privilege; mirror that ordering.
		sortGrants(wantGrants)
		eq(t, "Grants", tbl.Grants, wantGrants)

		eq(t, "OwnedSequences", tbl.OwnedSequences, []Sequence{
			{Name: spec.QualifiedName{Schema: "app", Name: "orders_id_seq"}, Column: "id", Identity: false},
			{Name: spec.QualifiedName{Schema: "app", Name: "orders_ext_id_seq"}, Column: "ext_id", Identity: true},
		})
		eq(t, "Publications", tbl.Publications, f.pubs("pub_all", "pub_orders"))
		eq(t, "PartitionKey", tbl.PartitionKey, "")
		if tbl.PartitionOf != nil {
			t.Errorf("PartitionOf = %v, want nil", *tbl.PartitionOf)
		}
		eq(t, "ReplicaIdentity", tbl.ReplicaIdentity, "f")
		if tbl.TotalBytes <= 0 {
			t.Errorf("TotalBytes = %d, want > 0", tbl.TotalBytes)
		}
		eq(t, "RowEstimate (never analyzed: exact count)", tbl.RowEstimate, int64(3))
	})

	t.Run("customers", func(t *testing.T) {
		tbl := f.load(t, "app", "customers")
		eq(t, "RowEstimate (analyzed: reltuples)", tbl.RowEstimate, int64(5))
		eq(t, "Grants (relacl NULL)", tbl.Grants, []Grant(nil))
		eq(t, "Policies", tbl.Policies, []Policy(nil))
		eq(t, "RLSEnabled", tbl.RLSEnabled, false)
		eq(t, "ReplicaIdentity", tbl.ReplicaIdentity, "d")
		eq(t, "Comment", tbl.Comment, "")
		eq(t, "OwnedSequences", tbl.OwnedSequences, []Sequence(nil))
		eq(t, "Triggers", tbl.Triggers, []Trigger(nil))
		eq(t, "Publications", tbl.Publications, f.pubs("pub_all", "pub_customers"))
		eq(t, "ReferencedBy", len(tbl.ReferencedBy), 1)
		var views []string
		for _, v := range tbl.DependentViews {
			views = append(views, fmt.Sprintf("%s/%d", v.Name, v.Depth))
		}
		eq(t, "DependentViews", views, []string{"app.unrelated/1"})
	})

	t.Run("composite primary key", func(t *testing.T) {
		tbl := f.load(t, "app", "order_items")
		if tbl.PrimaryKey == nil {
			t.Fatal("PrimaryKey is nil")
		}
		eq(t, "PrimaryKey.Columns", tbl.PrimaryKey.Columns, []string{"order_id", "line"})
		eq(t, "PrimaryKey.Constraint", tbl.PrimaryKey.Constraint, "order_items_pkey")
		eq(t, "Indexes", len(tbl.Indexes), 1)
		eq(t, "ForeignKeys", len(tbl.ForeignKeys), 1)
		eq(t, "ReferencedBy", tbl.ReferencedBy, []ForeignKey(nil))
		eq(t, "RowEstimate (empty, never analyzed)", tbl.RowEstimate, int64(0))
		eq(t, "NOT NULL", []bool{tbl.Columns[0].NotNull, tbl.Columns[1].NotNull, tbl.Columns[2].NotNull},
			[]bool{true, true, true})
	})

	t.Run("self reference", func(t *testing.T) {
		tbl := f.load(t, "app", "nodes")
		eq(t, "PrimaryKey.Constraint", tbl.PrimaryKey.Constraint, "nodes_pkey")
		eq(t, "ForeignKeys", len(tbl.ForeignKeys), 1)
		eq(t, "ReferencedBy", len(tbl.ReferencedBy), 1)
		eq(t, "self FK", tbl.ForeignKeys[0].RefTable, spec.QualifiedName{Schema: "app", Name: "nodes"})
	})

	t.Run("partitioned", func(t *testing.T) {
		tbl := f.load(t, "app", "events")
		eq(t, "Kind", tbl.Kind, "p")
		eq(t, "PartitionKey", tbl.PartitionKey, "RANGE (at)")
		if tbl.PartitionOf != nil {
			t.Errorf("PartitionOf = %v, want nil", *tbl.PartitionOf)
		}
		if tbl.PrimaryKey == nil {
			t.Fatal("PrimaryKey is nil")
		}
		eq(t, "PrimaryKey.Columns", tbl.PrimaryKey.Columns, []string{"id", "at"})
		eq(t, "Publications", tbl.Publications, f.pubs("pub_all", "pub_events"))
		eq(t, "ReferencedBy", tbl.ReferencedBy, []ForeignKey{{
			Name:  "event_refs_event_fk",
			Table: spec.QualifiedName{Schema: "app", Name: "event_refs"}, Columns: []string{"id", "at"},
			RefTable: spec.QualifiedName{Schema: "app", Name: "events"}, RefColumns: []string{"id", "at"},
			Def:       "FOREIGN KEY (id, at) REFERENCES app.events(id, at)",
			Validated: true,
		}})
		if tbl.TotalBytes <= 0 {
			t.Errorf("TotalBytes = %d, want > 0 (sum over partitions)", tbl.TotalBytes)
		}
		eq(t, "RowEstimate (sum over partitions)", tbl.RowEstimate, int64(10))
	})

	t.Run("partition", func(t *testing.T) {
		tbl := f.load(t, "app", "events_2024")
		eq(t, "Kind", tbl.Kind, "r")
		eq(t, "PartitionKey", tbl.PartitionKey, "")
		if tbl.PartitionOf == nil {
			t.Fatal("PartitionOf is nil")
		}
		eq(t, "PartitionOf", *tbl.PartitionOf, spec.QualifiedName{Schema: "app", Name: "events"})
		eq(t, "Publications (through the parent)", tbl.Publications, f.pubs("pub_all", "pub_events"))
		eq(t, "ReferencedBy (clones of the parent's FK are skipped)", tbl.ReferencedBy, []ForeignKey(nil))
		if tbl.PrimaryKey == nil {
			t.Fatal("PrimaryKey is nil")
		}
		eq(t, "PrimaryKey.Columns", tbl.PrimaryKey.Columns, []string{"id", "at"})
		// 2024-07-01 .. 2024-12-28: g*30 days after June 1 for g = 1..7
		eq(t, "RowEstimate", tbl.RowEstimate, int64(7))
	})

	t.Run("invalid index and identity by default", func(t *testing.T) {
		ctx := t.Context()
		pgtest.Exec(t, f.dsn, `CREATE TABLE app.dups (id int GENERATED BY DEFAULT AS IDENTITY, x int);
			INSERT INTO app.dups (x) VALUES (1), (1)`)
		// A failed CREATE INDEX CONCURRENTLY leaves an invalid index behind.
		if _, err := f.pool.Exec(ctx, `CREATE UNIQUE INDEX CONCURRENTLY dups_x_idx ON app.dups (x)`); err == nil {
			t.Fatal("CREATE UNIQUE INDEX CONCURRENTLY on duplicates succeeded")
		}
		tbl := f.load(t, "app", "dups")
		if tbl.PrimaryKey != nil {
			t.Errorf("PrimaryKey = %+v, want nil", *tbl.PrimaryKey)
		}
		eq(t, "Indexes", tbl.Indexes, []Index{{Name: "dups_x_idx", Columns: []string{"x"}, Unique: true, Valid: false,
			Def: "CREATE UNIQUE INDEX dups_x_idx ON app.dups USING btree (x)"}})
		eq(t, "Identity", tbl.Columns[0].Identity, "d")
		eq(t, "NotNull", tbl.Columns[0].NotNull, true)
		eq(t, "OwnedSequences", tbl.OwnedSequences, []Sequence{
			{Name: spec.QualifiedName{Schema: "app", Name: "dups_id_seq"}, Column: "id", Identity: true}})
		eq(t, "RowEstimate", tbl.RowEstimate, int64(2))
	})

	t.Run("errors", func(t *testing.T) {
		ctx := t.Context()
		_, err := LoadTable(ctx, f.pool, spec.QualifiedName{Schema: "app", Name: "nope"})
		if !errors.Is(err, ErrTableNotFound) {
			t.Errorf("missing table: err = %v, want ErrTableNotFound", err)
		}
		_, err = LoadTable(ctx, f.pool, spec.QualifiedName{Schema: "nope", Name: "orders"})
		if !errors.Is(err, ErrTableNotFound) {
			t.Errorf("missing schema: err = %v, want ErrTableNotFound", err)
		}
		_, err = LoadTable(ctx, f.pool, spec.QualifiedName{Schema: "app", Name: "Orders"})
		if !errors.Is(err, ErrTableNotFound) {
			t.Errorf("names are exact, not folded: err = %v, want ErrTableNotFound", err)
		}
		for _, c := range []struct{ name, what string }{
			{"v1", "is a view"},
			{"mv", "is a materialized view"},
			{"orders_id_seq", "is a sequence"},
			{"orders_pkey", "is an index"},
		} {
			_, err = LoadTable(ctx, f.pool, spec.QualifiedName{Schema: "app", Name: c.name})
			if !errors.Is(err, ErrNotATable) || errors.Is(err, ErrTableNotFound) || err == nil ||
				!strings.Contains(err.Error(), "app."+c.name+" "+c.what) {
				t.Errorf("%s: err = %v, want ErrNotATable saying %q", c.name, err, c.what)
			}
		}
	})
}

func sortGrants(g []Grant) {
	for i := 1; i < len(g); i++ {
		for j := i; j > 0 && grantLess(g[j], g[j-1]); j-- {
			g[j], g[j-1] = g[j-1], g[j]
		}
	}
}

func grantLess(a, b Grant) bool {
	if a.Grantee != b.Grantee {
		return a.Grantee < b.Grantee
	}
	return a.Privilege < b.Privilege
}
