package runner

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
)

func TestStatus(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	env := testEnv(t, dsn)

	// No state schema: no migrations, and nothing is created.
	rep, err := Status(ctx, env, "")
	if err != nil {
		t.Fatal(err)
	}
	if rep.SchemaVersion != StatusSchemaVersion || rep.Migrations == nil || len(rep.Migrations) != 0 {
		t.Errorf("status without state schema = %+v", rep)
	}
	if ok, err := state.Exists(ctx, env.Pool); err != nil || ok {
		t.Errorf("status created the state schema (%v, %v)", ok, err)
	}
	if _, err := Status(ctx, env, "nope"); exitcode.Of(err) != exitcode.BadInput {
		t.Errorf("unknown name: err = %v (exit %d), want exit 2", err, exitcode.Of(err))
	}

	if err := state.Ensure(ctx, env.Pool); err != nil {
		t.Fatal(err)
	}
	if _, err := state.Create(ctx, env.Pool, "orders_v2", "public.orders", "trigger", map[string]string{"name": "orders_v2"}); err != nil {
		t.Fatal(err)
	}
	rep, err = Status(ctx, env, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Migrations) != 1 {
		t.Fatalf("migrations = %+v", rep.Migrations)
	}
	m := rep.Migrations[0]
	if m.Name != "orders_v2" || m.State != state.Planned || m.Table != "public.orders" || m.PrimarySide != "blue" ||
		m.LastEvent != nil || m.Slot != nil || m.Verify.Run || m.Progress.Percent != 0 || m.Progress.ETASeconds != nil {
		t.Errorf("planned migration = %+v", m)
	}

	// Mid-backfill, with an event and a logical slot.
	slot := fmt.Sprintf("gs_status_%d", os.Getpid()) // slot names are cluster-wide
	pgtest.Exec(t, dsn, `SELECT pg_create_logical_replication_slot('`+slot+`', 'pgoutput')`)
	if err := state.Transition(ctx, env.Pool, "orders_v2", state.Syncing); err != nil {
		t.Fatal(err)
	}
	if err := state.Update(ctx, env.Pool, "orders_v2", map[string]any{
		"phase": "backfill", "rows_copied": int64(250), "rows_estimate": int64(1000), "rows_per_sec": 50.0,
		"batch_size": 100, "throttle": "replica lag 12s", "paused": true, "slot_name": slot,
	}); err != nil {
		t.Fatal(err)
	}
	if err := state.Record(ctx, env.Pool, "orders_v2", "backfill", "ok", 0, "", nil); err != nil {
		t.Fatal(err)
	}
	if err := state.Record(ctx, env.Pool, "orders_v2", "backfill-batch", "ok", 0, "INSERT ...", map[string]int{"rows": 100}); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, dsn, `CREATE TABLE wal_filler AS SELECT g FROM generate_series(1, 1000) g`)
	rep, err = Status(ctx, env, "orders_v2")
	if err != nil {
		t.Fatal(err)
	}
	m = rep.Migrations[0]
	p := m.Progress
	if m.State != state.Syncing || m.Phase != "backfill" || p.RowsCopied != 250 || p.RowsEstimate != 1000 || p.Percent != 25 ||
		p.RowsPerSec != 50 || p.BatchSize != 100 || p.Throttle != "replica lag 12s" || !p.Paused || p.Done ||
		p.ETASeconds == nil || *p.ETASeconds != 15 {
		t.Errorf("progress = %+v (state %s, phase %s)", p, m.State, m.Phase)
	}
	if m.LastEvent == nil || m.LastEvent.Step != "backfill-batch" || m.LastEvent.Outcome != "ok" {
		t.Errorf("last event = %+v", m.LastEvent)
	}
	if s := m.Slot; s == nil || !s.Exists || s.Name != slot || s.RestartLSN == nil || s.RetainedBytes <= 0 {
		t.Errorf("slot = %+v", s)
	}

	// The slot gone (dropped by hand): status says so.
	pgtest.Exec(t, dsn, `SELECT pg_drop_replication_slot('`+slot+`')`)
	rep, err = Status(ctx, env, "orders_v2")
	if err != nil {
		t.Fatal(err)
	}
	if s := rep.Migrations[0].Slot; s == nil || s.Exists {
		t.Errorf("dropped slot = %+v", s)
	}
}
