package runner

import (
	"context"
	"fmt"
	"math/rand/v2"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
)

// pbWorkload is application traffic through a pooler: pgx pools in one
// query exec mode, writing and reading the app name.
type pbWorkload struct {
	ops    atomic.Int64
	mu     gosync.Mutex
	errs   []error
	cancel context.CancelFunc
	wg     gosync.WaitGroup
}

func startPbWorkload(t *testing.T, dsn string, mode pgx.QueryExecMode, workers int, seed uint64) *pbWorkload {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = int32(workers)
	cfg.ConnConfig.DefaultQueryExecMode = mode
	cfg.ConnConfig.RuntimeParams["application_name"] = "pb-" + mode.String()
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &pbWorkload{cancel: cancel}
	for i := range workers {
		w.wg.Add(1)
		go func(rng *rand.Rand) {
			defer w.wg.Done()
			for ctx.Err() == nil {
				if err := pbOp(ctx, pool, rng); err != nil && ctx.Err() == nil {
					w.mu.Lock()
					w.errs = append(w.errs, err)
					w.mu.Unlock()
				} else if err == nil {
					w.ops.Add(1)
				}
			}
		}(rand.New(rand.NewPCG(seed, uint64(i))))
	}
	t.Cleanup(func() { w.stop(); pool.Close() })
	return w
}

// pbOp is one client operation on the app name, valid for both shapes
// (never a NULL email: green's is NOT NULL).
func pbOp(ctx context.Context, pool *pgxpool.Pool, rng *rand.Rand) error {
	id := rng.Int64N(3000) + 1
	email := fmt.Sprintf("pb%d@x", rng.IntN(1_000_000))
	switch op := rng.IntN(10); {
	case op < 3:
		_, err := pool.Exec(ctx, `INSERT INTO orders (tenant, email, amount, note) VALUES ($1, $2, $3, $4)`, rng.IntN(7), email, rng.IntN(1000), "pb")
		return err
	case op < 6:
		_, err := pool.Exec(ctx, `UPDATE orders SET amount = $2, email = $3 WHERE id = $1`, id, rng.IntN(1000), email)
		return err
	case op < 7:
		_, err := pool.Exec(ctx, `DELETE FROM orders WHERE id = $1`, id)
		return err
	case op < 9:
		rows, err := pool.Query(ctx, `SELECT id, tenant, email, amount FROM orders WHERE id BETWEEN $1 AND $1 + 5`, id)
		if err != nil {
			return err
		}
		_, err = pgx.CollectRows(rows, pgx.RowToMap)
		return err
	default:
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `UPDATE orders SET amount = amount + 1 WHERE id = $1`, id); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO orders (tenant, email, amount) VALUES ($1, $2, 1)`, rng.IntN(7), email)
			return err
		})
	}
}

func (w *pbWorkload) stop() []error {
	w.cancel()
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.errs
}

// Application traffic through pgbouncer in transaction mode, in the simple
// protocol and the extended one (pgx's exec mode: unnamed statements, as
// pgbouncer 1.18 has no prepared statements), runs across the whole
// trigger-mode lifecycle with greenswap connected directly (sync → cutover
// → rollback → cutover → finalize) with no error at all; and no fresh
// pooled client ever sees a setting of greenswap's (issue 19: 20 of 25
// resolved the table to green before any cutover).
func TestPgbouncerAppTrafficAcrossLifecycle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := syncNewDB(t)
	coExec(t, pool, syncOrdersTable(3000, false))
	pb := pgtest.StartPgbouncer(t, dsn, pgtest.PgbouncerOptions{Settings: map[string]string{"default_pool_size": "6"}})
	app := pb.DSN(pb.DBName, pgtest.SuperUser)
	simple := startPbWorkload(t, app, pgx.QueryExecModeSimpleProtocol, 4, 1)
	extended := startPbWorkload(t, app, pgx.QueryExecModeExec, 4, 2)
	env := coEnv(t, dsn)
	pause := func() { time.Sleep(400 * time.Millisecond) }

	freshPaths := func(phase string) {
		t.Helper()
		for i := range 10 {
			c := coConn(t, app, nil)
			var path string
			if err := c.QueryRow(ctx, `SELECT current_setting('search_path')`, pgx.QueryExecModeSimpleProtocol).Scan(&path); err != nil {
				t.Fatal(err)
			}
			c.Close(ctx)
			if path != `"$user", public` {
				t.Fatalf("%s: fresh pooled client %d has search_path %q", phase, i, path)
			}
		}
	}
	spec := coSync(t, env, syncOrdersSpec("pbl", false))
	freshPaths("synced")
	pause()
	if _, err := Cutover(ctx, env, spec.Name, CutoverOptions{}); err != nil {
		t.Fatalf("cutover: %v", err)
	}
	pause()
	if _, err := Rollback(ctx, env, spec.Name, SwapCommandOptions{}); err != nil {
		t.Fatalf("rollback: %v", err)
	}
	pause()
	coVerify(t, env, spec)
	if _, err := Cutover(ctx, env, spec.Name, CutoverOptions{}); err != nil {
		t.Fatalf("second cutover: %v", err)
	}
	freshPaths("cut over")
	pause()
	if _, err := Finalize(ctx, env, spec.Name, FinalizeOptions{QuietPeriod: 500 * time.Millisecond, SampleEvery: 100 * time.Millisecond, Yes: true}); err != nil {
		t.Fatalf("finalize: %v", err)
	}
	pause()
	for name, w := range map[string]*pbWorkload{"simple protocol": simple, "extended protocol (exec)": extended} {
		errs := w.stop()
		for i, err := range errs {
			if i < 5 {
				t.Errorf("%s: %v", name, err)
			}
		}
		if len(errs) > 0 {
			t.Errorf("%s: %d errors in %d operations", name, len(errs), w.ops.Load())
		}
		if w.ops.Load() < 100 {
			t.Errorf("%s: only %d operations: the workload did not run", name, w.ops.Load())
		}
		t.Logf("%s: %d operations, %d errors", name, w.ops.Load(), len(errs))
	}
	m, err := state.Get(ctx, pool, spec.Name)
	if err != nil || m.State != state.Finalized {
		t.Fatalf("after finalize: %+v, %v", m, err)
	}
	if kind := coStr(t, pool, `SELECT relkind::text FROM pg_class WHERE oid = 'public.orders'::regclass`); kind != "r" {
		t.Fatalf("public.orders is relkind %s after finalize", kind)
	}
}
