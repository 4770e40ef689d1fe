package workload_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/examples/workload"
	"github.com/greenswap/greenswap/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// The ledger agrees with the table after a clean run, and Check notices
// every kind of damage: a missing row, a stale value, a deleted row back.
func TestLedgerCatchesLoss(t *testing.T) {
	t.Parallel()
	_, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `
		CREATE TABLE orders (id serial PRIMARY KEY, email text NOT NULL DEFAULT 'x@y', amount int NOT NULL);
		INSERT INTO orders (amount) SELECT g FROM generate_series(1, 1000) g;`)
	ctx := context.Background()
	if err := workload.CreateLedger(ctx, dsn, "ledger"); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeExec, pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		w, err := workload.Start(ctx, workload.Config{DSN: dsn, Table: "orders", Clients: 3, KeyRange: 1000, Ledger: "ledger", ExecMode: mode, Seed: 7})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		w.Stop()
		tot := w.Totals()
		if tot.Commits < 20 || tot.Errors != 0 {
			t.Fatalf("mode %v: %d commits, %d errors: %v", mode, tot.Commits, tot.Errors, w.Errors())
		}
	}
	r, err := workload.Check(ctx, dsn, "ledger", "orders", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if r.Checked < 20 || r.Lost() != 0 {
		t.Fatalf("clean run: %s", r)
	}
	// Damage: one live row deleted, one value changed, one deleted row back.
	pgtest.Exec(t, dsn, `
		DELETE FROM orders WHERE id = (SELECT min(k) FROM ledger WHERE NOT deleted);
		UPDATE orders SET amount = -1 WHERE id = (SELECT max(k) FROM ledger WHERE NOT deleted);
		INSERT INTO ledger (k, v, deleted, client) VALUES (999999, 1, true, 0);
		INSERT INTO orders (id, amount) VALUES (999999, 1);`)
	r, err = workload.Check(ctx, dsn, "ledger", "orders", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if r.Missing != 1 || r.Stale != 1 || r.Ghosts != 1 {
		t.Fatalf("after damage: %s", r)
	}
	if got := workload.Summary(0, 0); got != "0 client errors, 0 rows lost" {
		t.Fatalf("Summary = %q", got)
	}
}

// Window counts commits and latencies in a time slice.
func TestWindow(t *testing.T) {
	t.Parallel()
	_, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `CREATE TABLE t (id serial PRIMARY KEY, amount int NOT NULL);
		INSERT INTO t (amount) SELECT g FROM generate_series(1, 100) g;`)
	w, err := workload.Start(context.Background(), workload.Config{DSN: dsn, Table: "t", Clients: 2, KeyRange: 100, Mix: workload.Mix{Update: 1}, Rate: 100})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	time.Sleep(time.Second)
	t1 := time.Now()
	w.Stop()
	s := w.Window(t0, t1)
	// 2 clients × 100/s × 1 s at most (the rate limit), fewer on a busy machine.
	if s.Commits < 10 || s.Commits > 220 || s.MaxLatency <= 0 || s.Errors != 0 {
		t.Fatalf("window: %+v", s)
	}
}
