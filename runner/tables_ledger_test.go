package runner

import (
	"context"
	"fmt"
	"math/rand/v2"
	gosync "sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
)

// ledgerWorkload: writers through the app names, each transaction an
// order with 1–4 items, a delete of one of its own orders (the items
// cascade) or an update of one of its items; what committed goes in a
// ledger kept by the test, the oracle the tables are checked against.
type ledgerWorkload struct {
	ops    atomic.Int64
	cancel context.CancelFunc
	wg     gosync.WaitGroup
	mu     gosync.Mutex
	live   map[int64]int // order id → items it has
	gone   map[int64]bool
	errs   []error
	stage  atomic.Value // what the test is doing, recorded with each order for failure reports
	at     map[int64]string
}

func startLedgerWorkload(t *testing.T, dsn string, workers int, seed uint64) *ledgerWorkload {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	// stopCtx only ends the loop: each transaction runs to its end under
	// ctx, never canceled, so a commit is never left in doubt (a canceled
	// COMMIT may have committed, and the ledger would not know).
	stopCtx, cancel := context.WithCancel(context.Background())
	ctx := context.Background()
	w := &ledgerWorkload{cancel: cancel, live: map[int64]int{}, gone: map[int64]bool{}, at: map[int64]string{}}
	w.stage.Store("start")
	for i := range workers {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			var mine []int64
			for stopCtx.Err() == nil {
				var id int64
				var items int
				op := rng.IntN(5)
				if len(mine) < 3 {
					op = 0
				}
				var victim int
				err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					switch op {
					case 0, 1, 2:
						if err := tx.QueryRow(ctx, `INSERT INTO public.orders (email, amount) VALUES ($1, $2) RETURNING id`,
							fmt.Sprintf("L%d-%d@x", i, rng.IntN(1e6)), rng.IntN(1000)).Scan(&id); err != nil {
							return err
						}
						items = 1 + rng.IntN(4)
						for k := range items {
							if _, err := tx.Exec(ctx, `INSERT INTO public.order_items (order_id, sku, qty) VALUES ($1, $2, $3)`, id, fmt.Sprintf("L-%d", k), k+1); err != nil {
								return err
							}
						}
						return nil
					case 3:
						victim = rng.IntN(len(mine))
						_, err := tx.Exec(ctx, `DELETE FROM public.orders WHERE id = $1`, mine[victim])
						return err
					default:
						_, err := tx.Exec(ctx, `UPDATE public.order_items SET qty = qty + 1 WHERE order_id = $1`, mine[rng.IntN(len(mine))])
						return err
					}
				})
				switch {
				case err == nil:
					w.ops.Add(1)
					w.mu.Lock()
					switch op {
					case 0, 1, 2:
						w.live[id] = items
						w.at[id] += fmt.Sprintf("inserted by writer %d during %v", i, w.stage.Load())
						mine = append(mine, id)
					case 3:
						w.at[mine[victim]] += fmt.Sprintf("; deleted by writer %d during %v", i, w.stage.Load())
						delete(w.live, mine[victim])
						w.gone[mine[victim]] = true
						mine = append(mine[:victim], mine[victim+1:]...)
					}
					w.mu.Unlock()
				case db.SQLState(err) == db.DeadlockDetected || db.SQLState(err) == "40001":
				default:
					w.mu.Lock()
					w.errs = append(w.errs, err)
					w.mu.Unlock()
				}
			}
		}()
	}
	t.Cleanup(func() { w.stop(); pool.Close() })
	return w
}

func (w *ledgerWorkload) stop() []error {
	w.cancel()
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.errs
}

// check compares the ledger with orders and order_items as schema holds
// them: every committed order is there with its items, every deleted one
// is gone with its items, nothing else carries the ledger's emails.
func (w *ledgerWorkload) check(t *testing.T, q db.Querier, schema string) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	ctx := context.Background()
	rows, err := q.Query(ctx, fmt.Sprintf(`SELECT o.id::bigint, (SELECT count(*) FROM %[1]s.order_items i WHERE i.order_id = o.id)::int
		FROM %[1]s.orders o WHERE o.email LIKE 'L%%'`, db.Ident(schema)))
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([2]int64, error) {
		var v [2]int64
		var n int
		err := r.Scan(&v[0], &n)
		v[1] = int64(n)
		return v, err
	})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int64]bool{}
	for _, g := range got {
		seen[g[0]] = true
		want, ok := w.live[g[0]]
		switch {
		case w.gone[g[0]]:
			t.Fatalf("%s: order %d was deleted (committed) but is there", schema, g[0])
		case !ok:
			t.Fatalf("%s: order %d is not in the ledger", schema, g[0])
		case int64(want) != g[1]:
			t.Fatalf("%s: order %d has %d items, the ledger %d", schema, g[0], g[1], want)
		}
	}
	for id := range w.live {
		if !seen[id] {
			t.Fatalf("%s: committed order %d (%s) is lost (%d orders in the ledger, %d found)", schema, id, w.at[id], len(w.live), len(got))
		}
	}
	if len(w.live) < 20 || len(w.gone) == 0 {
		t.Fatalf("ledger too small to prove anything: %d live, %d deleted", len(w.live), len(w.gone))
	}
}
