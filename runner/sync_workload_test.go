package runner

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/internal/testkit"
)

// testSeeds are the workload seeds: GREENSWAP_SEEDS="1,2,3" or a count "20".
func syncSeeds(t *testing.T, def int) []uint64 { return testkit.Seeds(t, def) }

// A randomized workload through the app name runs from before adopt to
// after synced; then writes through both version schemas for a while.
// Afterwards green must equal blue mapped through the forward expressions
// (a hand-written EXCEPT diff both ways), and the application must have
// seen no error but deadlocks between its own multi-row writers.
func TestSyncUnderConcurrentWorkload(t *testing.T) {
	t.Parallel()
	for _, seed := range syncSeeds(t, 4) {
		composite := seed%2 == 0
		t.Run(fmt.Sprintf("seed=%d,composite=%v", seed, composite), func(t *testing.T) {
			pool, dsn := syncNewDB(t)
			pgtest.Exec(t, dsn, syncOrdersTable(20000, composite))
			env := syncTestEnv(t, dsn)
			app := startSyncWorkload(t, dsn, "orders", composite, 4, seed)
			time.Sleep(150 * time.Millisecond) // the workload is under way before adopt
			before := app.ops.Load()
			t0 := time.Now()
			stats, err := Sync(context.Background(), env, syncSpec(t, syncOrdersSpec("w", composite)), SyncOptions{BatchSize: 250})
			if err != nil {
				t.Fatal(err)
			}
			during := app.ops.Load() - before
			if stats.State != state.Synced || stats.Batches < 40 {
				t.Fatalf("stats %+v", stats)
			}
			// Bidirectional now: a second workload writes through green's
			// version schema while the first goes on through the app name.
			greenDSN := dsn + "&options=-c%20search_path%3Dgs_w_green"
			greenSide := startSyncWorkloadOpt(t, greenDSN, "orders", composite, true, 2, seed+1000)
			time.Sleep(700 * time.Millisecond)
			errs := append(app.stop(), greenSide.stop()...)
			for i, err := range errs {
				if i < 5 {
					t.Errorf("workload error: %v", err)
				}
			}
			if len(errs) > 0 {
				t.Fatalf("%d workload errors", len(errs))
			}
			if d := syncOrdersDiff(t, pool, "w"); d != 0 {
				t.Fatalf("green differs from blue in %d rows", d)
			}
			t.Logf("sync %s (%d batches, %d rows, %d retries, %d redone); app: %d ops during sync, %d total, %d deadlocks; green side: %d ops",
				time.Since(t0).Round(time.Millisecond), stats.Batches, stats.Rows, stats.Retries, stats.Redone, during, app.ops.Load(),
				app.deadlocks.Load()+greenSide.deadlocks.Load(), greenSide.ops.Load())
			if during < 200 {
				t.Fatalf("only %d workload operations ran during the sync", during)
			}
			if greenSide.ops.Load() < 20 {
				t.Fatalf("only %d operations through green", greenSide.ops.Load())
			}
		})
	}
}

// Clients using the app name with prepared statements (pgx's statement
// cache: SELECT *, INSERT ... RETURNING *, updates, deletes) see no error
// while the table is adopted and green is created under them.
func TestSyncAppKeepsWorkingThroughAdopt(t *testing.T) {
	t.Parallel()
	pool, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, syncOrdersTable(3000, false))
	env := syncTestEnv(t, dsn)
	app := startSyncWorkload(t, dsn, "orders", false, 4, 42)
	syncWaitFor(t, 10*time.Second, "warm statement caches", func() bool { return app.ops.Load() > 400 })
	if _, err := Sync(context.Background(), env, syncSpec(t, syncOrdersSpec("a", false)), SyncOptions{StopAfterSetup: true}); err != nil {
		t.Fatal(err)
	}
	n := app.ops.Load()
	syncWaitFor(t, 10*time.Second, "the workload to go on", func() bool { return app.ops.Load() > n+400 })
	if errs := app.stop(); len(errs) > 0 {
		t.Fatalf("%d errors, first: %v", len(errs), errs[0])
	}
	if k := syncCount(t, pool, `SELECT count(*) FROM pg_views WHERE schemaname = 'public' AND viewname = 'orders'`); k != 1 {
		t.Fatal("orders is not a view")
	}
	t.Logf("%d operations, %d deadlocks between workers", app.ops.Load(), app.deadlocks.Load())
}
