package runner

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
)

// featuresSchema: orders with an identity key, an FK to a parent table
// (green's DDL lacks it), a child table with an FK,
// a dependent view, a user trigger writing an audit table, and RLS with a
// policy for a non-owner role. %[1]s is that role.
const featuresSchema = `
CREATE TABLE customers (id int PRIMARY KEY);
INSERT INTO customers SELECT generate_series(1, 5);
CREATE TABLE orders (
	id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	owner_name  text NOT NULL DEFAULT current_user,
	email       text,
	amount      int NOT NULL,
	customer_id int NOT NULL DEFAULT 1 REFERENCES customers (id)
);
COMMENT ON TABLE orders IS 'the orders';
COMMENT ON COLUMN orders.email IS 'who to mail';
CREATE TABLE items (id serial PRIMARY KEY, order_id bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE, qty int);
CREATE TABLE audit (n bigserial PRIMARY KEY, op text NOT NULL, order_id bigint, side text NOT NULL);
CREATE FUNCTION audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.audit (op, order_id, side) VALUES (TG_OP, CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END, TG_TABLE_SCHEMA);
	RETURN NULL;
END$$;
CREATE TRIGGER orders_audit AFTER INSERT OR UPDATE OR DELETE ON orders FOR EACH ROW EXECUTE FUNCTION audit_fn();
CREATE VIEW big_orders AS SELECT id, email, amount FROM orders WHERE amount >= 100;
COMMENT ON VIEW big_orders IS 'orders of 100 and more';
ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
CREATE POLICY own ON orders USING (owner_name = current_user);
CREATE ROLE %[1]s LOGIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO %[1]s;
GRANT SELECT ON big_orders TO %[1]s;
GRANT SELECT, INSERT, DELETE ON items TO %[1]s;
GRANT USAGE ON SEQUENCE items_id_seq TO %[1]s;
GRANT INSERT ON audit TO %[1]s;
GRANT USAGE ON SEQUENCE audit_n_seq TO %[1]s;
INSERT INTO orders (owner_name, email, amount) SELECT CASE WHEN g %% 2 = 0 THEN '%[1]s' ELSE 'someone' END,
	CASE WHEN g %% 5 = 0 THEN NULL ELSE 'u' || g || '@x' END, g * 10 FROM generate_series(1, 40) g;
INSERT INTO items (order_id, qty) SELECT id, 1 FROM orders;
ANALYZE orders;
`

const featuresSpec = `
name: feat
table: public.orders
target:
  ddl: |
    CREATE TABLE orders (
      id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      owner_name text NOT NULL DEFAULT current_user,
      email      text NOT NULL,
      amount     numeric(12,2) NOT NULL,
      customer_id int NOT NULL DEFAULT 1
    )
forward:
  email: coalesce(email, 'unknown@invalid')
reverse:
  amount: round(amount)::int
`

