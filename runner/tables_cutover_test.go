package runner

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/internal/testkit"
	"github.com/greenswap/greenswap/shadow"
)

// tablesSynced builds the orders-with-items shape, with payments (a table
// outside the migration) referencing orders, and syncs it to synced.
func tablesSynced(t *testing.T, name string, orders int) (*pgxpool.Pool, string, *Env) {
	t.Helper()
	ctx := context.Background()
	pool, dsn := syncNewDB(t)
	if _, err := pool.Exec(ctx, tablesSchema(orders, 3)+`
		CREATE TABLE payments (id serial PRIMARY KEY, order_id int NOT NULL REFERENCES orders (id) ON DELETE CASCADE, cents int NOT NULL);
		INSERT INTO payments (order_id, cents) SELECT id, 100 FROM orders WHERE id % 3 = 0;`); err != nil {
		t.Fatal(err)
	}
	env := syncTestEnv(t, dsn)
	st, err := Sync(ctx, env, syncSpec(t, tablesSpec(name)), SyncOptions{BatchSize: 500})
	if err != nil || st.State != state.Synced {
		t.Fatalf("sync: %+v, %v", st, err)
	}
	return pool, dsn, env
}

// tablesReads is the schema each app view reads now.
func tablesReads(t *testing.T, q db.Querier, name string) (orders, items string) {
	t.Helper()
	side := func(view string) string {
		def := coStr(t, q, `SELECT pg_catalog.pg_get_viewdef($1::regclass)`, view)
		switch {
		case strings.Contains(def, "gs_"+name+"_green."):
			return "green"
		case strings.Contains(def, "gs_"+name+"_blue."):
			return "blue"
		}
		return def
	}
	return side("public.orders"), side("public.order_items")
}

// paymentsFK is the schema of the table payments' foreign key references,
// and whether it is validated.
func paymentsFK(t *testing.T, q db.Querier) (string, bool) {
	t.Helper()
	ns := coStr(t, q, `SELECT r.relnamespace::regnamespace::text FROM pg_constraint c JOIN pg_class r ON r.oid = c.confrelid
		WHERE c.conrelid = 'public.payments'::regclass AND c.contype = 'f'`)
	valid := testkit.Count(t, q, `SELECT count(*) FROM pg_constraint WHERE conrelid = 'public.payments'::regclass AND contype = 'f' AND convalidated`)
	return ns, valid == 1
}

