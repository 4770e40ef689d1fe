package runner

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/spec"
)

// testEnv connects a runner Env to dsn, logging warnings to the test log.
func syncTestEnv(t *testing.T, dsn string) *Env {
	t.Helper()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	env, err := Connect(context.Background(), dsn, log)
	if err != nil {
		t.Fatal(err)
	}
	tuneForTests(env)
	t.Cleanup(env.Close)
	return env
}

func syncSpec(t *testing.T, yaml string) *spec.Spec {
	t.Helper()
	s, err := spec.ParseSpec([]byte(yaml), "test.yaml", "yaml")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// ordersTable is the blue table of most sync tests. With composite, the
// key is (tenant, id) instead of id.
func syncOrdersTable(rows int, composite bool) string {
	pk, idx := "PRIMARY KEY (id)", ""
	if composite {
		pk, idx = "PRIMARY KEY (tenant, id)", "CREATE INDEX orders_id_idx ON orders (id);"
	}
	return fmt.Sprintf(`
		CREATE TABLE orders (
			id         bigserial,
			tenant     int NOT NULL,
			email      text,
			amount     int NOT NULL,
			note       text,
			created_at timestamptz NOT NULL DEFAULT now(),
			%s
		);
		INSERT INTO orders (tenant, email, amount, note, created_at)
		SELECT g %% 7, CASE WHEN g %% 5 = 0 THEN NULL ELSE 'u' || g || '@x' END, g %% 1000,
		       CASE WHEN g %% 3 = 0 THEN NULL WHEN g %% 997 = 0 THEN repeat(md5(g::text), 200) ELSE 'n' || g END,
		       '2024-01-01'::timestamptz + g * interval '1 second'
		FROM generate_series(1, %d) g;
		%s
		ANALYZE orders;`, pk, rows, idx)
}

// ordersSpec is the migration of ordersTable: bigint/numeric types, NOT
// NULL email through coalesce, and two secondary indexes (one unnamed).
func syncOrdersSpec(name string, composite bool) string {
	pk := "PRIMARY KEY (id)"
	if composite {
		pk = "PRIMARY KEY (tenant, id)"
	}
	return fmt.Sprintf(`
name: %s
table: public.orders
target:
  ddl: |
    CREATE TABLE orders (
      id         bigint NOT NULL,
      tenant     int NOT NULL,
      email      text NOT NULL,
      amount     numeric(12,2) NOT NULL,
      note       text,
      created_at timestamptz NOT NULL DEFAULT now(),
      %s
    )
  indexes:
    - CREATE INDEX orders_created_at_idx ON orders (created_at)
    - create index on orders (email);
forward:
  email: coalesce(email, 'unknown@invalid')
reverse:
  amount: round(amount)::int
`, name, pk)
}

// ordersDiff counts rows that differ between blue mapped through the
// forward expressions (written out by hand here) and green, both ways.
func syncOrdersDiff(t *testing.T, q db.Querier, name string) int {
	t.Helper()
	blue := fmt.Sprintf(`SELECT id, tenant, coalesce(email, 'unknown@invalid') AS email, amount::numeric(12,2) AS amount, note, created_at FROM gs_%s_blue.orders`, name)
	green := fmt.Sprintf(`SELECT id, tenant, email, amount, note, created_at FROM gs_%s_green.orders`, name)
	var n int
	err := q.QueryRow(context.Background(), fmt.Sprintf(`SELECT count(*) FROM ((%s EXCEPT %s) UNION ALL (%s EXCEPT %s)) d`, blue, green, green, blue)).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func syncCount(t *testing.T, q db.Querier, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := q.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// workload writes through the app name (a pgx pool: extended protocol with
// its statement cache, so prepared statements) from several goroutines:
// inserts, updates, deletes, key updates, multi-row updates, NULLs and
// TOAST-sized values. Errors other than deadlocks between its own workers
// are collected.
type syncWorkload struct {
	pool      *pgxpool.Pool
	table     string // the name to write, e.g. "orders" (the app name)
	composite bool
	noNulls   bool // never write a NULL email (for a workload writing green, where email is NOT NULL)
	ops       atomic.Int64
	deadlocks atomic.Int64
	// staleOK: a workload writing green before a logical-mode cutover,
	// where greenswap refuses a write onto a row the stream has not
	// brought to green yet (40001, or 23505 for a key blue has): the
	// documented answer, counted in refused, not an error.
	staleOK atomic.Bool
	refused atomic.Int64
	mu      gosync.Mutex
	errs    []error
	cancel  context.CancelFunc
	wg      gosync.WaitGroup
}

func startSyncWorkload(t *testing.T, dsn, table string, composite bool, workers int, seed uint64) *syncWorkload {
	return startSyncWorkloadOpt(t, dsn, table, composite, false, workers, seed)
}

func startSyncWorkloadOpt(t *testing.T, dsn, table string, composite, noNulls bool, workers int, seed uint64) *syncWorkload {
	t.Helper()
	return startSyncWorkloadWith(t, dsn, table, composite, noNulls, false, workers, seed)
}

// startSyncWorkloadWith is startSyncWorkloadOpt with staleOK (see syncWorkload).
func startSyncWorkloadWith(t *testing.T, dsn, table string, composite, noNulls, staleOK bool, workers int, seed uint64) *syncWorkload {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = int32(workers)
	cfg.ConnConfig.RuntimeParams["application_name"] = "test-workload"
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &syncWorkload{pool: pool, table: table, composite: composite, noNulls: noNulls, cancel: cancel}
	w.staleOK.Store(staleOK)
	for i := range workers {
		w.wg.Add(1)
		go w.run(ctx, rand.New(rand.NewPCG(seed, uint64(i))))
	}
	t.Cleanup(func() { w.stop() })
	return w
}

// stop ends the workload and returns its unexpected errors.
func (w *syncWorkload) stop() []error {
	w.cancel()
	w.wg.Wait()
	w.pool.Close()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.errs
}

func (w *syncWorkload) run(ctx context.Context, rng *rand.Rand) {
	defer w.wg.Done()
	var maxID int64
	for ctx.Err() == nil {
		if maxID == 0 || rng.IntN(50) == 0 {
			if err := w.pool.QueryRow(ctx, "SELECT coalesce(max(id), 1) FROM "+w.table).Scan(&maxID); err != nil {
				w.fail(ctx, err)
				continue
			}
		}
		id := rng.Int64N(maxID) + 1
		if rng.IntN(4) == 0 {
			id = -id // rows whose key was flipped
		}
		var err error
		switch op := rng.IntN(100); {
		case op < 30:
			_, err = w.pool.Exec(ctx, "INSERT INTO "+w.table+" (tenant, email, amount, note) VALUES ($1, $2, $3, $4)",
				rng.IntN(7), w.email(rng), rng.IntN(100000), w.note(rng))
		case op < 55:
			_, err = w.pool.Exec(ctx, "UPDATE "+w.table+" SET amount = $2, email = $3, note = $4 WHERE id = $1",
				id, rng.IntN(100000), w.email(rng), w.note(rng))
		case op < 65:
			_, err = w.pool.Exec(ctx, "UPDATE "+w.table+" SET amount = amount + 1 WHERE id = $1", id)
		case op < 77:
			_, err = w.pool.Exec(ctx, "DELETE FROM "+w.table+" WHERE id = $1", id)
		case op < 85:
			// Key update: the key flips sign, so it never collides.
			_, err = w.pool.Exec(ctx, "UPDATE "+w.table+" SET id = -id WHERE id = $1", id)
		case op < 90 && w.composite:
			_, err = w.pool.Exec(ctx, "UPDATE "+w.table+" SET tenant = tenant + 7 WHERE id = $1", id)
		case op < 93:
			_, err = w.pool.Exec(ctx, "UPDATE "+w.table+" SET amount = amount - 1 WHERE id BETWEEN $1 AND $1 + 20", id)
		case op < 96:
			// Whole rows out, by prepared statements whose result type
			// must survive adopt: SELECT * and INSERT ... RETURNING *.
			var rows pgx.Rows
			if op%2 == 0 {
				rows, err = w.pool.Query(ctx, "SELECT * FROM "+w.table+" WHERE id = $1", id)
			} else {
				rows, err = w.pool.Query(ctx, "INSERT INTO "+w.table+" (tenant, email, amount) VALUES ($1, $2, $3) RETURNING *", rng.IntN(7), w.email(rng), rng.IntN(10))
			}
			if err == nil {
				_, err = pgx.CollectRows(rows, pgx.RowToMap)
			}
		default:
			err = pgx.BeginFunc(ctx, w.pool, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, "DELETE FROM "+w.table+" WHERE id = $1", id); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, "INSERT INTO "+w.table+" (tenant, email, amount, note) VALUES ($1, $2, 1, NULL)", rng.IntN(7), w.email(rng))
				return err
			})
		}
		if err != nil {
			w.fail(ctx, err)
		} else {
			w.ops.Add(1)
		}
	}
}

