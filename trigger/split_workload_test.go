package trigger_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/testkit"
)

// splitWriters run a randomized workload on the vertical users split:
// writers on blue (through the app name) from the start, racing the
// backfill; from synced on, writers on every green too. The hot keys
// (1..hot) are shared by all of them. Each transaction also writes the
// ledger (id → the name it set, or the row's absence) in the same
// transaction, after its data write: the ledger row's lock follows the
// blue row's, so its final state is what blue and green users must say.
type splitWriters struct {
	pool    *pgxpool.Pool
	hot     int64
	greens  atomic.Bool // writers may write the greens (synced)
	stop    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	errs    []error
	commits atomic.Int64
	aborts  atomic.Int64
	kinds   sync.Map // op name → *atomic.Int64 commits
}

// retryable are the errors of contention and of a write that the data
// refuses (a key taken, a parent gone): the transaction rolls back, ledger
// included, and nothing is checked about it.
func retryable(err error) bool {
	switch db.SQLState(err) {
	case db.DeadlockDetected, db.UniqueViolation, "23503", "40001":
		return true
	}
	return false
}

func (w *splitWriters) start(t *testing.T, n int, seed uint64) {
	for i := range n {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			for {
				select {
				case <-w.stop:
					return
				default:
				}
				op, err := w.one(rng)
				switch {
				case err == nil:
					w.commits.Add(1)
					c, _ := w.kinds.LoadOrStore(op, new(atomic.Int64))
					c.(*atomic.Int64).Add(1)
				case retryable(err):
					w.aborts.Add(1)
				default:
					w.mu.Lock()
					w.errs = append(w.errs, fmt.Errorf("%s: %w", op, err))
					w.mu.Unlock()
					return
				}
			}
		}()
	}
}

func (w *splitWriters) halt(t *testing.T) {
	t.Helper()
	close(w.stop)
	w.wg.Wait()
	for _, err := range w.errs {
		t.Error(err)
	}
}

// one runs one random transaction; op names it.
func (w *splitWriters) one(rng *rand.Rand) (op string, err error) {
	ctx := context.Background()
	k := 1 + rng.Int64N(w.hot)
	k2 := 1 + rng.Int64N(w.hot)
	name := fmt.Sprintf("t%d", rng.Int64())
	var stmts []string
	var args [][]any
	add := func(s string, a ...any) { stmts = append(stmts, s); args = append(args, a) }
	// The ledger follows the data write: an update of a missing row
	// updates no ledger row either, an insert inserts one.
	ledgerSet := func(id int64) { add(`UPDATE ledger SET name = $2 WHERE id = $1`, id, name) }
	ledgerNew := func(id int64) { add(`INSERT INTO ledger VALUES ($1, $2)`, id, name) }
	n := 7
	if w.greens.Load() {
		n = 14
	}
	switch rng.IntN(n) {
	case 0, 1:
		op = "blue update"
		seen := []any{nil, time.Now().Add(-time.Duration(rng.IntN(1000)) * time.Minute)}[rng.IntN(2)]
		add(`UPDATE users SET name = $2, bio = $3, last_seen_at = $4, prefs = pg_catalog.jsonb_build_object('r', $5::int) WHERE id = $1`,
			k, name, testkit.Note(rng), seen, rng.IntN(100))
		ledgerSet(k)
	case 2:
		op = "blue insert"
		add(`INSERT INTO users (id, email, name, bio, last_seen_at) VALUES ($1, 'w@x', $2, 'new', CASE WHEN $3 THEN now() END)`, k, name, rng.IntN(2) == 0)
		ledgerNew(k)
	case 3:
		op = "blue delete"
		add(`DELETE FROM users WHERE id = $1`, k)
		add(`DELETE FROM ledger WHERE id = $1`, k)
	case 4:
		op = "blue key update"
		add(`UPDATE users SET id = $2 WHERE id = $1`, k, k2)
		add(`UPDATE ledger SET id = $2 WHERE id = $1`, k, k2)
	case 5:
		op = "blue legacy column"
		add(`UPDATE users SET legacy_col = $2, name = $2 WHERE id = $1`, k, name)
		ledgerSet(k)
	case 6:
		op = "blue two rows"
		add(`UPDATE users SET name = $3 WHERE id IN ($1, $2)`, k, k2, name)
		add(`UPDATE ledger SET name = $3 WHERE id IN ($1, $2)`, k, k2, name)
	case 7, 8:
		op = "green users update"
		add(`UPDATE gs_us_green.users SET name = $2, email = $2 || '@g' WHERE id = $1`, k, name)
		ledgerSet(k)
	case 9:
		op = "green profile update"
		add(`UPDATE gs_us_green.user_profiles SET bio = $2, prefs = '[1]' WHERE user_id = $1`, k, name)
	case 10:
		op = "green activity upsert or delete"
		if rng.IntN(2) == 0 {
			add(`INSERT INTO gs_us_green.user_activity VALUES ($1, now()) ON CONFLICT (user_id) DO UPDATE SET last_seen_at = EXCLUDED.last_seen_at - interval '1 day'`, k)
		} else {
			add(`DELETE FROM gs_us_green.user_activity WHERE user_id = $1`, k)
		}
	case 11:
		op = "green insert"
		add(`INSERT INTO gs_us_green.users VALUES ($1, 'g@x', $2)`, k, name)
		add(`INSERT INTO gs_us_green.user_profiles VALUES ($1, 'gbio', NULL, '{}')`, k)
		ledgerNew(k)
	case 12:
		op = "green delete"
		add(`DELETE FROM gs_us_green.users WHERE id = $1`, k)
		add(`DELETE FROM ledger WHERE id = $1`, k)
	case 13:
		op = "green key update"
		add(`UPDATE gs_us_green.users SET id = $2 WHERE id = $1`, k, k2)
		add(`UPDATE ledger SET id = $2 WHERE id = $1`, k, k2)
	}
	err = pgx.BeginFunc(ctx, w.pool, func(tx pgx.Tx) error {
		for i, s := range stmts {
			if _, err := tx.Exec(ctx, s, args[i]...); err != nil {
				return err
			}
		}
		return nil
	})
	return op, err
}

