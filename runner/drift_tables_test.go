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
)

// driftTablesSynced syncs the orders-with-items shape as one migration
// (name td) and returns it synced and verified.
func driftTablesSynced(t *testing.T, orders int) (*pgxpool.Pool, string, *Env) {
	t.Helper()
	ctx := context.Background()
	pool, dsn := syncNewDB(t)
	coExec(t, pool, tablesSchema(orders, 2)+`
		CREATE FUNCTION audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;`)
	env := syncTestEnv(t, dsn)
	st, err := Sync(ctx, env, syncSpec(t, tablesSpec("td")), SyncOptions{BatchSize: 500})
	if err != nil || st.State != state.Synced {
		t.Fatalf("sync: %+v, %v", st, err)
	}
	driftTablesVerify(t, env, VerifyOptions{})
	return pool, dsn, env
}

func driftTablesVerify(t *testing.T, env *Env, opts VerifyOptions) {
	t.Helper()
	rep, err := VerifyMigration(context.Background(), env, "td", opts)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if !rep.OK() {
		t.Fatalf("verify found differences in %v", rep.Tables.Different)
	}
}

// driftRefused asserts err is a drift refusal (exit 3) naming want, with
// a fix.
func driftRefused(t *testing.T, what string, err error, want string) *DriftError {
	t.Helper()
	var de *DriftError
	if !errors.As(err, &de) || exitcode.Of(err) != exitcode.Blocked {
		t.Fatalf("%s: want a drift refusal (exit 3) naming %q, got %v", what, want, err)
	}
	if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "fix: ") {
		t.Fatalf("%s: the refusal does not name %q with a fix:\n%v", what, want, err)
	}
	return de
}

// driftOnly asserts every change de names is on the member table.
func driftOnly(t *testing.T, what string, de *DriftError, table string) {
	t.Helper()
	for _, d := range de.Drift {
		if d.Table != table {
			t.Fatalf("%s: names %s on %q, want changes on %s only", what, d, d.Table, table)
		}
	}
}

// driftTablesCase is a deploy's change to one member of a migration of
// several tables; fix undoes it, or mirrors it and accepts it.
type driftTablesCase struct {
	name        string
	change, fix string
	want        string // the refusal names it (and so the member)
	table       string // the member: DriftError's Drift[].Table
	accept      bool   // fix mirrors the change: verify --accept-drift records it
	uncarried   bool   // --accept-drift of the change itself is refused
}

// Before cutover: the app name reads blue.
var driftTablesBefore = []driftTablesCase{
	{name: "blue add column", table: "public.order_items", uncarried: true,
		change: `ALTER TABLE gs_td_blue.order_items ADD COLUMN memo text`,
		fix:    `ALTER TABLE gs_td_blue.order_items DROP COLUMN memo`,
		want:   "gs_td_blue.order_items (blue): column memo text added"},
	{name: "view add column", table: "public.orders", uncarried: true,
		change: `CREATE OR REPLACE VIEW public.orders AS SELECT id, email, amount, NULL::numeric AS discount FROM gs_td_blue.orders`,
		fix:    `DROP VIEW public.orders; CREATE VIEW public.orders %[1]s AS SELECT id, email, amount FROM gs_td_blue.orders`,
		want:   "public.orders (the app view): column discount numeric added"},
	{name: "grant on one member's view", table: "public.order_items",
		change: `GRANT SELECT ON public.order_items TO PUBLIC`,
		fix:    `REVOKE SELECT ON public.order_items FROM PUBLIC`,
		want:   "GRANT SELECT ON public.order_items TO PUBLIC is not on gs_td_blue.order_items"},
	{name: "blue index, mirrored", table: "public.order_items", accept: true,
		change: `CREATE INDEX items_sku_idx ON gs_td_blue.order_items (sku)`,
		fix:    `CREATE INDEX items_sku_idx ON gs_td_green.order_items (sku)`,
		want:   "gs_td_blue.order_items (blue): index items_sku_idx added"},
	{name: "blue check, mirrored", table: "public.order_items", accept: true,
		change: `ALTER TABLE gs_td_blue.order_items ADD CONSTRAINT qty_pos CHECK (qty > 0)`,
		fix:    `ALTER TABLE gs_td_green.order_items ADD CONSTRAINT qty_pos CHECK (qty > 0)`,
		want:   "gs_td_blue.order_items (blue): constraint qty_pos added"},
	{name: "blue user trigger, mirrored", table: "public.orders", accept: true,
		change: `CREATE TRIGGER audit BEFORE UPDATE ON gs_td_blue.orders FOR EACH ROW EXECUTE FUNCTION public.audit_fn()`,
		// A user trigger fires on the primary side only: on green, disabled.
		fix: `CREATE TRIGGER audit BEFORE UPDATE ON gs_td_green.orders FOR EACH ROW EXECUTE FUNCTION public.audit_fn();
		      ALTER TABLE gs_td_green.orders DISABLE TRIGGER audit`,
		want: "gs_td_blue.orders (blue): trigger audit added"},
	{name: "view default, mirrored", table: "public.order_items", accept: true,
		change: `ALTER VIEW public.order_items ALTER COLUMN sku SET DEFAULT 'n/a'`,
		fix: `ALTER TABLE gs_td_blue.order_items ALTER COLUMN sku SET DEFAULT 'n/a';
		      ALTER TABLE gs_td_green.order_items ALTER COLUMN sku SET DEFAULT 'n/a'`,
		want: "public.order_items (the app view): column sku default changed from none to 'n/a'::text"},
}