// TestTablesCutoverRollbackUnderWriters: with 8 writers on both app names
// (orders with their items in one transaction, deletes cascading),
// cutover swaps both views to green in one transaction, payments'
// foreign key moves to green orders and is validated; rollback swaps both
// back and the key returns to blue; a second cutover goes green again.
// After each swap the per-table EXCEPT diff is empty, no writer failed,
// every foreign key among the greens is valid.
func TestTablesCutoverRollbackUnderWriters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn, env := tablesSynced(t, "oc", 2000)
	w := startTablesWorkload(t, dsn, 8, 7)
	syncWaitFor(t, 10*time.Second, "the writers to start", func() bool { return w.ops.Load() > 20 })

	check := func(step, want string) {
		t.Helper()
		if o, i := tablesReads(t, pool, "oc"); o != want || i != want {
			t.Fatalf("%s: orders reads %s, order_items %s; want %s", step, o, i, want)
		}
		if ns, ok := paymentsFK(t, pool); ns != "gs_oc_"+want || !ok {
			t.Fatalf("%s: payments references %s (validated %v); want gs_oc_%s, validated", step, ns, ok, want)
		}
	}
	opts := CutoverOptions{SkipVerify: true, SwapCommandOptions: SwapCommandOptions{LockTimeout: time.Second}}
	res, err := Cutover(ctx, env, "oc", opts)
	if err != nil {
		t.Fatalf("cutover: %v", err)
	}
	if res.State != state.CutOver || len(res.Plan.Members) != 2 || len(res.Validations) != 1 {
		t.Fatalf("cutover: state %s, %d members, validations %+v", res.State, len(res.Plan.Members), res.Validations)
	}
	check("cutover", "green")
	time.Sleep(300 * time.Millisecond) // writes to green flow back to blue

	rb, err := Rollback(ctx, env, "oc", SwapCommandOptions{LockTimeout: time.Second})
	if err != nil {
		t.Fatalf("rollback: %v", err)
	}
	if rb.Kind != "swap" || rb.State != state.Synced {
		t.Fatalf("rollback: %+v", rb)
	}
	check("rollback", "blue")
	time.Sleep(300 * time.Millisecond)

	if _, err := Cutover(ctx, env, "oc", opts); err != nil {
		t.Fatalf("second cutover: %v", err)
	}
	check("second cutover", "green")
	time.Sleep(300 * time.Millisecond)
	// The row type of both app names changes (int → bigint): a writer's
	// prepared statement fails once per swap with "cached plan must not
	// change result type" (trap 6); any other error is a failure.
	for _, err := range w.stop() {
		if db.SQLState(err) != "0A000" {
			t.Fatalf("writer error: %v", err)
		}
	}
	if w.ops.Load() < 50 {
		t.Fatalf("only %d writer transactions", w.ops.Load())
	}
	if o, i := tablesDiff(t, pool, "oc"); o != 0 || i != 0 {
		t.Fatalf("blue vs green differ: %d orders rows, %d order_items rows", o, i)
	}
	if all, valid := tablesFKs(t, pool, "oc"); all != 1 || valid != 1 {
		t.Fatalf("foreign keys among the greens: %d, %d validated; want 1, 1", all, valid)
	}
	// The foreign keys among the blues stayed on the blues.
	if n := testkit.Count(t, pool, `SELECT count(*) FROM pg_constraint c JOIN pg_class r ON r.oid = c.confrelid
		WHERE c.contype = 'f' AND c.connamespace = 'gs_oc_blue'::regnamespace AND r.relnamespace = 'gs_oc_blue'::regnamespace AND c.convalidated`); n != 1 {
		t.Fatalf("%d validated foreign keys among the blues, want 1", n)
	}
}

// TestTablesCutoverLockedGivesUp: a transaction holding a lock on
// order_items' app view makes cutover of both tables give up after its
// attempts with exit 5, naming the holder, and nothing is swapped: orders
// (whose locks it could take) still reads blue, payments still references
// blue, the state is synced.
func TestTablesCutoverLockedGivesUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn, env := tablesSynced(t, "ol", 300)
	holder := coConn(t, dsn, map[string]string{"application_name": "long-report"})
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT count(*) FROM public.order_items`); err != nil {
		t.Fatal(err)
	}
	res, err := Cutover(ctx, env, "ol", CutoverOptions{SkipVerify: true,
		SwapCommandOptions: SwapCommandOptions{LockTimeout: 100 * time.Millisecond, MaxAttempts: 2}})
	var lt *shadow.LockTimeoutError
	if !errors.As(err, &lt) || exitcode.Of(err) != exitcode.LockTimeout {
		t.Fatalf("cutover: want a lock timeout (exit 5), got %v", err)
	}
	if res.Attempts != 2 || len(res.Blockers) == 0 || res.Blockers[0].Application != "long-report" {
		t.Fatalf("attempts %d, blockers %+v", res.Attempts, res.Blockers)
	}
	if o, i := tablesReads(t, pool, "ol"); o != "blue" || i != "blue" {
		t.Fatalf("after the refused cutover: orders reads %s, order_items %s", o, i)
	}
	if ns, _ := paymentsFK(t, pool); ns != "gs_ol_blue" {
		t.Fatalf("payments references %s after the refused cutover", ns)
	}
	m, err := state.Get(ctx, pool, "ol")
	if err != nil || m.State != state.Synced {
		t.Fatalf("state: %+v, %v", m, err)
	}
}
