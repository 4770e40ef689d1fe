package examples_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/runner"
	"github.com/greenswap/greenswap/shadow"
)

// lifecycleExample takes a synced, verified example through cutover →
// rollback → cutover → finalize and checks that the app name ends as a
// table holding every row.
func lifecycleExample(ctx context.Context, t *testing.T, env *runner.Env, spec *shadow.Spec) {
	t.Helper()
	app := spec.AppTable()
	appRel := db.Ident(app.Schema, app.Name)
	swap := runner.SwapCommandOptions{Out: io.Discard}
	count := func() int64 {
		var n int64
		if err := env.Pool.QueryRow(ctx, "SELECT count(*) FROM "+appRel).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := count()
	for i, step := range []string{"cutover", "rollback", "cutover"} {
		var err error
		if step == "cutover" {
			_, err = runner.Cutover(ctx, env, spec.Name, runner.CutoverOptions{SwapCommandOptions: swap})
		} else {
			_, err = runner.Rollback(ctx, env, spec.Name, swap)
		}
		if err != nil {
			t.Fatalf("step %d, %s: %v", i+1, step, err)
		}
		if n := count(); n != before {
			t.Fatalf("after %s the app name has %d rows, want %d", step, n, before)
		}
	}
	// A partitioned green: finalize moves the parent table only (ALTER TABLE
	// ... SET SCHEMA does not move partitions) and then cannot drop the
	// green schema; move the partitions first, as examples/partitioned's
	// README says.
	green := shadow.NamesFor(spec.Name, app).Green
	rows, err := env.Pool.Query(ctx, `SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = to_regclass($1)`,
		db.Ident(green.Schema, green.Name))
	if err != nil {
		t.Fatal(err)
	}
	parts, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range parts {
		if _, err := env.Pool.Exec(ctx, "ALTER TABLE "+p+" SET SCHEMA "+db.Ident(app.Schema)); err != nil {
			t.Fatalf("move partition %s: %v", p, err)
		}
	}
	if _, err := runner.Finalize(ctx, env, spec.Name, runner.FinalizeOptions{
		SwapCommandOptions: swap, QuietPeriod: time.Second, SampleEvery: 200 * time.Millisecond, Yes: true,
	}); err != nil {
		t.Fatalf("finalize: %v", err)
	}
	var kind string
	if err := env.Pool.QueryRow(ctx, `SELECT relkind::text FROM pg_class WHERE oid = $1::regclass`, appRel).Scan(&kind); err != nil {
		t.Fatal(err)
	}
	if kind != "r" && kind != "p" {
		t.Fatalf("after finalize %s is relkind %q, want a table", app, kind)
	}
	if n := count(); n != before {
		t.Fatalf("after finalize %s has %d rows, want %d", app, n, before)
	}
	n := shadow.NamesFor(spec.Name, app)
	var left int
	if err := env.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_namespace WHERE nspname IN ($1, $2)`, n.BlueSchema, n.GreenSchema).Scan(&left); err != nil || left != 0 {
		t.Fatalf("after finalize %d version schemas are left (%v)", left, err)
	}
}
