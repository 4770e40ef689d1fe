package runner

import (
	"context"
	"strings"
	"testing"

	"github.com/greenswap/greenswap/alter"
	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/testkit"
)

// TestRunAlterMixedUntilSynced: a mixed ALTER (one metadata-only
// subcommand, one that rewrites) under 8 writers through the app name:
// the in-place part runs on blue first, without a rewrite, the blue-green
// part syncs green from the derived spec, and blue mapped forward (written
// out by hand) equals green both ways (EXCEPT). Run again with the same
// ALTER, it resumes from the recorded plan and has nothing left to do;
// without --until it then verifies and cuts over.
func TestRunAlterMixedUntilSynced(t *testing.T) {
	pool, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, syncOrdersTable(20000, false))
	env := syncTestEnv(t, dsn)
	ctx := context.Background()
	const sql = "ALTER TABLE public.orders ADD COLUMN tag text, ALTER COLUMN amount TYPE bigint"
	var node uint32
	if err := pool.QueryRow(ctx, `SELECT relfilenode FROM pg_class WHERE oid = 'public.orders'::regclass`).Scan(&node); err != nil {
		t.Fatal(err)
	}
	w := startSyncWorkload(t, dsn, "orders", false, 8, 18)
	res, err := RunAlter(ctx, env, sql, AlterRunOptions{UntilSynced: true})
	if err != nil {
		t.Fatal(err)
	}
	// A column added in place changes the row type under the workload's
	// prepared SELECT * and INSERT … RETURNING *: each session's cached
	// statement fails once with 0A000 and is prepared again (as after the
	// plain ALTER; the plan's warning says so). Nothing else may fail.
	var replanned int
	for _, err := range w.stop() {
		if db.SQLState(err) != "0A000" {
			t.Fatalf("workload error: %v", err)
		}
		replanned++
	}
	if replanned > 8*2 {
		t.Errorf("%d cached-plan errors: more than one per session and statement", replanned)
	}
	if w.ops.Load() == 0 {
		t.Fatal("the workload did nothing")
	}
	p := res.Plan
	if p.Order != alter.InPlaceFirst || len(p.Steps) != 2 || p.Steps[0].Strategy != alter.InPlace || p.Steps[1].Strategy != alter.BlueGreen {
		t.Fatalf("plan: order %s, steps %+v", p.Order, p.Steps)
	}
	if len(res.InPlace) != 1 || res.InPlace[0].Skipped || res.Sync == nil {
		t.Fatalf("in place %+v, sync %+v", res.InPlace, res.Sync)
	}
	name := res.Migration
	// The in-place ADD COLUMN did not rewrite blue (moved, not copied, to its version schema).
	var blueNode uint32
	if err := pool.QueryRow(ctx, `SELECT relfilenode FROM pg_class WHERE oid = to_regclass($1)`, "gs_"+name+"_blue.orders").Scan(&blueNode); err != nil {
		t.Fatal(err)
	}
	if blueNode != node {
		t.Errorf("blue was rewritten: relfilenode %d → %d", node, blueNode)
	}
	blue := "SELECT id, tenant, email, amount::bigint AS amount, note, created_at, tag FROM gs_" + name + "_blue.orders"
	green := "SELECT id, tenant, email, amount, note, created_at, tag FROM gs_" + name + "_green.orders"
	if d := testkit.Diff(t, pool, blue, green); d != 0 {
		t.Fatalf("%d rows differ between blue and green", d)
	}
	if n := testkit.Count(t, pool, `SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = 'amount' AND atttypid = 'bigint'::regtype`,
		"gs_"+name+"_green.orders"); n != 1 {
		t.Error("green's amount is not bigint")
	}
	if n := testkit.Count(t, pool, `SELECT count(*) FROM greenswap.events WHERE migration = $1 AND step = $2 AND outcome = 'ok'`, name, alter.EventInPlace); n != 1 {
		t.Errorf("%d in-place events, want 1", n)
	}
	// Again: the recorded plan, nothing run twice.
	again, err := RunAlter(ctx, env, sql, AlterRunOptions{UntilSynced: true})
	if err != nil {
		t.Fatal(err)
	}
	if !again.Resumed || len(again.InPlace) != 1 || !again.InPlace[0].Skipped || !again.Sync.AlreadySynced {
		t.Fatalf("second run: resumed %v, in place %+v, sync %+v", again.Resumed, again.InPlace, again.Sync)
	}
	// Without --until: verify passes and cutover swaps the app name to green.
	done, err := RunAlter(ctx, env, sql, AlterRunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if done.Verify == nil || !done.Verify.OK() || done.Cutover == nil {
		t.Fatalf("through cutover: verify %+v, cutover %+v", done.Verify, done.Cutover)
	}
	if n := testkit.Count(t, pool, `SELECT count(*) FROM pg_attribute WHERE attrelid = 'public.orders'::regclass AND attname = 'amount' AND atttypid = 'bigint'::regtype`); n != 1 {
		t.Error("after cutover the app name does not show amount as bigint")
	}
	// Another ALTER under the same name is refused, nothing changed.
	if _, err := RunAlter(ctx, env, "ALTER TABLE public.orders ADD COLUMN other text", AlterRunOptions{Name: name}); err == nil {
		t.Fatal("another ALTER under the same name was accepted")
	}
}

// TestAlterOnManagedTableNamesTheMigration: once a migration has adopted a
// table, its app name is greenswap's view; an ALTER of it (run --alter, or
// plan --alter) is refused with exit 2 and a line naming the migration and
// what to do, and nothing is recorded or changed (break8 05: it used to say
// only that the name "is a view, not a table", exit 1).
func TestAlterOnManagedTableNamesTheMigration(t *testing.T) {
	t.Parallel()
	pool, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, syncOrdersTable(300, false))
	env := syncTestEnv(t, dsn)
	ctx := context.Background()
	if _, err := Sync(ctx, env, syncSpec(t, syncOrdersSpec("held", false)), SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	before := coCatalog(t, pool)
	events := testkit.Count(t, pool, `SELECT count(*) FROM greenswap.events`)
	const sql = "ALTER TABLE public.orders ALTER COLUMN amount TYPE bigint"
	for what, run := range map[string]func() error{
		"run --alter": func() error { _, err := RunAlter(ctx, env, sql, AlterRunOptions{}); return err },
		"plan --alter": func() error {
			_, err := PlanAlter(ctx, env, sql, nil, "", PlanOptions{})
			return err
		},
	} {
		err := run()
		if err == nil {
			t.Fatalf("%s of a managed table succeeded", what)
		}
		if code := exitcode.Of(err); code != exitcode.BadInput {
			t.Errorf("%s: exit %d, want %d (%v)", what, code, exitcode.BadInput, err)
		}
		if msg := err.Error(); !strings.Contains(msg, "managed by greenswap migration held") || !strings.Contains(msg, "finalize held") || strings.Contains(msg, "\n") {
			t.Errorf("%s: error %q does not name the migration and what to do on one line", what, msg)
		}
	}
	if after := coCatalog(t, pool); after != before {
		t.Errorf("the catalog changed:\n%s", coDiff(before, after))
	}
	if n := testkit.Count(t, pool, `SELECT count(*) FROM greenswap.events`); n != events {
		t.Errorf("%d events recorded by refused commands", n-events)
	}
}
