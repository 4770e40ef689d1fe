package runner

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/spec"
)

const teardownSchema = `
CREATE TABLE orders (id serial PRIMARY KEY, email text, amount int NOT NULL DEFAULT 0, note text);
COMMENT ON TABLE orders IS 'the orders';
COMMENT ON COLUMN orders.amount IS 'in cents';
CREATE TABLE items (id int PRIMARY KEY, order_id int REFERENCES orders (id) ON DELETE CASCADE);
CREATE VIEW v_orders AS SELECT id, amount FROM orders WHERE amount > 0;
CREATE FUNCTION orders_noop() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$;
CREATE TRIGGER orders_t AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION orders_noop();
CREATE ROLE %[1]s;
GRANT SELECT, INSERT ON orders TO %[1]s;
GRANT SELECT ON v_orders TO %[1]s;
INSERT INTO orders (email, amount) SELECT 'u' || g || '@x', g FROM generate_series(1, 100) g;
INSERT INTO items SELECT g, g FROM generate_series(1, 50) g;
`

const teardownSpec = `
name: td
table: public.orders
target:
  ddl: CREATE TABLE orders (id bigint PRIMARY KEY, email text NOT NULL, amount bigint NOT NULL DEFAULT 0, note text)
forward:
  email: coalesce(email, '')
`

// TestRollbackBeforeCutoverRestoresTheTable: rollback of a synced (and of a
// syncing) migration removes everything sync built in one transaction and
// leaves the catalog exactly as before sync; writes made meanwhile through
// either shape are in the table; a view created over the app name meanwhile
// is created again over the table; the migration can start over and cut over.
func TestRollbackBeforeCutoverRestoresTheTable(t *testing.T) {
	pool, dsn := pgtest.NewPool(t)
	ctx := context.Background()
	role := "co_td_" + strings.TrimPrefix(coStr(t, pool, `SELECT current_database()`), "gs_test_")
	pgtest.Exec(t, dsn, fmt.Sprintf(teardownSchema, role))
	t.Cleanup(func() { coDropRole(dsn, role) })
	before := coCatalog(t, pool)
	env := coEnv(t, dsn)
	out := &coBuffer{}

	for _, stopAfterSetup := range []bool{true, false} {
		spec, err := spec.ParseSpec([]byte(teardownSpec), "test.yaml", "yaml")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Sync(ctx, env, spec, SyncOptions{StopAfterSetup: stopAfterSetup}); err != nil {
			t.Fatal(err)
		}
		// Writes through the app name and the blue schema; through green once synced.
		coExec(t, pool, `INSERT INTO orders (email, amount) VALUES ('app@x', 7)`)
		coExec(t, pool, `INSERT INTO gs_td_blue.orders (email, amount) VALUES ('blue@x', 8)`)
		if !stopAfterSetup {
			coExec(t, pool, `INSERT INTO gs_td_green.orders (id, email, amount) VALUES (1000, 'green@x', 9)`)
		}
		coExec(t, pool, `CREATE VIEW v_new AS SELECT id, email FROM orders; COMMENT ON VIEW v_new IS 'made during the migration'`)
		wantRows := coInt(t, pool, `SELECT count(*) FROM orders`)

		res, err := Rollback(ctx, env, "td", SwapCommandOptions{Out: out})
		if err != nil {
			t.Fatalf("rollback: %v\n%s", err, out)
		}
		if res.Kind != "teardown" || res.State != state.RolledBack || res.Teardown == nil || len(res.Teardown.Views) != 1 {
			t.Fatalf("rollback result: %+v", res)
		}
		if kind := coStr(t, pool, `SELECT relkind::text FROM pg_class WHERE oid = 'public.orders'::regclass`); kind != "r" {
			t.Fatalf("public.orders is %s after rollback", kind)
		}
		if n := coInt(t, pool, `SELECT count(*) FROM orders`); n != wantRows {
			t.Errorf("%d rows after rollback, want %d", n, wantRows)
		}
		for _, e := range []string{"app@x", "blue@x"} {
			if coInt(t, pool, `SELECT count(*) FROM orders WHERE email = $1`, e) != 1 {
				t.Errorf("the write %s is missing after rollback", e)
			}
		}
		if !stopAfterSetup && coInt(t, pool, `SELECT count(*) FROM orders WHERE id = 1000 AND email = 'green@x'`) != 1 {
			t.Errorf("the write through green is missing after rollback")
		}
		if ref := coStr(t, pool, `SELECT string_agg(DISTINCT d.refobjid::regclass::text, ',') FROM pg_rewrite r JOIN pg_depend d ON d.objid = r.oid
			WHERE r.ev_class = 'v_new'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> 'v_new'::regclass`); ref != "orders" {
			t.Errorf("v_new reads %s after rollback, want the table", ref)
		}
		if c := coStr(t, pool, `SELECT obj_description('v_new'::regclass, 'pg_class')`); c != "made during the migration" {
			t.Errorf("v_new comment %q", c)
		}
		// A fresh sequence value does not collide: the serial sequence is back.
		coExec(t, pool, `INSERT INTO orders (email) VALUES ('after@x')`)
		coExec(t, pool, `DELETE FROM orders WHERE email IN ('app@x', 'blue@x', 'green@x', 'after@x'); DROP VIEW v_new`)
		// The catalog is as before sync (sequence values aside).
		if after := coCatalog(t, pool); after != before {
			t.Errorf("catalog after rollback (stop after setup %v) differs from before sync:\n%s", stopAfterSetup, coDiff(before, after))
		}
		if n := coInt(t, pool, `SELECT count(*) FROM greenswap.events WHERE migration = 'td' AND step = 'rollback' AND outcome = 'ok'`); n == 0 {
			t.Error("no rollback event recorded")
		}
	}

	// Rolled back again: nothing to do. Then it starts over and cuts over.
	if res, err := Rollback(ctx, env, "td", SwapCommandOptions{}); err != nil || res.Kind != "none" {
		t.Errorf("second rollback: %+v %v", res, err)
	}
	spec := coSync(t, env, teardownSpec)
	if _, err := Cutover(ctx, env, spec.Name, CutoverOptions{SwapCommandOptions: SwapCommandOptions{Out: out}}); err != nil {
		t.Fatalf("cutover after starting over: %v\n%s", err, out)
	}
	if _, err := Rollback(ctx, env, "td", SwapCommandOptions{Out: out}); err != nil {
		t.Fatalf("rollback after cutover: %v\n%s", err, out)
	}
	// Synced again: a teardown now also restores the catalog.
	if _, err := Rollback(ctx, env, "td", SwapCommandOptions{Out: out}); err != nil {
		t.Fatalf("teardown after a cutover and rollback: %v\n%s", err, out)
	}
	if after := coCatalog(t, pool); after != before {
		t.Errorf("catalog after cutover, rollback, teardown differs from before sync:\n%s", coDiff(before, after))
	}
}

