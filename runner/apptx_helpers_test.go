package runner

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
)

// appTxLoad is n app connections each running body in a transaction of
// its own, again and again, until stop: the deadlock tests' workload.
type appTxLoad struct {
	ops, deadlocks atomic.Int64
	mu             sync.Mutex
	errs           []error
	stopCh         chan struct{}
	wg             sync.WaitGroup
	stopped        bool
}

// startAppTx starts n workers on a pool of their own (closed at stop);
// each has its own random source seeded from seed.
func startAppTx(t *testing.T, dsn string, n int, seed uint64, body func(ctx context.Context, tx pgx.Tx, rng *rand.Rand) error) *appTxLoad {
	t.Helper()
	ctx := context.Background()
	app, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	l := &appTxLoad{stopCh: make(chan struct{})}
	for w := range n {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), seed))
			for {
				select {
				case <-l.stopCh:
					return
				default:
				}
				err := pgx.BeginFunc(ctx, app, func(tx pgx.Tx) error { return body(ctx, tx, rng) })
				if err == nil {
					l.ops.Add(1)
					continue
				}
				if db.SQLState(err) == db.DeadlockDetected {
					l.deadlocks.Add(1)
				}
				l.mu.Lock()
				l.errs = append(l.errs, err)
				l.mu.Unlock()
			}
		}()
	}
	t.Cleanup(func() { l.stop(); app.Close() })
	return l
}

// stop ends the workers (once) and waits for them.
func (l *appTxLoad) stop() {
	if !l.stopped {
		l.stopped = true
		close(l.stopCh)
		l.wg.Wait()
	}
}

// check fails t if any app transaction failed, naming the deadlocks.
func (l *appTxLoad) check(t *testing.T, against string) {
	t.Helper()
	l.stop()
	if n := l.deadlocks.Load(); n > 0 {
		t.Fatalf("%d app transactions were chosen as a deadlock's victim (40P01) against %s; first: %v", n, against, l.errs[0])
	}
	if len(l.errs) > 0 {
		t.Fatalf("%d app transactions failed, first: %v", len(l.errs), l.errs[0])
	}
	if l.ops.Load() == 0 {
		t.Fatal("the app committed nothing: the workload did not run")
	}
}
