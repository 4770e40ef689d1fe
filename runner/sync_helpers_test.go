package runner

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/internal/testkit"
	"github.com/greenswap/greenswap/spec"
)

// testEnv connects a runner Env to dsn, logging warnings to the test log.
func syncTestEnv(t *testing.T, dsn string) *Env {
	t.Helper()
	env, err := Connect(context.Background(), dsn, testkit.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	tuneForTests(env)
	t.Cleanup(env.Close)
	return env
}

func syncSpec(t *testing.T, yaml string) *spec.Spec { return testkit.ParseSpec(t, yaml) }

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
// forward expressions (written out by hand) and green, both ways.
func syncOrdersDiff(t *testing.T, q db.Querier, name string) int {
	t.Helper()
	return int(testkit.OrdersDiff(t, q, name))
}

func syncCount(t *testing.T, q db.Querier, sql string, args ...any) int64 {
	t.Helper()
	return testkit.Count(t, q, sql, args...)
}

// syncWorkload is testkit's workload with the application's mix
// (testkit.MixApp), under the names this package's tests use.
type syncWorkload struct {
	*testkit.Workload
	ops, deadlocks, refused *atomic.Int64
}

func startSyncWorkload(t *testing.T, dsn, table string, composite bool, workers int, seed uint64) *syncWorkload {
	return startSyncWorkloadOpt(t, dsn, table, composite, false, workers, seed)
}

func startSyncWorkloadOpt(t *testing.T, dsn, table string, composite, noNulls bool, workers int, seed uint64) *syncWorkload {
	t.Helper()
	return startSyncWorkloadWith(t, dsn, table, composite, noNulls, false, workers, seed)
}

// startSyncWorkloadWith is startSyncWorkloadOpt with staleOK (see testkit.WorkloadOptions).
func startSyncWorkloadWith(t *testing.T, dsn, table string, composite, noNulls, staleOK bool, workers int, seed uint64) *syncWorkload {
	t.Helper()
	w := testkit.StartWorkload(t, dsn, testkit.WorkloadOptions{
		Table: table, Workers: workers, Seed: seed, Mix: testkit.MixApp,
		Composite: composite, NoNulls: noNulls, StaleOK: staleOK,
	})
	return &syncWorkload{Workload: w, ops: &w.Ops, deadlocks: &w.Deadlocks, refused: &w.Refused}
}

// stop ends the workload and returns its unexpected errors.
func (w *syncWorkload) stop() []error { return w.Stop() }

// waitFor polls cond every 20ms until it is true or d passes.
func syncWaitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testkit.WaitFor(t, d, what, cond)
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