// TestCutoverRefusals: cutover needs a synced migration with a passing
// verify since the last backfill (or --skip-verify); finalize needs a
// cutover; nothing rolls back a finalized migration.
func TestCutoverRefusals(t *testing.T) {
	pool, dsn := pgtest.NewPool(t)
	ctx := context.Background()
	pgtest.Exec(t, dsn, `CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, g FROM generate_series(1, 10) g`)
	env := coEnv(t, dsn)
	if _, err := Cutover(ctx, env, "nope", CutoverOptions{}); exitcode.Of(err) != exitcode.BadInput {
		t.Errorf("cutover of an unknown migration: %v", err)
	}
	spec, err := spec.ParseSpec([]byte("name: rf\ntable: public.t\ntarget:\n  ddl: CREATE TABLE t (id bigint PRIMARY KEY, v bigint)\n"), "t.yaml", "yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Sync(ctx, env, spec, SyncOptions{StopAfterSetup: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := Cutover(ctx, env, "rf", CutoverOptions{SkipVerify: true}); exitcode.Of(err) != exitcode.BadInput || !strings.Contains(err.Error(), "syncing") {
		t.Errorf("cutover while syncing: %v", err)
	}
	if _, err := Sync(ctx, env, spec, SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = Cutover(ctx, env, "rf", CutoverOptions{})
	if exitcode.Of(err) != exitcode.BadInput || !strings.Contains(err.Error(), "greenswap verify rf") {
		t.Errorf("cutover without verify: %v", err)
	}
	if _, err := Finalize(ctx, env, "rf", FinalizeOptions{Yes: true}); exitcode.Of(err) != exitcode.BadInput {
		t.Errorf("finalize before cutover: %v", err)
	}
	if _, err := Finalize(ctx, env, "rf", FinalizeOptions{}); exitcode.Of(err) != exitcode.BadInput || !strings.Contains(err.Error(), "--yes") {
		t.Errorf("finalize without confirmation: %v", err)
	}
	res, err := Cutover(ctx, env, "rf", CutoverOptions{SkipVerify: true})
	if err != nil || !res.VerifySkipped {
		t.Fatalf("cutover --skip-verify: %+v %v", res, err)
	}
	if _, err := Cutover(ctx, env, "rf", CutoverOptions{SkipVerify: true}); exitcode.Of(err) != exitcode.BadInput || !strings.Contains(err.Error(), "already cut over") {
		t.Errorf("second cutover: %v", err)
	}
	declined := false
	_, err = Finalize(ctx, env, "rf", FinalizeOptions{QuietPeriod: -1, Confirm: func(q string) (bool, error) {
		declined = strings.Contains(q, "cannot be undone")
		return false, nil
	}})
	if !declined || exitcode.Of(err) != exitcode.BadInput {
		t.Errorf("finalize declined: asked %v, %v", declined, err)
	}
	if st := coStr(t, pool, `SELECT state FROM greenswap.migrations WHERE name = 'rf'`); st != "cut_over" {
		t.Errorf("state %s after a declined finalize", st)
	}
	if _, err := Finalize(ctx, env, "rf", FinalizeOptions{QuietPeriod: -1, Yes: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := Rollback(ctx, env, "rf", SwapCommandOptions{}); exitcode.Of(err) != exitcode.BadInput || !strings.Contains(err.Error(), "finalized") {
		t.Errorf("rollback after finalize: %v", err)
	}
	if res, err := Finalize(ctx, env, "rf", FinalizeOptions{Yes: true}); err != nil || res.State != state.Finalized {
		t.Errorf("finalize again: %+v %v", res, err)
	}
	// Busy: another greenswap holds the migration.
	lock, err := env.Lock(ctx, "rf")
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release(ctx)
	if _, err := Rollback(ctx, env, "rf", SwapCommandOptions{}); exitcode.Of(err) != exitcode.Busy {
		t.Errorf("rollback while locked: %v", err)
	}
}
