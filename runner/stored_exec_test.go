package runner

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/spec"
)

// TestStoredSpecProbesNeverRun (break7 finding 07): a role with the
// operator grants the runbook documents on greenswap.migrations (SELECT,
// INSERT, UPDATE) rewrites the stored spec's guard.probe_sql and
// guard.probe_cmd. The superuser operator then runs cutover --guard,
// rollback, sync (resumed from the spec file), verify, cutover again and
// finalize. The oracle is outside greenswap: the planted SQL would insert
// a row into a table the role cannot write, the planted command would
// create a file; neither may exist afterwards, and cutover must say which
// stored probes it did not run. On the code before, the guard window ran
// both (a row, a file).
func TestStoredSpecProbesNeverRun(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := syncNewDB(t)
	coExec(t, pool, syncOrdersTable(500, false))
	env := coEnv(t, dsn)
	name := "stored_probe"
	specYAML := syncOrdersSpec(name, false)
	coSync(t, env, specYAML)

	role := fmt.Sprintf("gs_ops_%d", time.Now().UnixNano()%1e9)
	coExec(t, pool, "CREATE ROLE "+role+" NOLOGIN")
	t.Cleanup(func() {
		_, _ = pool.Exec(context.Background(), "DROP OWNED BY "+role)
		_, _ = pool.Exec(context.Background(), "DROP ROLE "+role)
	})
	coExec(t, pool, "GRANT USAGE ON SCHEMA greenswap TO "+role+"; GRANT SELECT, INSERT, UPDATE ON greenswap.migrations TO "+role+
		"; GRANT SELECT, INSERT ON greenswap.events TO "+role+"; GRANT USAGE, SELECT ON SEQUENCE greenswap.events_id_seq TO "+role)
	coExec(t, pool, "CREATE TABLE public.planted_sql_ran (at timestamptz DEFAULT now())") // the role has no privilege on it
	marker := filepath.Join(t.TempDir(), "planted_cmd_ran")

	plant := func() {
		t.Helper()
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		coExec(t, tx, "SET LOCAL ROLE "+role) // the write is the role's, with only its grants
		coExec(t, tx, `UPDATE greenswap.migrations
		                  SET spec = jsonb_set(jsonb_set(spec, '{guard,probe_sql}', to_jsonb($2::text)), '{guard,probe_cmd}', to_jsonb($3::text))
		                WHERE name = $1`, name,
			"WITH x AS (INSERT INTO public.planted_sql_ran DEFAULT VALUES RETURNING 1) SELECT true FROM x",
			"touch '"+marker+"'; true")
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	ran := func(after string) {
		t.Helper()
		if n := coInt(t, pool, "SELECT count(*) FROM public.planted_sql_ran"); n != 0 {
			t.Fatalf("after %s: the planted probe_sql ran %d times as greenswap's role", after, n)
		}
		if _, err := os.Stat(marker); err == nil {
			t.Fatalf("after %s: the planted probe_cmd ran on the operator's host", after)
		}
	}
	bounds := gwBounds(spec.GuardOptions{})

	plant()
	res, err := Cutover(ctx, env, name, CutoverOptions{Guard: CutoverGuardOptions{Window: time.Second, Bounds: bounds}})
	if err != nil {
		t.Fatalf("cutover --guard: %v", err)
	}
	ran("cutover --guard")
	if res.Guard == nil || res.Guard.Outcome != "passed" || res.Guard.Samples == 0 {
		t.Fatalf("the guard window did not watch: %+v", res.Guard)
	}
	w := strings.Join(res.Warnings, "\n")
	for _, f := range []string{"guard.probe_sql", "guard.probe_cmd"} {
		if !strings.Contains(w, "does not run the stored spec's "+f) {
			t.Errorf("cutover does not say it ignored the stored %s: %q", f, res.Warnings)
		}
	}

	plant()
	if _, err := Rollback(ctx, env, name, SwapCommandOptions{}); err != nil {
		t.Fatalf("rollback: %v", err)
	}
	ran("rollback")
	plant()
	// A resumed sync takes its guard from the file it is given, not the row.
	if _, err := Sync(ctx, env, syncSpec(t, specYAML), SyncOptions{}); err != nil {
		t.Fatalf("sync (resumed): %v", err)
	}
	ran("sync")
	plant()
	coVerify(t, env, syncSpec(t, specYAML))
	ran("verify")
	plant()
	if _, err := Cutover(ctx, env, name, CutoverOptions{Guard: CutoverGuardOptions{Window: 500 * time.Millisecond, Bounds: bounds}}); err != nil {
		t.Fatalf("second cutover --guard: %v", err)
	}
	ran("the second cutover --guard")
	plant()
	if _, err := Finalize(ctx, env, name, FinalizeOptions{Yes: true, QuietPeriod: -1}); err != nil {
		t.Fatalf("finalize: %v", err)
	}
	ran("finalize")
	if st := gwState(t, env, name); st != state.Finalized {
		t.Fatalf("state %s, want finalized", st)
	}
}
