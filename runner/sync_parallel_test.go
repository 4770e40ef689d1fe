package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
	gssync "github.com/greenswap/greenswap/sync"
)

// backfillEvent is the detail of the migration's last backfill event.
func backfillEvent(t *testing.T, env *Env, name string) map[string]any {
	t.Helper()
	evs, err := state.Events(context.Background(), env.Pool, name, 1000)
	if err != nil {
		t.Fatal(err)
	}
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Step == PhaseBackfill && len(evs[i].Detail) > 0 {
			var d map[string]any
			if err := json.Unmarshal(evs[i].Detail, &d); err != nil {
				t.Fatal(err)
			}
			return d
		}
	}
	t.Fatalf("no backfill event in %+v", evs)
	return nil
}

// storedRanges reads the ranges a parallel copy recorded.
func storedRanges(t *testing.T, env *Env, name string) []gssync.Range {
	t.Helper()
	m, err := state.Get(context.Background(), env.Pool, name)
	if err != nil {
		t.Fatal(err)
	}
	_, ranges, err := gssync.ParseCursor(m.Cursor)
	if err != nil || ranges == nil {
		t.Fatalf("cursor %s: %v; want the ranges of a parallel copy", m.Cursor, err)
	}
	return ranges
}

// A randomized workload of 8 writers through the app name (inserts,
// updates, deletes, key updates, multi-row updates) races a backfill of 4
// workers, in trigger and logical mode, one-column and composite keys:
// green equals blue (EXCEPT both ways), the copy ran in several ranges on
// 4 workers, and the application saw no error.
func TestSyncParallelUnderWorkload(t *testing.T) {
	t.Parallel()
	for _, seed := range syncSeeds(t, 2) {
		for _, mode := range []string{"trigger", "logical"} {
			composite := seed%2 == 0
			t.Run(fmt.Sprintf("seed=%d,%s,composite=%v", seed, mode, composite), func(t *testing.T) {
				name := logicalName("pw")
				yaml := syncOrdersSpec(name, composite)
				if mode == "logical" {
					yaml = logicalSpec(name, composite)
				}
				pool, dsn := syncNewDB(t)
				pgtest.Exec(t, dsn, syncOrdersTable(30000, composite))
				env := syncTestEnv(t, dsn)
				app := startSyncWorkload(t, dsn, "orders", composite, 8, seed)
				time.Sleep(150 * time.Millisecond) // the workload is under way before adopt
				before := app.ops.Load()
				stats, err := Sync(context.Background(), env, syncSpec(t, yaml), SyncOptions{BatchSize: 200, Workers: 4})
				if err != nil {
					t.Fatal(err)
				}
				during := app.ops.Load() - before
				if stats.State != state.Synced {
					t.Fatalf("stats %+v", stats)
				}
				d := backfillEvent(t, env, name)
				if d["workers"] != 4.0 || d["ranges"].(float64) < 4 || d["done"] != true {
					t.Fatalf("backfill event %v: want 4 workers over 4 or more ranges", d)
				}
				time.Sleep(300 * time.Millisecond) // writes after synced, too
				errs := app.stop()
				for i, err := range errs {
					if i < 5 {
						t.Errorf("workload error: %v", err)
					}
				}
				if len(errs) > 0 {
					t.Fatalf("%d workload errors", len(errs))
				}
				if mode == "logical" {
					stopWatch, _ := startWatch(t, env, name)
					logicalWait(t, env, name)
					if err := stopWatch(); err != nil {
						t.Fatal(err)
					}
				}
				if n := syncOrdersDiff(t, pool, name); n != 0 {
					t.Fatalf("green differs from blue in %d rows", n)
				}
				if during < 200 {
					t.Fatalf("only %d workload operations ran during the sync", during)
				}
				t.Logf("%d batches, %d rows, %d retries, %d redone; backfill %v; app %d ops during sync, %d deadlocks",
					stats.Batches, stats.Rows, stats.Retries, stats.Redone, d, during, app.deadlocks.Load())
			})
		}
	}
}

// A parallel sync cancelled with several ranges partly done records each
// range in greenswap.migrations (rows_copied = green's rows = the ranges'
// sum); resumed on another number of workers, every range goes on where it
// stopped: each row copied exactly once (no batch redone, rows_copied =
// blue's rows = green's), green equal to blue.
func TestSyncParallelResumeAfterCancel(t *testing.T) {
	t.Parallel()
	const rows = 30000
	pool, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, syncOrdersTable(rows, false))
	env := syncTestEnv(t, dsn)
	sp := syncSpec(t, syncOrdersSpec("pr", false))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for ctx.Err() == nil {
			if syncRowsCopied(pool, "pr") >= rows/3 {
				cancel()
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	// A nice ratio slows the copy so that the cancel lands mid-copy.
	_, err := Sync(ctx, env, sp, SyncOptions{BatchSize: 100, Workers: 4, NiceRatio: 2})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("first run: %v; want it cancelled", err)
	}
	ranges := storedRanges(t, env, "pr")
	partly := 0
	var sum int64
	for _, r := range ranges {
		if r.Rows > 0 && !r.Done {
			partly++
		}
		sum += r.Rows
	}
	copied := syncRowsCopied(pool, "pr")
	green := syncCount(t, pool, "SELECT count(*) FROM gs_pr_green.orders")
	if partly < 2 || sum != copied || green != copied || copied >= rows {
		t.Fatalf("%d ranges partly done (%+v); ranges count %d rows, rows_copied %d, green %d", partly, ranges, sum, copied, green)
	}
	stats, err := Sync(context.Background(), env, sp, SyncOptions{BatchSize: 100, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	if stats.State != state.Synced || stats.Redone != 0 || stats.Rows != rows-copied {
		t.Fatalf("resumed: %+v after %d rows; want the other %d, none redone", stats, copied, rows-copied)
	}
	if n := syncRowsCopied(pool, "pr"); n != rows {
		t.Fatalf("rows_copied %d, want %d", n, rows)
	}
	if n := syncCount(t, pool, "SELECT count(*) FROM gs_pr_green.orders"); n != rows {
		t.Fatalf("green holds %d rows, want %d", n, rows)
	}
	if d := syncOrdersDiff(t, pool, "pr"); d != 0 {
		t.Fatalf("green differs from blue in %d rows", d)
	}
	for i, r := range storedRanges(t, env, "pr") {
		if !r.Done {
			t.Fatalf("range %d not done after synced: %+v", i, r)
		}
	}
}
