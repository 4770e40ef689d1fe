package runner

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
)

// TestCopyYieldsToTheAppInLockCycles: an application transaction that
// writes two rows against the copy's key order (the higher key, then the
// lower) closes a lock cycle with a backfill batch copying both: the
// batch's uncommitted green row holds the app's sync trigger, and the app's
// holds the batch. PostgreSQL fails whichever waiter's deadlock_timeout
// fires first, and the app waits first; so greenswap's own row writers
// (every batch, the stream's apply: rowsql.CopySettings) give up their
// wait well before deadlock_timeout, roll back and retry. 8 writers run
// such transactions through the app name throughout sync: not one app
// transaction fails (no 40P01), and green equals blue afterwards (EXCEPT
// both ways).
func TestCopyYieldsToTheAppInLockCycles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const rows = 2000
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, fmt.Sprintf(`
		CREATE TABLE pairs (id bigint PRIMARY KEY, v int NOT NULL DEFAULT 0, note text);
		-- A forward expression that costs a moment a row (as a heavy
		-- transformation or a loaded server does) keeps a batch between
		-- two keys for long enough that the app lands in between.
		CREATE FUNCTION slow_widen(x int) RETURNS bigint LANGUAGE sql VOLATILE
			AS $$ SELECT x::bigint FROM pg_catalog.pg_sleep(0.002) $$;
		INSERT INTO pairs (id, note) SELECT g, 'n' || g FROM generate_series(1, %d) g;
		ANALYZE pairs;`, rows))
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
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 20))
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
					lo := 1 + rng.Int64N(rows-40)
					hi := lo + 1 + rng.Int64N(30)
					if _, err := tx.Exec(ctx, `UPDATE public.pairs SET v = v + 1 WHERE id = $1`, hi); err != nil {
						return err
					}
					if _, err := tx.Exec(ctx, `SELECT pg_catalog.pg_sleep(0.002)`); err != nil {
						return err
					}
					if _, err := tx.Exec(ctx, `UPDATE public.pairs SET v = v + 1 WHERE id = $1`, lo); err != nil {
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
	halted := false
	halt := func() {
		if !halted {
			halted = true
			close(stop)
			wg.Wait()
		}
	}
	defer halt()
	st, err := Sync(ctx, env, syncSpec(t, `
name: pairs
table: public.pairs
target:
  ddl: |
    CREATE TABLE pairs (id bigint PRIMARY KEY, v bigint NOT NULL DEFAULT 0, note text)
forward:
  v: slow_widen(v)
reverse:
  v: v::int
`), SyncOptions{BatchSize: 50})
	halt()
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	if st.State != state.Synced {
		t.Fatalf("sync ended %s", st.State)
	}
	if n := deadlocks.Load(); n > 0 {
		t.Fatalf("%d app transactions were chosen as a deadlock's victim (40P01) against the copy; first: %v", n, errs[0])
	}
	if len(errs) > 0 {
		t.Fatalf("%d app transactions failed, first: %v", len(errs), errs[0])
	}
	if ops.Load() == 0 {
		t.Fatal("the app committed nothing: the workload did not run")
	}
	diff := syncCount(t, pool, `SELECT count(*) FROM (
		(SELECT id, v::bigint, note FROM gs_pairs_blue.pairs EXCEPT ALL SELECT id, v, note FROM gs_pairs_green.pairs)
		UNION ALL
		(SELECT id, v, note FROM gs_pairs_green.pairs EXCEPT ALL SELECT id, v::bigint, note FROM gs_pairs_blue.pairs)) d`)
	if diff != 0 {
		t.Fatalf("green differs from blue in %d rows", diff)
	}
	t.Logf("app: %d transactions, none failed; sync retried %d batches", ops.Load(), st.Retries)
}
