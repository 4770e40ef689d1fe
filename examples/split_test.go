package examples_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/internal/testkit"
	"github.com/greenswap/greenswap/runner"
	"github.com/greenswap/greenswap/spec"
)

// splitWorkload is a running workload of a split example: Start it before
// sync, let it write the greens once synced, Halt it at the end.
type splitWorkload interface {
	Start(n int, seed uint64)
	WriteGreens()
	Halt(t testing.TB)
	LogKinds(t testing.TB, min int64)
}

type usersWorkload struct{ *testkit.SplitWriters }

func (u usersWorkload) WriteGreens() { u.Greens.Store(true) }

// splitExample is one split example and its oracle.
type splitExample struct {
	dir     string
	ledger  string // creates and fills the ledger after the seed
	work    func(app *pgxpool.Pool, green string) splitWorkload
	check   func(t *testing.T, app *pgxpool.Pool, name, when string)
	oldCols string // the old shape's columns, to diff the app name with blue
	final   [2]string
	after   splitAfter
}

// splitAfter is what the app does once a split example is finalized.
type splitAfter struct {
	table   string   // the table named like the app's
	inserts []string // through the app's names, omitting the key, RETURNING id
}

var splitExamples = []splitExample{
	{
		dir:    "split-users",
		ledger: `CREATE TABLE ledger (id bigint PRIMARY KEY, name text); INSERT INTO ledger SELECT id, name FROM users`,
		work: func(app *pgxpool.Pool, green string) splitWorkload {
			return usersWorkload{&testkit.SplitWriters{Pool: app, Green: green, Hot: 40}}
		},
		check: func(t *testing.T, app *pgxpool.Pool, name, when string) {
			testkit.CheckSplitUsers(t, app, name, when)
		},
		oldCols: `id, email, name, bio, avatar_url, prefs::text, last_seen_at, legacy_col`,
		final:   [2]string{`SELECT id, name FROM ledger`, `SELECT id, name FROM public.users`},
		after: splitAfter{table: "public.users", inserts: []string{
			`INSERT INTO public.users (email, name) VALUES ('after@x', 'after') RETURNING id`,
			`WITH u AS (INSERT INTO public.users (email) VALUES ('p@x') RETURNING id) INSERT INTO public.user_profiles (user_id, bio) SELECT id, 'after' FROM u RETURNING user_id`}},
	},
	{
		dir:    "archive-orders",
		ledger: `CREATE TABLE ledger (id bigint PRIMARY KEY, status text, total numeric); INSERT INTO ledger SELECT id, status, total FROM orders`,
		work: func(app *pgxpool.Pool, green string) splitWorkload {
			return &ordersWorkload{pool: app, green: green, hot: 40}
		},
		check:   checkArchiveOrders,
		oldCols: `id, customer_id, status, total, created_at`,
		final: [2]string{`SELECT id, status, total FROM ledger`,
			`SELECT * FROM (SELECT id, status, total FROM public.orders UNION ALL SELECT id, status, total FROM public.orders_archive) AS u`},
		after: splitAfter{table: "public.orders", inserts: []string{
			`INSERT INTO public.orders (customer_id) VALUES (5) RETURNING id`,
			`INSERT INTO public.orders_archive (customer_id, status) VALUES (5, 'archived') RETURNING id`}},
	},
}

