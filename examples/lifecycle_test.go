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
	"github.com/greenswap/greenswap/spec"
)

// lifecycleExample takes a synced, verified example through cutover →
// rollback → cutover → finalize and checks that the app name ends as a
// table holding every row.
func lifecycleExample(ctx context.Context, t *testing.T, env *runner.Env, spec *spec.Spec) {
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
	if len(spec.Target.Partitions) > 0 {
		if kind != "p" {
			t.Fatalf("after finalize %s is relkind %q, want a partitioned table", app, kind)
		}
		assertPartitionsFinalized(ctx, t, env, spec)
	}
}

// assertPartitionsFinalized: every partition of target.partitions is a
// partition of the app table, in the app schema, and every target.indexes
// index is valid on the parent with a valid index on every partition,
// attached to it (pg_inherits; one level: the example's tree is flat).
func assertPartitionsFinalized(ctx context.Context, t *testing.T, env *runner.Env, s *spec.Spec) {
	t.Helper()
	app := s.AppTable()
	appRel := db.Ident(app.Schema, app.Name)
	rows, err := env.Pool.Query(ctx, `SELECT n.nspname::text, c.relname::text FROM pg_partition_tree($1::regclass) p
		JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE p.level > 0`, appRel)
	if err != nil {
		t.Fatal(err)
	}
	parts, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (spec.QualifiedName, error) {
		var q spec.QualifiedName
		return q, r.Scan(&q.Schema, &q.Name)
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(parts) != len(s.Target.Partitions) {
		t.Fatalf("after finalize %s has %d partitions, target.partitions %d", app, len(parts), len(s.Target.Partitions))
	}
	for _, p := range parts {
		if p.Schema != app.Schema {
			t.Errorf("partition %s is not in schema %s", p, app.Schema)
		}
	}
	for _, src := range s.Target.Indexes {
		st, err := spec.ParseIndexStmt(src)
		if err != nil {
			t.Fatal(err)
		}
		ix := db.Ident(app.Schema, st.Name)
		var valid bool
		if err := env.Pool.QueryRow(ctx, `SELECT indisvalid FROM pg_index WHERE indexrelid = $1::regclass AND indrelid = $2::regclass`,
			ix, appRel).Scan(&valid); err != nil || !valid {
			t.Fatalf("index %s on %s: valid=%v (%v)", ix, appRel, valid, err)
		}
		var attached int
		if err := env.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_inherits h JOIN pg_index i ON i.indexrelid = h.inhrelid
			JOIN pg_class c ON c.oid = i.indexrelid
			WHERE h.inhparent = $1::regclass AND i.indisvalid AND c.relnamespace = $2::regnamespace
			  AND i.indrelid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = $3::regclass)`,
			ix, db.Ident(app.Schema), appRel).Scan(&attached); err != nil {
			t.Fatal(err)
		}
		if attached != len(parts) {
			t.Errorf("index %s: %d of %d partitions have a valid index attached to it", ix, attached, len(parts))
		}
	}
}