// After cutover: the app name reads green; blue goes at finalize.
var driftTablesAfter = []driftTablesCase{
	{name: "green add column", table: "public.orders", uncarried: true,
		change: `ALTER TABLE gs_td_green.orders ADD COLUMN memo text`,
		fix:    `ALTER TABLE gs_td_green.orders DROP COLUMN memo`,
		want:   "gs_td_green.orders (green): column memo text added"},
	{name: "blue index after cutover, mirrored", table: "public.orders", accept: true,
		change: `CREATE INDEX orders_email_idx ON gs_td_blue.orders (email)`,
		fix:    `CREATE INDEX orders_email_idx ON gs_td_green.orders (email)`,
		want:   "gs_td_blue.orders (blue): index orders_email_idx added"},
}

// TestDriftTablesRefuseCutoverAndFinalize (trap 16, issue 14): in a
// migration of two tables, for each change a deploy makes to one member
// (its blue, its green, its app-name view: a column, an index, a check, a
// user trigger, a default, a GRANT on its view alone), verify, cutover (before cutover) or finalize
// (after) refuse with exit 3 naming that member's object, change nothing
// (catalog, state, what the app names read) and record a drift event;
// --accept-drift of a change greenswap cannot carry (a column) is refused
// and records nothing. Once the change is undone, or mirrored and
// accepted, they proceed, and what the deploy added survives finalize in
// the final tables (index, check, trigger, default).
func TestDriftTablesRefuseCutoverAndFinalize(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _, env := driftTablesSynced(t, 200)
	with := driftViewWith(t)
	sql := func(s string) string { return strings.ReplaceAll(s, "%[1]s", with) }
	events := func(step string) int64 {
		return coInt(t, pool, `SELECT count(*) FROM greenswap.events WHERE migration = 'td' AND step = $1 AND outcome = 'drift'`, step)
	}
	fingerprint := func() string {
		return coStr(t, pool, `SELECT fingerprint::text FROM greenswap.migrations WHERE name = 'td'`)
	}
	if n := coInt(t, pool, `SELECT count(DISTINCT o ->> 'table') FROM greenswap.migrations m, jsonb_array_elements(m.fingerprint -> 'objects') o
		WHERE m.name = 'td' AND o ->> 'exists' = 'true'`); n != 2 {
		t.Fatalf("the recorded fingerprint covers %d tables, want 2", n)
	}

	// fixAndGo applies c's fix (accepting it when mirrored), after showing
	// that accepting the change itself is refused when it cannot be carried.
	fixAndGo := func(c driftTablesCase) {
		t.Helper()
		if c.uncarried {
			fp := fingerprint()
			_, err := VerifyMigration(ctx, env, "td", VerifyOptions{AcceptDrift: true})
			de := driftRefused(t, c.name+": verify --accept-drift", err, c.want)
			if !de.Uncarried || fingerprint() != fp {
				t.Fatalf("%s: --accept-drift of a change greenswap cannot carry was not refused, or recorded something: %v", c.name, err)
			}
		}
		coExec(t, pool, sql(c.fix))
		if c.accept {
			_, err := VerifyMigration(ctx, env, "td", VerifyOptions{})
			driftRefused(t, c.name+": verify of the mirrored change before --accept-drift", err, c.want)
			driftTablesVerify(t, env, VerifyOptions{AcceptDrift: true})
		}
		driftTablesVerify(t, env, VerifyOptions{})
	}

	for _, c := range driftTablesBefore {
		coExec(t, pool, sql(c.change))
		before := coCatalog(t, pool)
		n := events("cutover")
		_, err := VerifyMigration(ctx, env, "td", VerifyOptions{})
		driftRefused(t, c.name+": verify", err, c.want)
		_, err = Cutover(ctx, env, "td", CutoverOptions{})
		driftOnly(t, c.name+": cutover", driftRefused(t, c.name+": cutover", err, c.want), c.table)
		if after := coCatalog(t, pool); after != before {
			t.Fatalf("%s: a refused cutover changed the catalog:\n%s", c.name, coDiff(before, after))
		}
		if st := coStr(t, pool, `SELECT state FROM greenswap.migrations WHERE name = 'td'`); st != "synced" {
			t.Fatalf("%s: state %s after a refused cutover", c.name, st)
		}
		if o, i := tablesReads(t, pool, "td"); o != "blue" || i != "blue" {
			t.Fatalf("%s: after a refused cutover orders reads %s, order_items %s", c.name, o, i)
		}
		if events("cutover") != n+1 {
			t.Fatalf("%s: no cutover drift event recorded", c.name)
		}
		fixAndGo(c)
	}

	if _, err := Cutover(ctx, env, "td", CutoverOptions{}); err != nil {
		t.Fatalf("cutover once every change is undone or accepted: %v", err)
	}
	if o, i := tablesReads(t, pool, "td"); o != "green" || i != "green" {
		t.Fatalf("after cutover orders reads %s, order_items %s", o, i)
	}

	fin := FinalizeOptions{Force: true, Yes: true}
	for _, c := range driftTablesAfter {
		coExec(t, pool, sql(c.change))
		_, err := Finalize(ctx, env, "td", fin)
		driftOnly(t, c.name+": finalize", driftRefused(t, c.name+": finalize", err, c.want), c.table)
		if n := coInt(t, pool, `SELECT count(*) FROM pg_class WHERE oid IN (to_regclass('gs_td_blue.orders'), to_regclass('gs_td_blue.order_items'))`); n != 2 {
			t.Fatalf("%s: a blue is gone after a refused finalize", c.name)
		}
		if st := coStr(t, pool, `SELECT state FROM greenswap.migrations WHERE name = 'td'`); st != "cut_over" {
			t.Fatalf("%s: state %s after a refused finalize", c.name, st)
		}
		fixAndGo(c)
	}
	if _, err := Finalize(ctx, env, "td", fin); err != nil {
		t.Fatalf("finalize once every change is undone or accepted: %v", err)
	}

	// What the deploys added and the operator accepted is on the final tables.
	for what, q := range map[string]string{
		"index items_sku_idx":    `SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'order_items' AND indexname = 'items_sku_idx'`,
		"index orders_email_idx": `SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'orders' AND indexname = 'orders_email_idx'`,
		"check qty_pos":          `SELECT count(*) FROM pg_constraint WHERE conrelid = 'public.order_items'::regclass AND conname = 'qty_pos'`,
		"trigger audit, enabled": `SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.orders'::regclass AND tgname = 'audit' AND tgenabled = 'O'`,
		"default of sku":         `SELECT count(*) FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum WHERE d.adrelid = 'public.order_items'::regclass AND a.attname = 'sku'`,
	} {
		if coInt(t, pool, q) != 1 {
			t.Errorf("%s is lost after finalize", what)
		}
	}
	if n := coInt(t, pool, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'gs_td_%'`); n != 0 {
		t.Fatalf("%d version schemas left after finalize", n)
	}
}

// TestDriftTablesRollbackWarnsAndKeeps: rollback of a migration of
// several tables goes ahead despite a change to one member (a column on
// order_items' blue), names it as a warning and an event, and does not
// make it the baseline: the next cutover still refuses naming it.
func TestDriftTablesRollbackWarnsAndKeeps(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _, env := driftTablesSynced(t, 100)
	if _, err := Cutover(ctx, env, "td", CutoverOptions{}); err != nil {
		t.Fatal(err)
	}
	coExec(t, pool, `ALTER TABLE gs_td_blue.order_items ADD COLUMN memo text`)
	const want = "gs_td_blue.order_items (blue): column memo text added"
	rb, err := Rollback(ctx, env, "td", SwapCommandOptions{})
	if err != nil {
		t.Fatalf("rollback with drift: %v", err)
	}
	if !strings.Contains(strings.Join(rb.Warnings, "\n"), want) {
		t.Fatalf("rollback does not warn about the column: %v", rb.Warnings)
	}
	if o, i := tablesReads(t, pool, "td"); o != "blue" || i != "blue" {
		t.Fatalf("after rollback orders reads %s, order_items %s", o, i)
	}
	if n := coInt(t, pool, `SELECT count(*) FROM greenswap.events WHERE migration = 'td' AND step = 'rollback' AND outcome = 'drift-warning'`); n != 1 {
		t.Errorf("%d rollback drift-warning events, want 1", n)
	}
	_, err = Cutover(ctx, env, "td", CutoverOptions{SkipVerify: true})
	de := driftRefused(t, "cutover after a rollback that went ahead despite drift", err, want)
	if len(de.Drift) != 1 {
		t.Fatalf("the rollback's own changes (both tables swapped back) read as drift: %v", de.Drift)
	}
}

// TestDriftTablesBaselineForOlderMigrations (upgrade): a migration of
// several tables made by a greenswap that recorded no fingerprint for
// them, or a fingerprint of version 1 (without indexes), is not refused:
// the next check records every table's objects as the baseline (filling
// in the indexes), and drift after that is caught, an index included.
func TestDriftTablesBaselineForOlderMigrations(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _, env := driftTablesSynced(t, 100)
	coExec(t, pool, `UPDATE greenswap.migrations SET fingerprint = NULL WHERE name = 'td'`)
	driftTablesVerify(t, env, VerifyOptions{})
	if n := coInt(t, pool, `SELECT count(*) FROM greenswap.migrations m, jsonb_array_elements(m.fingerprint -> 'objects') o
		WHERE m.name = 'td' AND o ->> 'table' = 'public.order_items'`); n != 3 {
		t.Fatalf("verify recorded %d objects of order_items as the baseline, want 3", n)
	}
	// As version 1 recorded it: no indexes.
	coExec(t, pool, `UPDATE greenswap.migrations m SET fingerprint = jsonb_build_object('version', 1, 'objects',
		(SELECT jsonb_agg(o - 'indexes') FROM jsonb_array_elements(m.fingerprint -> 'objects') o)) WHERE name = 'td'`)
	driftTablesVerify(t, env, VerifyOptions{})
	if v := coStr(t, pool, `SELECT fingerprint ->> 'version' FROM greenswap.migrations WHERE name = 'td'`); v != "2" {
		t.Fatalf("a version 1 fingerprint was not brought up to date: version %s", v)
	}
	coExec(t, pool, `CREATE INDEX items_sku_idx ON gs_td_blue.order_items (sku)`)
	_, err := Cutover(ctx, env, "td", CutoverOptions{})
	driftRefused(t, "cutover after an index on a baselined migration", err, "gs_td_blue.order_items (blue): index items_sku_idx added")
}

// TestDriftTablesDeployUnderWriters: with 8 writers on both app names
// (orders with their items in one transaction, deletes cascading, each
// commit in a ledger), a deploy alters one member mid-migration (a column
// and an index on order_items' blue): cutover refuses and changes
// nothing; the operator drops the column, mirrors the index and accepts;
// cutover, a deploy's check on green orders refused by finalize, mirrored
// and accepted, finalize. No committed row is lost (ledger, EXCEPT diff
// at each step) and the accepted index and check are on the final tables.
func TestDriftTablesDeployUnderWriters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn, env := driftTablesSynced(t, 1000)
	w := startLedgerWorkload(t, dsn, 8, 14)
	syncWaitFor(t, 10*time.Second, "the writers to start", func() bool { return w.ops.Load() > 20 })
	diff := func(step string) {
		t.Helper()
		if o, i := tablesDiff(t, pool, "td"); o != 0 || i != 0 {
			t.Fatalf("%s: %d orders and %d items differ between blue and green", step, o, i)
		}
	}
	lo := SwapCommandOptions{LockTimeout: time.Second}

	w.stage.Store("deploy")
	coExec(t, pool, `ALTER TABLE gs_td_blue.order_items ADD COLUMN memo text`)
	coExec(t, pool, `CREATE INDEX CONCURRENTLY items_sku_idx ON gs_td_blue.order_items (sku)`)
	before := coCatalog(t, pool)
	_, err := Cutover(ctx, env, "td", CutoverOptions{SwapCommandOptions: lo})
	de := driftRefused(t, "cutover after the deploy", err, "gs_td_blue.order_items (blue): column memo text added")
	if len(de.Drift) != 2 || !strings.Contains(err.Error(), "index items_sku_idx added") {
		t.Fatalf("cutover names %v, want the column and the index", de.Drift)
	}
	if after := coCatalog(t, pool); after != before {
		t.Fatalf("a refused cutover changed the catalog:\n%s", coDiff(before, after))
	}
	w.stage.Store("fix")
	coExec(t, pool, `ALTER TABLE gs_td_blue.order_items DROP COLUMN memo`)
	coExec(t, pool, `CREATE INDEX CONCURRENTLY items_sku_idx ON gs_td_green.order_items (sku)`)
	driftTablesVerify(t, env, VerifyOptions{AcceptDrift: true})
	w.stage.Store("cutover")
	if _, err := Cutover(ctx, env, "td", CutoverOptions{SwapCommandOptions: lo}); err != nil {
		t.Fatalf("cutover: %v", err)
	}
	w.stage.Store("after cutover")
	time.Sleep(200 * time.Millisecond)
	diff("after cutover")

	w.stage.Store("deploy 2")
	coExec(t, pool, `ALTER TABLE gs_td_green.orders ADD CONSTRAINT amount_nonneg CHECK (amount >= 0)`)
	fin := FinalizeOptions{Force: true, Yes: true, SwapCommandOptions: lo}
	_, err = Finalize(ctx, env, "td", fin)
	driftRefused(t, "finalize after the deploy", err, "gs_td_green.orders (green): constraint amount_nonneg added")
	coExec(t, pool, `ALTER TABLE gs_td_blue.orders ADD CONSTRAINT amount_nonneg CHECK (amount >= 0)`)
	driftTablesVerify(t, env, VerifyOptions{AcceptDrift: true})
	diff("before finalize")
	w.stage.Store("finalize")
	if _, err := Finalize(ctx, env, "td", fin); err != nil {
		t.Fatalf("finalize: %v", err)
	}
	w.stage.Store("after finalize")
	time.Sleep(200 * time.Millisecond)
	// The row type of the app names changes at cutover (and at finalize,
	// the view becoming the table): a writer's prepared statement fails
	// once per swap with "cached plan must not change result type"
	// (trap 6), and retries; nothing else may fail.
	for _, err := range w.stop() {
		if db.SQLState(err) != "0A000" {
			t.Fatalf("a writer failed: %v", err)
		}
	}
	w.check(t, pool, "public")
	if coInt(t, pool, `SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'order_items' AND indexname = 'items_sku_idx'`) != 1 ||
		coInt(t, pool, `SELECT count(*) FROM pg_constraint WHERE conrelid = 'public.orders'::regclass AND conname = 'amount_nonneg'`) != 1 {
		t.Fatal("the accepted index or check is lost after finalize")
	}
}
