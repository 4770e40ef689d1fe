package guard_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/greenswap/greenswap/guard"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/testkit"
	"github.com/greenswap/greenswap/spec"
)

// TestRollbackRateNeedsMinRollbacks (break7 finding 04): pg_stat_database
// is database-wide, so a role with no privilege on any table adds
// rollbacks of its own. A small storm of them (BEGIN; SELECT
// txid_current(); ROLLBACK, below guard.MinRollbacks in the window) is
// counted and pushes the share past the bound, but does not trip; an
// application's error storm (inserts failing after writing) still does.
// On the code before, the small storm tripped.
func TestRollbackRateNeedsMinRollbacks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	if _, err := pool.Exec(ctx, "CREATE TABLE public.orders (id int PRIMARY KEY, n int NOT NULL CHECK (n > 0))"); err != nil {
		t.Fatal(err)
	}
	role := fmt.Sprintf("gs_noprivs_%d", time.Now().UnixNano()%1e9)
	if _, err := pool.Exec(ctx, "CREATE ROLE "+role+" NOLOGIN"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = pool.Exec(context.Background(), "DROP ROLE "+role) })
	s := &guard.Sampler{Q: pool, Opts: only(spec.GuardOptions{RollbackRate: 0.1})}
	bl, err := s.TakeBaseline(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rollbackSignal := func(want func(guard.Signal) bool) guard.Signal {
		t.Helper()
		var last guard.Signal
		testkit.WaitFor(t, 20*time.Second, "the rollbacks counted", func() bool {
			sigs, err := s.Sample(ctx, bl)
			if err != nil {
				t.Fatal(err)
			}
			for _, sg := range sigs {
				if sg.Name == guard.SigRollbackRate {
					last = sg
				}
			}
			return want(last)
		})
		return last
	}

	stranger := connAs(t, dsn, "stranger")
	if _, err := stranger.Exec(ctx, "SET ROLE "+role); err != nil {
		t.Fatal(err)
	}
	small := guard.MinRollbacks / 2
	for range small {
		if _, err := stranger.Exec(ctx, "BEGIN; SELECT txid_current(); ROLLBACK"); err != nil {
			t.Fatal(err)
		}
	}
	var rb int
	sg := rollbackSignal(func(sg guard.Signal) bool {
		_, err := fmt.Sscanf(sg.Reason, "%d of", &rb)
		return err == nil && rb >= small
	})
	if sg.Value <= sg.Bound || sg.Tripped {
		t.Fatalf("the small storm: %+v; want its share past the bound and no trip (below %d rollbacks)", sg, guard.MinRollbacks)
	}

	app := connAs(t, dsn, "app")
	for i := range 4 * guard.MinRollbacks {
		_, err := app.Exec(ctx, fmt.Sprintf("BEGIN; INSERT INTO public.orders VALUES (%d, 1); INSERT INTO public.orders VALUES (%d, 0); COMMIT", i, i+100000))
		if err == nil || !strings.Contains(err.Error(), "23514") {
			t.Fatalf("the app's failing write: %v", err)
		}
		_, _ = app.Exec(ctx, "ROLLBACK")
	}
	if sg := rollbackSignal(func(sg guard.Signal) bool { return sg.Tripped }); sg.Value <= sg.Bound {
		t.Fatalf("the app's error storm: %+v", sg)
	}
}
