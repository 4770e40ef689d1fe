package runner

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/cutover"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/internal/testkit"
)

// TestFinalizeIgnoresCascadesAmongBlues (break5 finding 01): after cutover
// of orders with order_items (ON DELETE CASCADE), an app client deleting
// orders through the app name, in long transactions that also insert items
// (whose foreign key check locks the parent), makes the sync delete blue's
// orders, which cascades into blue's order_items, and insert blue's items,
// which key-share-locks blue's orders. Neither is the client using blue:
// finalize must not name it. A client pinned to blue's schema deleting the
// same way is named, and once it is gone finalize succeeds.
func TestFinalizeIgnoresCascadesAmongBlues(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn, env := tablesCutOver(t, "fc", 100)
	var deletes atomic.Int64
	// The app client: its transactions stay open across finalize's samples.
	app := coConn(t, dsn, map[string]string{"application_name": "app-cascade"})
	actx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		var err error
		defer func() { done <- err }()
		for actx.Err() == nil {
			var id int
			if err = app.QueryRow(actx, `WITH o AS (INSERT INTO orders (email, amount) VALUES ('c@x', 1) RETURNING id)
				INSERT INTO order_items (order_id, sku, qty) SELECT id, 'gone', 1 FROM o RETURNING order_id`).Scan(&id); err != nil {
				return
			}
			tx, e := app.Begin(actx)
			if e != nil {
				return
			}
			if _, err = tx.Exec(actx, `DELETE FROM orders WHERE id = $1`, id); err != nil {
				tx.Rollback(ctx)
				return
			}
			if _, err = tx.Exec(actx, `INSERT INTO order_items (order_id, sku, qty) VALUES (99, 'kept', 1)`); err != nil {
				tx.Rollback(ctx)
				return
			}
			time.Sleep(40 * time.Millisecond) // locks held while finalize samples
			if err = tx.Commit(actx); err != nil {
				return
			}
			deletes.Add(1)
		}
	}()
	fo := FinalizeOptions{Yes: true, QuietPeriod: 1500 * time.Millisecond, SampleEvery: 50 * time.Millisecond,
		SwapCommandOptions: SwapCommandOptions{LockTimeout: time.Second}}
	// First a blue client doing the same: it must be named (the fix does not blind finalize).
	old := coConn(t, dsn, map[string]string{"application_name": "old-cascade", "search_path": "gs_fc_blue"})
	if _, err := old.Exec(ctx, `DELETE FROM orders WHERE id = 100`); err != nil {
		t.Fatal(err)
	}
	long := fo
	long.QuietPeriod = time.Minute
	_, err := Finalize(ctx, env, "fc", long)
	var ue *cutover.UsageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "old-cascade") || strings.Contains(err.Error(), "app-cascade") {
		t.Fatalf("finalize with a blue client deleting with a cascade: want a refusal naming old-cascade only, got %v", err)
	}
	old.Close(ctx)
	time.Sleep(1600 * time.Millisecond) // the blue client's write leaves the quiet period
	res, err := Finalize(ctx, env, "fc", fo)
	stop()
	if werr := <-done; werr != nil && actx.Err() == nil {
		t.Fatalf("app client: %v", werr)
	}
	if err != nil {
		t.Fatalf("finalize while an app client's deletes cascade among the blues: %v", err)
	}
	if res.State != state.Finalized || len(res.Clients) != 0 {
		t.Fatalf("finalize: %+v", res)
	}
	if n := deletes.Load(); n < 10 {
		t.Fatalf("the app client deleted %d orders during the test: too few to say anything", n)
	}
	if n := testkit.Count(t, pool, `SELECT count(*) FROM public.order_items WHERE sku = 'gone'`); n > 1 {
		t.Fatalf("%d items of deleted orders left: the deletes did not cascade", n)
	}
}

// tablesCutOver is tablesSynced, then cut over (verify skipped).
func tablesCutOver(t *testing.T, name string, orders int) (*pgxpool.Pool, string, *Env) {
	t.Helper()
	pool, dsn, env := tablesSynced(t, name, orders)
	if _, err := Cutover(context.Background(), env, name, CutoverOptions{SkipVerify: true,
		SwapCommandOptions: SwapCommandOptions{LockTimeout: time.Second}}); err != nil {
		t.Fatalf("cutover: %v", err)
	}
	return pool, dsn, env
}
