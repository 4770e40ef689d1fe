package runner

import (
	"context"
	"testing"
	"time"

	"github.com/greenswap/greenswap/internal/state"
)

// The whole trigger-mode lifecycle works whatever pgx query exec mode the
// connection string selects: simple_protocol and exec are what a DSN behind
// a pooler usually carries, and in both pgx knows no parameter's type, so a
// JSON value sent as bytes or a Go slice reached jsonb columns as bytea or
// text[] literals ("invalid input syntax for type json", issue 19).
func TestLifecycleUnderEveryExecMode(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"simple_protocol", "exec", "describe_exec", "cache_describe", "cache_statement"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			pool, dsn := syncNewDB(t)
			coExec(t, pool, syncOrdersTable(3000, false))
			env := coEnv(t, dsn+"&default_query_exec_mode="+mode)
			spec := coSync(t, env, syncOrdersSpec("xm", false))
			if _, err := Cutover(ctx, env, spec.Name, CutoverOptions{}); err != nil {
				t.Fatalf("cutover: %v", err)
			}
			if _, err := Rollback(ctx, env, spec.Name, SwapCommandOptions{}); err != nil {
				t.Fatalf("rollback: %v", err)
			}
			coVerify(t, env, spec)
			if _, err := Cutover(ctx, env, spec.Name, CutoverOptions{}); err != nil {
				t.Fatalf("second cutover: %v", err)
			}
			if _, err := Finalize(ctx, env, spec.Name, FinalizeOptions{QuietPeriod: time.Second, SampleEvery: 100 * time.Millisecond, Yes: true}); err != nil {
				t.Fatalf("finalize: %v", err)
			}
			m, err := state.Get(ctx, pool, spec.Name)
			if err != nil || m.State != state.Finalized {
				t.Fatalf("after finalize: %+v, %v", m, err)
			}
			if n := coInt(t, pool, `SELECT count(*) FROM public.orders`); n != 3000 {
				t.Fatalf("public.orders has %d rows, want 3000", n)
			}
			if n := coInt(t, pool, `SELECT count(*) FROM greenswap.events WHERE migration = 'xm'`); n == 0 {
				t.Fatal("no events recorded")
			}
		})
	}
}
