package runner

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/cutover"
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

// TestTablesLifecycleUnderWriters: with 8 writers on both app names
// (orders with their items in one transaction, deletes cascading, each
// commit in a ledger), cutover swaps both views to green in one
// transaction and payments' foreign key (a table outside the migration)
// moves to green orders and is validated; writes go through the app names
// and both version schemas; rollback swaps both back and the key returns
// to blue; a second cutover goes green again. Then finalize refuses while
// an old release wrote through the blue schema (named), and once quiet it
// makes both greens real tables in public with their foreign keys, no gs_
// object left. At every step the per-table EXCEPT diff is empty; at the
// end the ledger matches (0 rows lost) and every foreign key is validated.
func TestTablesLifecycleUnderWriters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn, env := tablesSynced(t, "oc", 2000)
	w := startLedgerWorkload(t, dsn, 8, 7)
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
	// A client pinned to a version schema by search_path writes an order
	// with an item there.
	pinned := func(schema, app string) {
		t.Helper()
		c := coConn(t, dsn, map[string]string{"search_path": schema, "application_name": app})
		if _, err := c.Exec(ctx, `WITH o AS (INSERT INTO orders (email, amount) VALUES ('pinned@x', 1) RETURNING id)
			INSERT INTO order_items (order_id, sku, qty) SELECT id, 'pinned', 1 FROM o`); err != nil {
			t.Fatalf("write through %s: %v", schema, err)
		}
		c.Close(ctx)
	}
	opts := CutoverOptions{SkipVerify: true, SwapCommandOptions: SwapCommandOptions{LockTimeout: time.Second}}
	w.stage.Store("cutover")
	res, err := Cutover(ctx, env, "oc", opts)
	w.stage.Store("after cutover")
	if err != nil {
		t.Fatalf("cutover: %v", err)
	}
	if res.State != state.CutOver || len(res.Plan.Members) != 2 || len(res.Validations) != 1 {
		t.Fatalf("cutover: state %s, %d members, validations %+v", res.State, len(res.Plan.Members), res.Validations)
	}
	check("cutover", "green")
	pinned("gs_oc_green", "canary")
	pinned("gs_oc_blue", "old-release")
	time.Sleep(300 * time.Millisecond)

	w.stage.Store("rollback")
	rb, err := Rollback(ctx, env, "oc", SwapCommandOptions{LockTimeout: time.Second})
	w.stage.Store("after rollback")
	if err != nil {
		t.Fatalf("rollback: %v", err)
	}
	if rb.Kind != "swap" || rb.State != state.Synced {
		t.Fatalf("rollback: %+v", rb)
	}
	check("rollback", "blue")
	pinned("gs_oc_green", "canary")
	time.Sleep(300 * time.Millisecond)

	w.stage.Store("second cutover")
	if _, err := Cutover(ctx, env, "oc", opts); err != nil {
		t.Fatalf("second cutover: %v", err)
	}
	w.stage.Store("after second cutover")
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
	w.check(t, pool, "gs_oc_blue")
	w.check(t, pool, "gs_oc_green")
	if all, valid := tablesFKs(t, pool, "oc"); all != 1 || valid != 1 {
		t.Fatalf("foreign keys among the greens: %d, %d validated; want 1, 1", all, valid)
	}
	// The foreign key among the blues stayed on the blues.
	if n := testkit.Count(t, pool, `SELECT count(*) FROM pg_constraint c JOIN pg_class r ON r.oid = c.confrelid
		WHERE c.contype = 'f' AND c.connamespace = 'gs_oc_blue'::regnamespace AND r.relnamespace = 'gs_oc_blue'::regnamespace AND c.convalidated`); n != 1 {
		t.Fatalf("%d validated foreign keys among the blues, want 1", n)
	}

	// An old release writes through the blue schema: finalize refuses and
	// names it, nothing changed.
	pinned("gs_oc_blue", "old-release")
	fo := FinalizeOptions{Yes: true, QuietPeriod: time.Second, SampleEvery: 100 * time.Millisecond,
		SwapCommandOptions: SwapCommandOptions{LockTimeout: time.Second}}
	_, err = Finalize(ctx, env, "oc", fo)
	var ue *cutover.UsageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "old-release") {
		t.Fatalf("finalize with a client on blue: want a refusal naming old-release, got %v", err)
	}
	if o, _ := tablesReads(t, pool, "oc"); o != "green" {
		t.Fatalf("after the refused finalize orders reads %s", o)
	}
	time.Sleep(1200 * time.Millisecond) // the write leaves the quiet period
	fr, err := Finalize(ctx, env, "oc", fo)
	if err != nil {
		t.Fatalf("finalize: %v", err)
	}
	if fr.State != state.Finalized {
		t.Fatalf("finalize: %+v", fr)
	}
	for _, tbl := range []string{"public.orders", "public.order_items"} {
		if k := coStr(t, pool, `SELECT relkind::text FROM pg_class WHERE oid = $1::regclass`, tbl); k != "r" {
			t.Fatalf("%s is relkind %s after finalize, want a table", tbl, k)
		}
		if typ := coStr(t, pool, `SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = $1::regclass AND attname = 'id'`, tbl); typ != "bigint" {
			t.Fatalf("%s.id is %s", tbl, typ)
		}
	}
	fks := coStr(t, pool, `SELECT string_agg(conrelid::regclass::text || '->' || confrelid::regclass::text || ':' || convalidated, ',' ORDER BY conrelid::regclass::text)
		FROM pg_constraint WHERE contype = 'f'`)
	if fks != "order_items->orders:true,payments->orders:true" {
		t.Fatalf("foreign keys after finalize: %s", fks)
	}
	if n := testkit.Count(t, pool, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'gs\_%'`); n != 0 {
		t.Fatalf("%d gs_ schemas left", n)
	}
	if n := testkit.Count(t, pool, `SELECT count(*) FROM pg_proc WHERE proname LIKE 'gs\_%'`); n != 0 {
		t.Fatalf("%d gs_ functions left", n)
	}
	if n := testkit.Count(t, pool, `SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'gs\_%'`); n != 0 {
		t.Fatalf("%d gs_ triggers left", n)
	}
	w.check(t, pool, "public")
	// The tables work: a delete cascades to items and payments.
	if _, err := pool.Exec(ctx, `DELETE FROM public.orders WHERE id = 3`); err != nil {
		t.Fatal(err)
	}
	if n := testkit.Count(t, pool, `SELECT count(*) FROM public.order_items WHERE order_id = 3`) +
		testkit.Count(t, pool, `SELECT count(*) FROM public.payments WHERE order_id = 3`); n != 0 {
		t.Fatalf("%d rows still reference the deleted order", n)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO public.orders (email, amount) VALUES ('after@x', 1)`); err != nil {
		t.Fatalf("insert after finalize: %v", err)
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