// TestSplitExamples takes each split example (examples/split-users,
// vertical; examples/archive-orders, horizontal) through its lifecycle
// under ten writers on both shapes, 40 hot keys shared by all of them:
// sync (the writers on the app name race the backfill), then writers on
// every green too; verify (under the writers); cutover → rollback →
// cutover (the app name is then the old-shape view, its INSTEAD OF
// trigger writing every green); then, writers stopped, the oracle: each
// green equals blue mapped forward, blue equals the old shape rebuilt from
// the greens, the ledger the writers kept equals blue and the greens, and
// the app name (EXCEPT both ways) equals blue; finalize; the greens, now
// the tables, equal the ledger, the key's sequence is the table's
// (pg_get_serial_sequence) and inserts through the app names that omit
// the key get ids past every one there. The only client errors allowed are those
// testkit.Retryable names (contention, a key taken, and the old-shape
// view's documented 40001).
func TestSplitExamples(t *testing.T) {
	for _, ex := range splitExamples {
		t.Run(ex.dir, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			_, dsn := pgtest.NewPool(t)
			seed, err := os.ReadFile(filepath.Join(ex.dir, "seed.sql"))
			if err != nil {
				t.Fatal(err)
			}
			pgtest.Exec(t, dsn, string(seed))
			pgtest.Exec(t, dsn, ex.ledger)
			sp, err := spec.LoadSpecFile(filepath.Join(ex.dir, "spec.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			env, err := runner.Connect(ctx, dsn, zerolog.Nop())
			if err != nil {
				t.Fatal(err)
			}
			defer env.Close()
			app, err := pgxpool.New(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer app.Close()
			if res, err := runner.Plan(ctx, env, sp, runner.PlanOptions{}); err != nil || res.Blocking > 0 {
				t.Fatalf("plan: %v (%d blocking hazards)", err, res.Blocking)
			}
			w := ex.work(app, db.Ident("gs_"+sp.Name+"_green"))
			w.Start(10, 11)
			time.Sleep(300 * time.Millisecond)
			if _, err := runner.Sync(ctx, env, sp, runner.SyncOptions{}); err != nil {
				w.Halt(t)
				t.Fatalf("sync: %v", err)
			}
			w.WriteGreens()
			time.Sleep(time.Second)
			rep, err := runner.VerifyMigration(ctx, env, sp.Name, runner.VerifyOptions{})
			if err != nil || !rep.OK() {
				w.Halt(t)
				t.Fatalf("verify under the writers: %+v, %v", rep, err)
			}
			swap := runner.SwapCommandOptions{Out: io.Discard, MaxAttempts: 50}
			for i, step := range []string{"cutover", "rollback", "cutover"} {
				time.Sleep(time.Second)
				if step == "cutover" {
					_, err = runner.Cutover(ctx, env, sp.Name, runner.CutoverOptions{SwapCommandOptions: swap, SkipVerify: i > 0})
				} else {
					_, err = runner.Rollback(ctx, env, sp.Name, swap)
				}
				if err != nil {
					w.Halt(t)
					t.Fatalf("step %d, %s: %v", i+1, step, err)
				}
			}
			time.Sleep(time.Second)
			w.Halt(t)
			w.LogKinds(t, 300)
			ex.check(t, app, sp.Name, "after the lifecycle under writers")
			app0 := sp.AppTable()
			blue := db.Ident("gs_"+sp.Name+"_blue", app0.Name)
			if d := testkit.Diff(t, app, `SELECT `+ex.oldCols+` FROM `+db.Ident(app0.Schema, app0.Name), `SELECT `+ex.oldCols+` FROM `+blue); d != 0 {
				t.Errorf("the app name (the old-shape view) and blue differ by %d rows", d)
			}
			if rep, err := runner.VerifyMigration(ctx, env, sp.Name, runner.VerifyOptions{}); err != nil || !rep.OK() {
				t.Errorf("verify after cutover: %+v, %v", rep, err)
			}
			// Finalize: the quiet period starts after the oracle's reads of
			// blue above, which are clients of blue to its usage check.
			time.Sleep(1500 * time.Millisecond)
			if _, err := runner.Finalize(ctx, env, sp.Name, runner.FinalizeOptions{SwapCommandOptions: swap,
				QuietPeriod: time.Second, SampleEvery: 200 * time.Millisecond, Yes: true}); err != nil {
				t.Fatalf("finalize: %v", err)
			}
			if row, err := state.Get(ctx, env.Pool, sp.Name); err != nil || row.State != state.Finalized {
				t.Fatalf("after finalize: %+v, %v", row, err)
			}
			if d := testkit.Diff(t, app, ex.final[0], ex.final[1]); d != 0 {
				t.Errorf("after finalize the greens and the ledger differ by %d rows", d)
			}
			checkFinalizedSplit(ctx, t, app, ex.after)
		})
	}
}

// checkFinalizedSplit checks that the app keeps working on the finalized
// greens: the key's sequence is the table's (pg_get_serial_sequence), an
// INSERT through the app name that omits the key and the defaulted
// columns gets an id from it, past every id there.
func checkFinalizedSplit(ctx context.Context, t *testing.T, app *pgxpool.Pool, after splitAfter) {
	t.Helper()
	var seq *string
	if err := app.QueryRow(ctx, `SELECT pg_get_serial_sequence($1, 'id')`, after.table).Scan(&seq); err != nil || seq == nil {
		t.Errorf("after finalize pg_get_serial_sequence(%s, 'id') = %v, %v; want blue's sequence", after.table, seq, err)
	}
	var maxID int64
	if err := app.QueryRow(ctx, `SELECT coalesce(max(id), 0) FROM `+after.table).Scan(&maxID); err != nil {
		t.Fatal(err)
	}
	for _, ins := range after.inserts {
		var id int64
		if err := app.QueryRow(ctx, ins).Scan(&id); err != nil || id <= maxID {
			t.Errorf("after finalize %s: id %d (max was %d), %v", ins, id, maxID, err)
		}
		maxID = max(maxID, id)
	}
}

// checkArchiveOrders is the oracle of archive-orders by hand: each green
// holds exactly blue's rows its where picks, the ledger equals blue, and
// blue equals the two greens together.
func checkArchiveOrders(t *testing.T, app *pgxpool.Pool, name, when string) {
	t.Helper()
	b, g := db.Ident("gs_"+name+"_blue"), db.Ident("gs_"+name+"_green")
	const cols = `id, customer_id, status, total, created_at`
	for _, c := range [][2]string{
		{`SELECT ` + cols + ` FROM ` + b + `.orders WHERE status <> 'archived'`, `SELECT ` + cols + ` FROM ` + g + `.orders`},
		{`SELECT ` + cols + ` FROM ` + b + `.orders WHERE status = 'archived'`, `SELECT ` + cols + ` FROM ` + g + `.orders_archive`},
		{`SELECT ` + cols + ` FROM ` + b + `.orders`, `SELECT * FROM (SELECT ` + cols + ` FROM ` + g + `.orders UNION ALL SELECT ` + cols + ` FROM ` + g + `.orders_archive) AS u`},
		{`SELECT id, status, total FROM ledger`, `SELECT id, status, total FROM ` + b + `.orders`},
	} {
		if d := testkit.Diff(t, app, c[0], c[1]); d != 0 {
			t.Errorf("%s: %d rows differ between\n  %s\nand\n  %s", when, d, c[0], c[1])
		}
	}
}

// ordersWorkload writes archive-orders on both shapes: through the app
// name (status changes that move a row between the greens, totals,
// inserts, deletes) and, once synced, each green directly (a move from
// orders to orders_archive in one statement, totals, deletes). Each
// transaction updates the ledger (id → status, total) after its data
// statement, and only when that statement wrote a row, holding its lock
// (testkit.SplitWriters explains why).
type ordersWorkload struct {
	pool   *pgxpool.Pool
	green  string
	hot    int64
	greens atomic.Bool
	stop   chan struct{}
	wg     sync.WaitGroup
	mu     sync.Mutex
	errs   []error
	kinds  sync.Map
	commit atomic.Int64
	abort  atomic.Int64
}

func (w *ordersWorkload) WriteGreens() { w.greens.Store(true) }

func (w *ordersWorkload) Start(n int, seed uint64) {
	w.stop = make(chan struct{})
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
					w.commit.Add(1)
					c, _ := w.kinds.LoadOrStore(op, new(atomic.Int64))
					c.(*atomic.Int64).Add(1)
				case testkit.Retryable(err):
					w.abort.Add(1)
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

func (w *ordersWorkload) one(rng *rand.Rand) (string, error) {
	k := 1 + rng.Int64N(w.hot)
	type stmt struct {
		sql  string
		args []any
	}
	var op string
	var data, ledger stmt
	n := 6
	if w.greens.Load() {
		n = 10
	}
	switch rng.IntN(n) {
	case 0:
		op = "old shape: archive"
		data = stmt{`UPDATE orders SET status = 'archived' WHERE id = $1`, []any{k}}
		ledger = stmt{`UPDATE ledger SET status = 'archived' WHERE id = $1`, []any{k}}
	case 1:
		op = "old shape: reopen"
		data = stmt{`UPDATE orders SET status = 'open' WHERE id = $1`, []any{k}}
		ledger = stmt{`UPDATE ledger SET status = 'open' WHERE id = $1`, []any{k}}
	case 2, 3:
		op = "old shape: total"
		data = stmt{`UPDATE orders SET total = total + 1 WHERE id = $1`, []any{k}}
		ledger = stmt{`UPDATE ledger SET total = total + 1 WHERE id = $1`, []any{k}}
	case 4:
		op = "old shape: insert"
		data = stmt{`INSERT INTO orders (id, customer_id, status, total) VALUES ($1, 1, 'open', 0)`, []any{k}}
		ledger = stmt{`INSERT INTO ledger VALUES ($1, 'open', 0)`, []any{k}}
	case 5:
		op = "old shape: delete"
		data = stmt{`DELETE FROM orders WHERE id = $1`, []any{k}}
		ledger = stmt{`DELETE FROM ledger WHERE id = $1`, []any{k}}
	case 6:
		op = "green: archive (move between greens)"
		data = stmt{`WITH d AS (DELETE FROM ` + w.green + `.orders WHERE id = $1 RETURNING *)
			INSERT INTO ` + w.green + `.orders_archive SELECT id, customer_id, 'archived', total, created_at FROM d`, []any{k}}
		ledger = stmt{`UPDATE ledger SET status = 'archived' WHERE id = $1`, []any{k}}
	case 7:
		op = "green: live total"
		data = stmt{`UPDATE ` + w.green + `.orders SET total = total + 1 WHERE id = $1`, []any{k}}
		ledger = stmt{`UPDATE ledger SET total = total + 1 WHERE id = $1`, []any{k}}
	case 8:
		op = "green: archive total"
		data = stmt{`UPDATE ` + w.green + `.orders_archive SET total = total + 1 WHERE id = $1`, []any{k}}
		ledger = stmt{`UPDATE ledger SET total = total + 1 WHERE id = $1`, []any{k}}
	case 9:
		op = "green: delete archived"
		data = stmt{`DELETE FROM ` + w.green + `.orders_archive WHERE id = $1`, []any{k}}
		ledger = stmt{`DELETE FROM ledger WHERE id = $1`, []any{k}}
	}
	err := pgx.BeginFunc(context.Background(), w.pool, func(tx pgx.Tx) error {
		ct, err := tx.Exec(context.Background(), data.sql, data.args...)
		if err != nil || ct.RowsAffected() == 0 {
			return err
		}
		_, err = tx.Exec(context.Background(), ledger.sql, ledger.args...)
		return err
	})
	return op, err
}

func (w *ordersWorkload) Halt(t testing.TB) {
	t.Helper()
	close(w.stop)
	w.wg.Wait()
	for _, err := range w.errs {
		t.Error(err)
	}
}

func (w *ordersWorkload) LogKinds(t testing.TB, min int64) {
	t.Helper()
	w.kinds.Range(func(k, v any) bool {
		t.Logf("%s: %d commits", k, v.(*atomic.Int64).Load())
		if v.(*atomic.Int64).Load() == 0 {
			t.Errorf("no %s committed", k)
		}
		return true
	})
	t.Logf("%d commits, %d rolled back on contention", w.commit.Load(), w.abort.Load())
	if w.commit.Load() < min {
		t.Errorf("only %d transactions committed", w.commit.Load())
	}
}