func (w *syncWorkload) fail(ctx context.Context, err error) {
	if ctx.Err() != nil {
		return
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == db.DeadlockDetected {
		w.deadlocks.Add(1)
		return
	}
	if w.staleOK.Load() && pgErr != nil && (pgErr.Code == db.SerializationFailure || pgErr.Code == db.UniqueViolation) &&
		strings.Contains(pgErr.Message, "the logical stream has not brought") {
		w.refused.Add(1)
		return
	}
	w.mu.Lock()
	w.errs = append(w.errs, err)
	w.mu.Unlock()
}

func (w *syncWorkload) email(rng *rand.Rand) any {
	if !w.noNulls && rng.IntN(4) == 0 {
		return nil
	}
	return fmt.Sprintf("w%d@x", rng.IntN(1_000_000))
}

func (w *syncWorkload) note(rng *rand.Rand) any {
	switch rng.IntN(10) {
	case 0, 1:
		return nil
	case 2:
		// TOAST-sized and incompressible enough to be stored out of line.
		var b strings.Builder
		for b.Len() < 12000 {
			fmt.Fprintf(&b, "%016x", rng.Uint64())
		}
		return b.String()
	default:
		return fmt.Sprintf("note %d", rng.IntN(1000))
	}
}

// waitFor polls cond every 20ms until it is true or d passes.
func syncWaitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// newTestDB is pgtest.NewPool, for brevity.
func syncNewDB(t *testing.T) (*pgxpool.Pool, string) {
	t.Helper()
	return pgtest.NewPool(t)
}

// rowsCopied is the migration's checkpointed rows_copied (0 before it has a row).
func syncRowsCopied(q db.Querier, name string) int64 {
	m, err := state.Get(context.Background(), q, name)
	if err != nil {
		return 0
	}
	return m.RowsCopied
}