// TestSplitWorkloadBothShapes: ten writers on blue race the backfill of
// the three greens (trap 1: a row the batch copies while a writer deletes
// it or moves it out of a green's where must not stay there), then, with
// the reverse direction switched on under load, ten writers on blue and
// the greens at once, on 30 shared hot keys. At the end, with SQL written
// here: each green equals blue mapped forward (EXCEPT both ways), blue
// equals the old shape rebuilt from the greens, and blue and green users
// both hold exactly the ledger's names.
func TestSplitWorkloadBothShapes(t *testing.T) {
	t.Parallel()
	for _, seed := range testkit.Seeds(t, 1) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			m := splitSetup(t, splitUsersTable, splitUsersSpec)
			pgtest.Exec(t, m.dsn, `CREATE TABLE ledger (id bigint PRIMARY KEY, name text); INSERT INTO ledger SELECT id, name FROM gs_us_blue.users`)
			w := &splitWriters{pool: m.pool, hot: 30, stop: make(chan struct{})}
			w.start(t, 10, seed)
			time.Sleep(300 * time.Millisecond)
			m.backfill(t)
			time.Sleep(500 * time.Millisecond)
			m.reverseOn(t)
			w.greens.Store(true)
			time.Sleep(4 * time.Second)
			w.halt(t)
			w.kinds.Range(func(k, v any) bool {
				t.Logf("%s: %d commits", k, v.(*atomic.Int64).Load())
				if v.(*atomic.Int64).Load() == 0 {
					t.Errorf("no %s committed: the workload did not exercise it", k)
				}
				return true
			})
			t.Logf("%d commits, %d rolled back on contention", w.commits.Load(), w.aborts.Load())
			if w.commits.Load() < 500 {
				t.Errorf("only %d transactions committed", w.commits.Load())
			}
			m.check(t, splitUsersChecks, "after the workload")
			if d := testkit.Diff(t, m.pool, `SELECT id, name FROM ledger`, `SELECT id, name FROM gs_us_blue.users`); d != 0 {
				t.Errorf("blue differs from the ledger in %d rows", d)
				rows, _ := m.pool.Query(context.Background(), `SELECT l.id, l.name, b.id, b.name, g.id, g.name FROM ledger l FULL JOIN gs_us_blue.users b ON b.id = l.id FULL JOIN gs_us_green.users g ON g.id = coalesce(l.id, b.id) WHERE l.name IS DISTINCT FROM b.name OR l.id IS DISTINCT FROM b.id`)
				for rows.Next() {
					v, _ := rows.Values()
					t.Logf("ledger/blue/green: %v", v)
				}
				rows.Close()
			}
			if d := testkit.Diff(t, m.pool, `SELECT id, name FROM ledger`, `SELECT id, name FROM gs_us_green.users`); d != 0 {
				t.Errorf("green users differs from the ledger in %d rows", d)
			}
		})
	}
}
