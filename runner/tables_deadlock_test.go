package runner

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/state"
)

// TestTablesSyncStepsDeadlockNoApp (issue 14): the steps that lock every
// table of a migration of several tables (adopt, create-green with the
// sync triggers on every blue, enable-reverse on every green, the swap
// both ways) take all their locks up front, the first waited for and the
// others NOWAIT, released and taken again when one is busy. App
// transactions that write the tables in the reverse of that order
// (order_items, a pause, then orders: each holds its first table's lock
// while it asks for the second) run on 6 connections throughout: none of
// them ever gets a deadlock (40P01), none fails at all, every step
// completes, and afterwards green equals blue (EXCEPT diff per table).
func TestTablesSyncStepsDeadlockNoApp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := syncNewDB(t)
	coExec(t, pool, tablesSchema(400, 2))
	env := syncTestEnv(t, dsn)
	app, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ops, deadlocks atomic.Int64
	var mu sync.Mutex
	var errs []error
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 14))
			for {
				select {
				case <-stop:
					return
				default:
				}
				err := func() error {
					tx, err := app.Begin(ctx)
					if err != nil {
						return err
					}
					defer tx.Rollback(ctx)
					id := 1 + rng.IntN(400)
					if _, err := tx.Exec(ctx, `UPDATE public.order_items SET qty = qty + 1 WHERE order_id = $1`, id); err != nil {
						return err
					}
					if _, err := tx.Exec(ctx, `SELECT pg_catalog.pg_sleep(0.003)`); err != nil {
						return err
					}
					if _, err := tx.Exec(ctx, `UPDATE public.orders SET amount = amount + 1 WHERE id = $1`, id); err != nil {
						return err
					}
					return tx.Commit(ctx)
				}()
				if err == nil {
					ops.Add(1)
					continue
				}
				if db.SQLState(err) == db.DeadlockDetected {
					deadlocks.Add(1)
				}
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	halt := func() {
		close(stop)
		wg.Wait()
	}
	stopped := false
	defer func() {
		if !stopped {
			halt()
		}
	}()
	step := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s under reverse-order app transactions: %v", what, err)
		}
	}
	st, err := Sync(ctx, env, syncSpec(t, tablesSpec("dl")), SyncOptions{BatchSize: 200})
	step("sync", err)
	if st.State != state.Synced {
		t.Fatalf("sync ended %s", st.State)
	}
	before := ops.Load()
	_, err = VerifyMigration(ctx, env, "dl", VerifyOptions{})
	step("verify", err)
	_, err = Cutover(ctx, env, "dl", CutoverOptions{SkipVerify: true})
	step("cutover", err)
	_, err = Rollback(ctx, env, "dl", SwapCommandOptions{})
	step("rollback", err)
	halt()
	stopped = true
	if n := deadlocks.Load(); n > 0 {
		t.Fatalf("%d app transactions were chosen as a deadlock's victim (40P01), first errors: %v", n, errs[:min(3, len(errs))])
	}
	if len(errs) > 0 {
		t.Fatalf("%d app transactions failed, first: %v", len(errs), errs[0])
	}
	if ops.Load() == 0 || ops.Load() == before {
		t.Fatalf("the app committed %d transactions (%d after sync): the workload did not run through the steps", ops.Load(), ops.Load()-before)
	}
	if o, i := tablesDiff(t, pool, "dl"); o != 0 || i != 0 {
		t.Fatalf("green differs from blue: %d orders, %d items", o, i)
	}
	t.Logf("app: %d transactions, none failed", ops.Load())
}
