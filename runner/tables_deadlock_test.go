package runner

import (
	"context"
	"math/rand/v2"
	"testing"

	"github.com/jackc/pgx/v5"

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
	app := startAppTx(t, dsn, 6, 14, func(ctx context.Context, tx pgx.Tx, rng *rand.Rand) error {
		id := 1 + rng.IntN(400)
		if _, err := tx.Exec(ctx, `UPDATE public.order_items SET qty = qty + 1 WHERE order_id = $1`, id); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `SELECT pg_catalog.pg_sleep(0.003)`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE public.orders SET amount = amount + 1 WHERE id = $1`, id)
		return err
	})
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
	before := app.ops.Load()
	_, err = VerifyMigration(ctx, env, "dl", VerifyOptions{})
	step("verify", err)
	_, err = Cutover(ctx, env, "dl", CutoverOptions{SkipVerify: true})
	step("cutover", err)
	_, err = Rollback(ctx, env, "dl", SwapCommandOptions{})
	step("rollback", err)
	app.check(t, "the steps")
	if app.ops.Load() == before {
		t.Fatal("the app committed nothing after sync: the workload did not run through the steps")
	}
	if o, i := tablesDiff(t, pool, "dl"); o != 0 || i != 0 {
		t.Fatalf("green differs from blue: %d orders, %d items", o, i)
	}
	t.Logf("app: %d transactions, none failed", app.ops.Load())
}