// TestCutoverFeaturesBehaveTheSame: an FK from a child table, a dependent
// view, a user trigger, an identity column and RLS with a non-owner role
// behave the same before cutover, after it, after rollback, after a second
// cutover and after finalize.
func TestCutoverFeaturesBehaveTheSame(t *testing.T) {
	if pgtest.ServerMajor(t) < 15 {
		t.Skip("RLS through the app-name view needs security_invoker (PostgreSQL 15+)")
	}
	pool, dsn := pgtest.NewPool(t)
	ctx := context.Background()
	role := "co_r_" + strings.TrimPrefix(coStr(t, pool, `SELECT current_database()`), "gs_test_")
	pgtest.Exec(t, dsn, fmt.Sprintf(featuresSchema, role))
	t.Cleanup(func() { coDropRole(dsn, role) })
	env := coEnv(t, dsn)
	spec := coSync(t, env, featuresSpec)
	n := spec.Name
	out := &coBuffer{}
	opts := SwapCommandOptions{Out: out}

	// check runs the same scenario in every phase; schema-qualified names
	// that exist in the phase are passed in.
	check := func(phase string, versionSchemas bool) {
		t.Helper()
		as := coConn(t, dsn, map[string]string{"application_name": "app"})
		coExec(t, as, "SET ROLE "+role)
		// RLS: the role sees its own rows only, through the app name.
		mine := coInt(t, as, `SELECT count(*) FROM orders`)
		all := coInt(t, pool, `SELECT count(*) FROM orders WHERE owner_name = $1`, role)
		if mine != all {
			t.Errorf("%s: RLS: the role sees %d rows, owns %d", phase, mine, all)
		}
		if others := coInt(t, as, `SELECT count(*) FROM orders WHERE owner_name <> current_user`); others != 0 {
			t.Errorf("%s: RLS: the role sees %d rows of others", phase, others)
		}
		// Identity: one sequence whatever the side; the trigger fires once.
		maxID := coInt(t, pool, `SELECT max(id) FROM orders`)
		audit0 := coInt(t, pool, `SELECT count(*) FROM audit`)
		id := coInt(t, as, `INSERT INTO orders (email, amount) VALUES ('r@x', 150) RETURNING id`)
		if id <= maxID {
			t.Errorf("%s: identity gave %d, not past %d", phase, id, maxID)
		}
		if d := coInt(t, pool, `SELECT count(*) FROM audit`) - audit0; d != 1 {
			t.Errorf("%s: user trigger fired %d times for one insert", phase, d)
		}
		// Explicit ids are refused as before (GENERATED ALWAYS), before cutover and after finalize.
		_, err := as.Exec(ctx, `INSERT INTO orders (id, email, amount) VALUES (-1, 'x@x', 1)`)
		if phase == "before cutover" || phase == "after finalize" {
			if db.SQLState(err) != "428C9" {
				t.Errorf("%s: explicit id: got %v, want generated-always error", phase, err)
			}
		}
		// FK: a child row for the new order is accepted, one for no order refused.
		coExec(t, as, `INSERT INTO items (order_id, qty) VALUES ($1, 2)`, id)
		if _, err := as.Exec(ctx, `INSERT INTO items (order_id, qty) VALUES (-42, 1)`); db.SQLState(err) != "23503" {
			t.Errorf("%s: child row without parent: got %v, want a foreign key violation", phase, err)
		}
		// FK to the parent: refused for an unknown customer.
		if _, err := as.Exec(ctx, `INSERT INTO orders (email, amount, customer_id) VALUES ('c@x', 1, 99)`); db.SQLState(err) != "23503" {
			t.Errorf("%s: order of an unknown customer: got %v, want a foreign key violation", phase, err)
		}
		// Dependent view sees the new row.
		if c := coInt(t, as, `SELECT count(*) FROM big_orders WHERE id = $1`, id); c != 1 {
			t.Errorf("%s: big_orders does not show the new order", phase)
		}
		if versionSchemas {
			for _, schema := range []string{"gs_feat_blue", "gs_feat_green"} {
				a0 := coInt(t, pool, `SELECT count(*) FROM audit`)
				vs := coConn(t, dsn, map[string]string{"search_path": schema + ",public", "application_name": "greenswap-test"})
				coExec(t, vs, `UPDATE orders SET email = 'v@x' WHERE id = $1`, id)
				if d := coInt(t, pool, `SELECT count(*) FROM audit`) - a0; d != 1 {
					t.Errorf("%s: user trigger fired %d times for one update through %s", phase, d, schema)
				}
			}
		}
		// Delete cascades to the child.
		a0 := coInt(t, pool, `SELECT count(*) FROM audit`)
		coExec(t, as, `DELETE FROM orders WHERE id = $1`, id)
		if c := coInt(t, pool, `SELECT count(*) FROM items WHERE order_id = $1`, id); c != 0 {
			t.Errorf("%s: delete did not cascade to items (%d left)", phase, c)
		}
		if d := coInt(t, pool, `SELECT count(*) FROM audit`) - a0; d != 1 {
			t.Errorf("%s: user trigger fired %d times for one delete", phase, d)
		}
		if c := coInt(t, pool, `SELECT count(*) FROM audit WHERE side LIKE 'gs_feat_%' AND n > $1`, audit0); c != 0 && phase == "after finalize" {
			t.Errorf("%s: trigger fired on a version schema", phase)
		}
	}

	check("before cutover", true)
	// Green has blue's policy from the moment it exists: cutover adds none.
	if pol := coStr(t, pool, `SELECT coalesce(string_agg(polname, ','), '') FROM pg_policy WHERE polrelid = 'gs_feat_green.orders'::regclass`); pol != "own" {
		t.Errorf("green's policies before cutover: %q, want own", pol)
	}

	res, err := Cutover(ctx, env, n, CutoverOptions{SwapCommandOptions: opts})
	if err != nil {
		t.Fatalf("cutover: %v\n%s", err, out)
	}
	if !res.Plan.RowTypeChanged || res.Plan.ViewMode != "rebuild" || len(res.Plan.MovedFKs) != 1 || len(res.Plan.AddedFKs) != 1 ||
		len(res.Validations) != 2 || res.Validations[0].Error != "" || res.Validations[1].Error != "" || len(res.Plan.Policies) != 0 {
		t.Fatalf("cutover plan: %+v\nvalidations %+v\n%s", res.Plan, res.Validations, out)
	}
	if res.LockHold <= 0 || res.LockHoldMS <= 0 {
		t.Errorf("lock hold not measured: %v", res.LockHold)
	}
	t.Logf("cutover: locks held %.1f ms\n%s", res.LockHoldMS, out)
	check("after cutover", true)
	if side := coStr(t, pool, `SELECT primary_side FROM greenswap.migrations WHERE name = $1`, n); side != "green" {
		t.Errorf("primary_side = %s after cutover", side)
	}
	// The view reads green; the moved FK references green and is valid.
	if ref := coStr(t, pool, `SELECT confrelid::regclass::text FROM pg_constraint WHERE conrelid = 'items'::regclass AND contype = 'f'`); ref != "gs_feat_green.orders" {
		t.Errorf("items FK references %s after cutover", ref)
	}
	if v := coStr(t, pool, `SELECT string_agg(conname || ':' || convalidated, ',') FROM pg_constraint WHERE conrelid = 'gs_feat_green.orders'::regclass AND contype = 'f'`); v != "orders_customer_id_fkey:true" {
		t.Errorf("green's FKs after cutover: %s", v)
	}

	rb, err := Rollback(ctx, env, n, opts)
	if err != nil || rb.Kind != "swap" || rb.State != state.Synced {
		t.Fatalf("rollback: %v %+v\n%s", err, rb, out)
	}
	check("after rollback", true)
	if ref := coStr(t, pool, `SELECT confrelid::regclass::text FROM pg_constraint WHERE conrelid = 'items'::regclass AND contype = 'f'`); ref != "gs_feat_blue.orders" {
		t.Errorf("items FK references %s after rollback", ref)
	}
	coVerify(t, env, spec)

	if _, err := Cutover(ctx, env, n, CutoverOptions{SwapCommandOptions: opts}); err != nil {
		t.Fatalf("second cutover: %v\n%s", err, out)
	}
	check("after cutover again", true)

	fr, err := Finalize(ctx, env, n, FinalizeOptions{SwapCommandOptions: opts, QuietPeriod: -1, Yes: true})
	if err != nil {
		t.Fatalf("finalize: %v\n%s", err, out)
	}
	t.Logf("finalize: %+v", fr.Plan.Sequences)
	check("after finalize", false)

	var kind, identity string
	if err := pool.QueryRow(ctx, `SELECT c.relkind::text, a.attidentity::text FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
		WHERE c.oid = 'public.orders'::regclass AND a.attname = 'id'`).Scan(&kind, &identity); err != nil {
		t.Fatal(err)
	}
	if kind != "r" || identity != "a" {
		t.Errorf("after finalize: public.orders relkind %s, id identity %q; want a table with GENERATED ALWAYS", kind, identity)
	}
	if c := coInt(t, pool, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'gs_feat_%'`); c != 0 {
		t.Errorf("%d version schemas left after finalize", c)
	}
	if c := coStr(t, pool, `SELECT obj_description('public.orders'::regclass, 'pg_class')`); c != "the orders" {
		t.Errorf("table comment after finalize: %q", c)
	}
	if c := coStr(t, pool, `SELECT obj_description('public.big_orders'::regclass, 'pg_class')`); c != "orders of 100 and more" {
		t.Errorf("view comment after finalize: %q", c)
	}
	if typ := coStr(t, pool, `SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.big_orders'::regclass AND attname = 'amount'`); typ != "numeric(12,2)" {
		t.Errorf("big_orders.amount is %s after finalize", typ)
	}
	var st string
	if err := pool.QueryRow(ctx, `SELECT state FROM greenswap.migrations WHERE name = $1`, n).Scan(&st); err != nil || st != "finalized" {
		t.Errorf("state %s %v", st, err)
	}
}
