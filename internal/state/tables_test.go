package state

import (
	"context"
	"slices"
	"testing"

	"github.com/greenswap/greenswap/internal/pgtest"
)

// TestTablesProgressInState: a migration of several tables keeps each
// member's cursor, rows and done flag in the tables column, the row's
// rows_copied is their sum, the last member's last batch moves the phase;
// the foreign keys among the greens round-trip; a row written by a
// greenswap whose state schema had neither column loads (no members), and
// Upgrade adds them.
func TestTablesProgressInState(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	if err := Ensure(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(ctx, pool, "m1", "public.orders", "trigger", map[string]string{"name": "m1"}); err != nil {
		t.Fatal(err)
	}
	fks := []GreenFK{{Table: "public.order_items", Name: "order_items_order_id_fkey", Def: "FOREIGN KEY (order_id) REFERENCES gs_m1_green.orders(id)"}}
	if err := StartTables(ctx, pool, "m1", "backfill", []TableEstimate{{"public.orders", 100}, {"public.order_items", 300}}, fks); err != nil {
		t.Fatal(err)
	}
	steps := []TableCheckpoint{
		{Table: "public.orders", Cursor: []string{"50"}, RowsCopied: 50, BatchSize: 50},
		{Table: "public.orders", Cursor: []string{"100"}, RowsCopied: 100, BatchSize: 50, Done: true},
		{Table: "public.order_items", Cursor: []string{"7"}, RowsCopied: 120, BatchSize: 120},
	}
	for _, cp := range steps {
		if err := SetTableCheckpoint(ctx, pool, "m1", cp); err != nil {
			t.Fatal(err)
		}
	}
	m, err := Get(ctx, pool, "m1")
	if err != nil {
		t.Fatal(err)
	}
	tables, err := m.Tables()
	if err != nil {
		t.Fatal(err)
	}
	o, it := tables["public.orders"], tables["public.order_items"]
	if !o.Done || o.RowsCopied != 100 || o.Order != 0 || it.Done || it.RowsCopied != 120 || it.Order != 1 || !slices.Equal(it.Cursor, []string{"7"}) || it.RowsEstimate != 300 {
		t.Fatalf("tables = %+v", tables)
	}
	if m.RowsCopied != 220 || m.RowsEstimate != 400 || m.Phase != "backfill" || m.BackfillDoneAt != nil {
		t.Fatalf("totals: copied %d estimate %d phase %q done %v", m.RowsCopied, m.RowsEstimate, m.Phase, m.BackfillDoneAt)
	}
	if err := SetTableCheckpoint(ctx, pool, "m1", TableCheckpoint{Table: "public.order_items", Cursor: []string{"7"}, RowsCopied: 300, Done: true, Last: true, Next: "indexes"}); err != nil {
		t.Fatal(err)
	}
	if err := AddTableBuiltIndex(ctx, pool, "m1", "public.order_items", 1, "items_idx"); err != nil {
		t.Fatal(err)
	}
	if err := AddTableBuiltIndex(ctx, pool, "m1", "public.nope", 0, "x"); err == nil {
		t.Fatal("AddTableBuiltIndex of a table that is no member succeeded")
	}
	fks[0].Added, fks[0].Validated = true, true
	if err := SetGreenFKs(ctx, pool, "m1", fks); err != nil {
		t.Fatal(err)
	}
	if m, err = Get(ctx, pool, "m1"); err != nil {
		t.Fatal(err)
	}
	tables, _ = m.Tables()
	built, err := tables["public.order_items"].BuiltIndexesOf()
	if err != nil || built[1] != "items_idx" || m.Phase != "indexes" || m.BackfillDoneAt == nil || m.RowsCopied != 400 {
		t.Fatalf("after the last batch: built %v %v, phase %q, done %v, copied %d", built, err, m.Phase, m.BackfillDoneAt, m.RowsCopied)
	}
	got, err := m.GreenFKs()
	if err != nil || len(got) != 1 || got[0] != fks[0] {
		t.Fatalf("GreenFKs = %+v, %v", got, err)
	}

	// A state schema from before the columns: a one-table row loads.
	pgtest.Exec(t, dsn, `ALTER TABLE greenswap.migrations DROP COLUMN tables, DROP COLUMN green_fks;
		INSERT INTO greenswap.migrations (name, app_table, mode, spec, state, phase, rows_copied)
		VALUES ('old', 'public.orders', 'trigger', '{"name":"old"}', 'syncing', 'backfill', 7)`)
	old, err := Get(ctx, pool, "old")
	if err != nil {
		t.Fatalf("a row of the old state schema does not load: %v", err)
	}
	if tb, err := old.Tables(); err != nil || len(tb) != 0 || old.RowsCopied != 7 {
		t.Fatalf("old row: tables %v, %v, copied %d", tb, err, old.RowsCopied)
	}
	if f, err := old.GreenFKs(); err != nil || len(f) != 0 {
		t.Fatalf("old row: fks %v, %v", f, err)
	}
	if err := Upgrade(ctx, pool); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_attribute WHERE attrelid = 'greenswap.migrations'::regclass
		AND attname IN ('tables', 'green_fks') AND NOT attisdropped`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("after Upgrade: %d of the 2 columns, %v", n, err)
	}
	if old, err = Get(ctx, pool, "old"); err != nil || string(old.TablesJSON) != "{}" {
		t.Fatalf("old row after Upgrade: %s, %v", old.TablesJSON, err)
	}
}
