package runner

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/internal/testkit"
)

// syncedTables syncs the orders-with-items migration name (tablesSchema,
// tablesSpec) to synced. With writers > 0 that many tablesWorkload writers
// run from before the sync and are left running for the caller (stop
// returns their errors).
func syncedTables(t *testing.T, name string, orders, itemsPerOrder, writers int) (*pgxpool.Pool, string, *Env, *tablesWorkload) {
	t.Helper()
	ctx := context.Background()
	pool, dsn := syncNewDB(t)
	if _, err := pool.Exec(ctx, tablesSchema(orders, itemsPerOrder)); err != nil {
		t.Fatal(err)
	}
	env := syncTestEnv(t, dsn)
	var w *tablesWorkload
	if writers > 0 {
		w = startTablesWorkload(t, dsn, writers, 3)
		syncWaitFor(t, 10*time.Second, "the writers to start", func() bool { return w.ops.Load() > 20 })
	}
	stats, err := Sync(ctx, env, syncSpec(t, tablesSpec(name)), SyncOptions{BatchSize: 500, NiceRatio: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	if stats.State != state.Synced {
		t.Fatalf("sync of %s: state %s", name, stats.State)
	}
	return pool, dsn, env, w
}

// tablesTamper changes one row of green order_items behind the triggers'
// back and returns its id.
func tablesTamper(t *testing.T, pool *pgxpool.Pool, dsn, name string) int64 {
	t.Helper()
	id := testkit.Count(t, pool, fmt.Sprintf(`SELECT id FROM gs_%s_green.order_items ORDER BY id OFFSET 1234 LIMIT 1`, name))
	pgtest.Exec(t, dsn, fmt.Sprintf(`SET session_replication_role = replica;
		UPDATE gs_%s_green.order_items SET qty = qty + 100 WHERE id = %d`, name, id))
	return id
}

// TestTablesVerifyUnderWriters: orders and order_items synced with 6
// writers (an order with its items in one transaction, updates, cascading
// deletes) still writing while verify runs: both tables IDENTICAL, in
// dependency order, the migration recorded verified as a whole. Then one
// row of green order_items is tampered with: order_items is DIFFERENT
// with that key and column, orders IDENTICAL, the migration not verified;
// --repair mends order_items and a new verify passes.
func TestTablesVerifyUnderWriters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn, env, w := syncedTables(t, "oiv", 3000, 3, 6)
	before := w.ops.Load()
	rep, err := VerifyMigration(ctx, env, "oiv", VerifyOptions{ChunkRows: 700, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	during := w.ops.Load() - before
	if errs := w.stop(); len(errs) > 0 {
		t.Fatalf("%d writer errors, first: %v", len(errs), errs[0])
	}
	if during == 0 {
		t.Fatal("no writer transaction committed while verify ran: the test proves nothing")
	}
	r := rep.Tables
	if r == nil || rep.Result != nil || !rep.OK() || len(r.Tables) != 2 || len(r.Different) != 0 {
		t.Fatalf("verify under %d writer transactions: %+v", during, r)
	}
	if r.Tables[0].Table != "public.orders" || r.Tables[1].Table != "public.order_items" {
		t.Fatalf("tables not in dependency order: %s, %s", r.Tables[0].Table, r.Tables[1].Table)
	}
	for _, tv := range r.Tables {
		if !tv.OK || tv.SourceRows == 0 || tv.SourceRows != tv.TargetRows || tv.Chunks < 2 || !tv.SnapshotAt.Equal(r.SnapshotAt) {
			t.Fatalf("%s: ok %v, rows %d/%d, chunks %d, snapshot %v (the migration's %v)", tv.Table, tv.OK,
				tv.SourceRows, tv.TargetRows, tv.Chunks, tv.SnapshotAt, r.SnapshotAt)
		}
	}
	if r.SourceRows != r.Tables[0].SourceRows+r.Tables[1].SourceRows {
		t.Fatalf("total rows %d, tables %d + %d", r.SourceRows, r.Tables[0].SourceRows, r.Tables[1].SourceRows)
	}
	m, err := state.Get(ctx, pool, "oiv")
	if err != nil {
		t.Fatal(err)
	}
	if m.VerifyOK == nil || !*m.VerifyOK || m.VerifiedAt == nil || !m.VerifiedAt.Equal(r.SnapshotAt) {
		t.Fatalf("migration row: verify_ok %v, verified_at %v, snapshot %v", m.VerifyOK, m.VerifiedAt, r.SnapshotAt)
	}
	if ok, err := LastVerifyPassed(ctx, pool, "oiv"); !ok || err != nil {
		t.Fatalf("LastVerifyPassed = %v, %v after a passing verify", ok, err)
	}
	ev := lastEvent(t, env, "oiv")
	var detail struct {
		OK     bool `json:"ok"`
		Tables []struct {
			Table string `json:"table"`
			OK    bool   `json:"ok"`
			Rows  int64  `json:"rows"`
		} `json:"tables"`
	}
	if err := json.Unmarshal(ev.Detail, &detail); err != nil || ev.Step != VerifyStep || ev.Outcome != "ok" || !detail.OK ||
		len(detail.Tables) != 2 || detail.Tables[1].Table != "public.order_items" || detail.Tables[1].Rows != r.Tables[1].SourceRows {
		t.Fatalf("event %s/%s: %s (%v)", ev.Step, ev.Outcome, ev.Detail, err)
	}
	// Verify of one table is not what a migration of several asks for.
	if _, err := Verify(ctx, env, "oiv", VerifyOptions{}); exitcode.Of(err) != exitcode.BadInput || !strings.Contains(err.Error(), "VerifyMigration") {
		t.Fatalf("Verify of several tables: %v (exit %d), want exit 2 naming VerifyMigration", err, exitcode.Of(err))
	}

	id := tablesTamper(t, pool, dsn, "oiv")
	rep, err = VerifyMigration(ctx, env, "oiv", VerifyOptions{ChunkRows: 700})
	if err != nil {
		t.Fatal(err)
	}
	r = rep.Tables
	if rep.OK() || len(r.Different) != 1 || r.Different[0] != "public.order_items" || r.DifferenceCount != 1 || !r.Tables[0].OK {
		t.Fatalf("tampered: ok %v, different %v, differences %d, orders ok %v", rep.OK(), r.Different, r.DifferenceCount, r.Tables[0].OK)
	}
	items := r.Tables[1]
	if items.OK || items.DifferenceCount != 1 || len(items.Differences) != 1 {
		t.Fatalf("order_items: %+v", items.Pass)
	}
	if d := items.Differences[0]; d.Kind != "different" || len(d.Key) != 1 || d.Key[0] != fmt.Sprint(id) || len(d.Columns) != 1 || d.Columns[0] != "qty" {
		t.Fatalf("difference %+v, want id %d different in qty", d, id)
	}
	if ok, _ := LastVerifyPassed(ctx, pool, "oiv"); ok {
		t.Fatal("LastVerifyPassed true after a verify that found a table different")
	}
	if ev := lastEvent(t, env, "oiv"); ev.Outcome != "failed" || !strings.Contains(string(ev.Detail), `"different_tables": ["public.order_items"]`) {
		t.Fatalf("event after the failed verify: %s %s", ev.Outcome, ev.Detail)
	}

	rep, err = VerifyMigration(ctx, env, "oiv", VerifyOptions{Repair: true})
	if err != nil || !rep.OK() || rep.Tables.Tables[0].Repair != nil || rep.Tables.Tables[1].Repair == nil || rep.Tables.Tables[1].Repair.Keys != 1 {
		t.Fatalf("repair: %v %+v", err, rep.Tables)
	}
	if _, items := tablesDiff(t, pool, "oiv"); items != 0 {
		t.Fatalf("after the repair blue and green order_items differ in %d rows", items)
	}
	if rep, err := VerifyMigration(ctx, env, "oiv", VerifyOptions{}); err != nil || !rep.OK() {
		t.Fatalf("after the repair: %v %+v", err, rep)
	}
	if ok, _ := LastVerifyPassed(ctx, pool, "oiv"); !ok {
		t.Fatal("LastVerifyPassed false after the repair")
	}
}

// TestTablesVerifyOneSnapshot: a transaction writing an order and its
// items commits after orders was compared and before order_items is.
// Under the shared snapshot neither the order nor its items are counted:
// the two tables' figures are one instant's. The control run, a snapshot
// per table as verify took before, counts the items but not their order:
// an inconsistent pair, which is what the shared snapshot prevents.
func TestTablesVerifyOneSnapshot(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _, env, _ := syncedTables(t, "ois", 400, 2, 0)
	for _, separate := range []bool{false, true} {
		orders := testkit.Count(t, pool, `SELECT count(*) FROM public.orders`)
		items := testkit.Count(t, pool, `SELECT count(*) FROM public.order_items`)
		var xmins int64
		opts := VerifyOptions{ChunkRows: 100, separateSnapshots: separate, OnTable: func(table string, i, n int) {
			if i != 1 || table != "public.order_items" || n != 2 {
				return
			}
			// The readers of orders are done: with the shared snapshot its
			// holder is the one session holding an xmin, without it none is.
			xmins = testkit.Count(t, pool, `SELECT count(*) FROM pg_stat_activity
				WHERE datname = current_database() AND backend_type = 'client backend' AND backend_xmin IS NOT NULL
				AND pid <> pg_backend_pid()`)
			if _, err := pool.Exec(ctx, `WITH o AS (INSERT INTO public.orders (email, amount) VALUES ('late@x', 1) RETURNING id)
				INSERT INTO public.order_items (order_id, sku, qty) SELECT id, 'late-' || k, k FROM o, generate_series(1, 3) k`); err != nil {
				t.Error(err)
			}
		}}
		rep, err := VerifyMigration(ctx, env, "ois", opts)
		if err != nil {
			t.Fatal(err)
		}
		r := rep.Tables
		if !rep.OK() || len(r.Tables) != 2 {
			t.Fatalf("separate=%v: %+v", separate, r)
		}
		o, i := r.Tables[0], r.Tables[1]
		if separate {
			if o.SourceRows != orders || i.SourceRows != items+3 || o.SnapshotAt.Equal(i.SnapshotAt) || xmins != 0 {
				t.Fatalf("control (a snapshot per table): orders %d of %d, items %d of %d+3; snapshots %v, %v; %d xmins held between the tables",
					o.SourceRows, orders, i.SourceRows, items, o.SnapshotAt, i.SnapshotAt, xmins)
			}
			continue
		}
		if o.SourceRows != orders || i.SourceRows != items || !o.SnapshotAt.Equal(i.SnapshotAt) || !o.SnapshotAt.Equal(r.SnapshotAt) ||
			o.SnapshotLSN != i.SnapshotLSN {
			t.Fatalf("shared snapshot: orders %d of %d, items %d of %d (the 3 late items must not count); snapshots %v %s, %v %s",
				o.SourceRows, orders, i.SourceRows, items, o.SnapshotAt, o.SnapshotLSN, i.SnapshotAt, i.SnapshotLSN)
		}
		if xmins != 1 {
			t.Fatalf("between the tables %d other sessions hold an xmin, want 1 (the shared snapshot)", xmins)
		}
	}
}

// TestTablesVerifyCLI: `greenswap verify NAME` of a migration of several
// tables with one row of green order_items tampered with: the text has a
// section per table in dependency order, orders IDENTICAL, order_items
// DIFFERENT naming the key, the overall verdict, exit 1; --json is the
// overall verdict with a "tables" array of the one-table documents, exit
// 1; --repair exits 0 and a new --json says ok.
func TestTablesVerifyCLI(t *testing.T) {
	t.Parallel()
	bin := syncBuildCLI(t)
	pool, dsn, _, _ := syncedTables(t, "oic", 1000, 2, 0)
	id := tablesTamper(t, pool, dsn, "oic")

	r := syncStartCLI(t, bin, dsn, "verify", "oic")
	if code := r.wait(t, time.Minute); code != int(exitcode.Failed) {
		t.Fatalf("verify of a tampered table: exit %d, want %d\n%s\n%s", code, exitcode.Failed, r.stdout.String(), r.stderr.String())
	}
	out := r.stdout.String()
	orders, items, total := strings.Index(out, "== public.orders =="), strings.Index(out, "== public.order_items =="), strings.Index(out, "== all tables ==")
	if orders < 0 || items < orders || total < items {
		t.Fatalf("want a section per table in dependency order, then the totals:\n%s", out)
	}
	if s := out[orders:items]; !strings.Contains(s, "IDENTICAL") || strings.Contains(s, "DIFFERENT") {
		t.Fatalf("orders' section:\n%s", s)
	}
	if s := out[items:total]; !strings.Contains(s, fmt.Sprintf("id=%d", id)) || !strings.Contains(s, "different: qty") || !strings.Contains(s, "DIFFERENT: 1 difference(s)") {
		t.Fatalf("order_items' section lacks the key %d, the column or the verdict:\n%s", id, s)
	}
	if s := out[total:]; !strings.Contains(s, "DIFFERENT: public.order_items (1 difference(s)); identical: public.orders; `greenswap verify oic --repair`") {
		t.Fatalf("overall verdict:\n%s", s)
	}

	r = syncStartCLI(t, bin, dsn, "verify", "oic", "--json")
	if code := r.wait(t, time.Minute); code != int(exitcode.Failed) {
		t.Fatalf("verify --json: exit %d, want %d\n%s", code, exitcode.Failed, r.stderr.String())
	}
	var doc struct {
		Migration  string   `json:"migration"`
		OK         *bool    `json:"ok"`
		SnapshotAt string   `json:"snapshot_at"`
		Different  []string `json:"different_tables"`
		Diffs      int      `json:"difference_count"`
		Tables     []struct {
			Table       string   `json:"table"`
			OK          *bool    `json:"ok"`
			Source      string   `json:"source"`
			KeyColumns  []string `json:"key_columns"`
			SnapshotAt  string   `json:"snapshot_at"`
			Differences []struct {
				Kind string   `json:"kind"`
				Key  []string `json:"key"`
			} `json:"differences"`
		} `json:"tables"`
	}
	if err := json.Unmarshal([]byte(r.stdout.String()), &doc); err != nil {
		t.Fatalf("--json: %v\n%s", err, r.stdout.String())
	}
	if doc.Migration != "oic" || doc.OK == nil || *doc.OK || doc.Diffs != 1 || len(doc.Different) != 1 || doc.Different[0] != "public.order_items" || len(doc.Tables) != 2 {
		t.Fatalf("--json document:\n%s", r.stdout.String())
	}
	o, it := doc.Tables[0], doc.Tables[1]
	if o.Table != "public.orders" || o.OK == nil || !*o.OK || o.Source != "gs_oic_blue.orders" || len(o.Differences) != 0 || o.SnapshotAt != doc.SnapshotAt {
		t.Fatalf("--json orders: %+v", o)
	}
	if it.Table != "public.order_items" || it.OK == nil || *it.OK || len(it.KeyColumns) != 1 || it.KeyColumns[0] != "id" || it.SnapshotAt != doc.SnapshotAt ||
		len(it.Differences) != 1 || it.Differences[0].Kind != "different" || it.Differences[0].Key[0] != fmt.Sprint(id) {
		t.Fatalf("--json order_items: %+v", it)
	}

	r = syncStartCLI(t, bin, dsn, "verify", "oic", "--repair")
	if code := r.wait(t, time.Minute); code != 0 {
		t.Fatalf("verify --repair: exit %d\n%s\n%s", code, r.stdout.String(), r.stderr.String())
	}
	r = syncStartCLI(t, bin, dsn, "verify", "oic", "--json")
	if code := r.wait(t, time.Minute); code != 0 || !strings.Contains(r.stdout.String(), `"different_tables": []`) {
		t.Fatalf("verify after the repair: exit %d\n%s", code, r.stdout.String())
	}
}
