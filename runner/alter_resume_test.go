package runner

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/testkit"
)

// TestRunAlterResumeRechecksPlan: a run --alter interrupted before its
// in-place steps (their lock never granted: exit 5) resumes from the
// recorded plan only if each step not yet started still holds on the
// table as it is now. The app's deploy in between drops a column a step
// is about (the step would fail), or changes a column so that a step
// recorded metadata-only would now rewrite: the resume refuses with an
// error naming the step, and runs nothing. Unchanged, it resumes and runs.
func TestRunAlterResumeRechecksPlan(t *testing.T) {
	pool, dsn := syncNewDB(t)
	env := syncTestEnv(t, dsn)
	ctx := context.Background()
	cases := []struct {
		name, deploy, want string
	}{
		{"dropped", "ALTER TABLE public.r_dropped DROP COLUMN note", `"ALTER COLUMN note SET DEFAULT 'x'"`},
		{"retyped", "ALTER TABLE public.r_retyped ALTER COLUMN code TYPE text", `"ALTER COLUMN code TYPE varchar(30)"`},
		{"unchanged", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			table := "r_" + tc.name
			pgtest.Exec(t, dsn, "CREATE TABLE public."+table+" (id int PRIMARY KEY, code varchar(10), note text); INSERT INTO public."+table+" VALUES (1, 'a', 'b')")
			sql := "ALTER TABLE public." + table + " ADD COLUMN tag text, ALTER COLUMN note SET DEFAULT 'x', ALTER COLUMN code TYPE varchar(30)"
			// A reader holding ACCESS SHARE keeps ADD COLUMN from its lock.
			tx, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "LOCK TABLE public."+table+" IN ACCESS SHARE MODE"); err != nil {
				t.Fatal(err)
			}
			_, err = RunAlter(ctx, env, sql, AlterRunOptions{LockTimeout: 50 * time.Millisecond, MaxAttempts: 1})
			_ = tx.Rollback(ctx)
			if exitcode.Of(err) != exitcode.LockTimeout {
				t.Fatalf("first run: exit %d (%v), want the lock timeout", exitcode.Of(err), err)
			}
			if tc.deploy != "" {
				pgtest.Exec(t, dsn, tc.deploy)
			}
			res, err := RunAlter(ctx, env, sql, AlterRunOptions{})
			tagged := testkit.Count(t, pool, `SELECT count(*) FROM pg_attribute WHERE attrelid = $1::regclass AND attname = 'tag' AND NOT attisdropped`, "public."+table)
			if tc.want == "" {
				if err != nil || !res.Resumed || tagged != 1 {
					t.Fatalf("unchanged table: resumed %v, tag added %d, err %v", res != nil && res.Resumed, tagged, err)
				}
				return
			}
			if err == nil {
				t.Fatal("the resume ran a stale plan")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "no longer holds") || strings.Contains(err.Error(), "\n") {
				t.Errorf("error does not name the step in one line: %v", err)
			}
			if tagged != 0 {
				t.Error("the resume ran a step before refusing")
			}
		})
	}
}
