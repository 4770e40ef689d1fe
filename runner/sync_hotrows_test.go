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

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/testkit"
)

// hotSchema is wlSchema's table with the keys given by the writers (so a
// key update can move a row onto a key another writer wants) and a
// ledger seeded with every row.
const hotSchema = `
CREATE TABLE accounts (id bigint PRIMARY KEY, value int NOT NULL, note text);
CREATE TABLE ledger (seq bigserial PRIMARY KEY, op text NOT NULL, id bigint NOT NULL, value bigint, via text NOT NULL);
INSERT INTO accounts (id, value, note) SELECT g, g, 'seed' FROM generate_series(1, 20000) g;
INSERT INTO ledger (op, id, value, via) SELECT 'insert', id, value, 'seed' FROM accounts ORDER BY id;
ANALYZE accounts;
`

// hotWriter is one client of TestSyncTriggerHotRowsBothShapes.
type hotWriter struct {
	name string
	conn *pgx.Conn
	errs []error
}

// hotWriters are the clients of TestSyncTriggerHotRowsBothShapes: every
// transaction does one write through the client's shape and appends, in
// the same transaction and after the write (so in the order the row locks
// gave), what it did to the ledger.
type hotWriters struct {
	t       *testing.T
	dsn     string
	hot     int64
	wg      gosync.WaitGroup
	cancels []context.CancelFunc
	writers []*hotWriter
	kinds   gosync.Map // op → *atomic.Int64 commits
	aborts  atomic.Int64
}

func (w *hotWriters) start(name, searchPath string, mode pgx.QueryExecMode, seed uint64) {
	cfg, err := pgx.ParseConfig(w.dsn)
	if err != nil {
		w.t.Fatal(err)
	}
	cfg.RuntimeParams["application_name"] = name
	if searchPath != "" {
		cfg.RuntimeParams["search_path"] = searchPath
	}
	cfg.DefaultQueryExecMode = mode
	c := &hotWriter{name: name}
	if c.conn, err = pgx.ConnectConfig(context.Background(), cfg); err != nil {
		w.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancels = append(w.cancels, cancel)
	w.writers = append(w.writers, c)
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer c.conn.Close(context.Background())
		rng := rand.New(rand.NewPCG(seed, uint64(len(w.writers))))
		for ctx.Err() == nil {
			op, err := w.one(ctx, c, rng)
			switch {
			case err == nil:
				v, _ := w.kinds.LoadOrStore(op, new(atomic.Int64))
				v.(*atomic.Int64).Add(1)
			case ctx.Err() != nil:
			case testkit.Retryable(err):
				w.aborts.Add(1)
			default:
				c.errs = append(c.errs, fmt.Errorf("%s %s: %w", c.name, op, err))
			}
		}
	}()
}

// stop ends every writer and returns their unexpected errors.
func (w *hotWriters) stop() []error {
	for _, c := range w.cancels {
		c()
	}
	w.wg.Wait()
	var errs []error
	for _, c := range w.writers {
		errs = append(errs, c.errs...)
	}
	w.writers, w.cancels = nil, nil
	return errs
}

func (w *hotWriters) count(op string) int64 {
	if v, ok := w.kinds.Load(op); ok {
		return v.(*atomic.Int64).Load()
	}
	return 0
}

// pick is a hot key most of the time, else any key of the seed (most of
// them not copied yet while the backfill runs).
func (w *hotWriters) pick(rng *rand.Rand) int64 {
	if rng.IntN(10) < 7 {
		return rng.Int64N(w.hot) + 1
	}
	return rng.Int64N(20000) + 1
}

// one runs one random transaction and names its operation.
func (w *hotWriters) one(ctx context.Context, c *hotWriter, rng *rand.Rand) (op string, err error) {
	tx, err := c.conn.Begin(ctx)
	if err != nil {
		return "begin", err
	}
	defer func() {
		if err != nil {
			tx.Rollback(context.Background())
		}
	}()
	ledger := func(op string, id, value int64) error {
		_, err := tx.Exec(ctx, `INSERT INTO ledger (op, id, value, via) VALUES ($1, $2, $3, $4)`, op, id, value, c.name)
		return err
	}
	id, v := w.pick(rng), rng.Int64N(1_000_000)
	r := rng.IntN(100)
	switch {
	case r < 40:
		op = "update"
		tag, err := tx.Exec(ctx, `UPDATE accounts SET value = $1 WHERE id = $2`, v, id)
		if err != nil {
			return op, err
		}
		if tag.RowsAffected() == 1 {
			err = ledger("update", id, v)
		}
	case r < 50:
		op = "increment"
		err = tx.QueryRow(ctx, `UPDATE accounts SET value = value + 1 WHERE id = $1 RETURNING value`, id).Scan(&v)
		if err == pgx.ErrNoRows {
			err = nil
		} else if err == nil {
			err = ledger("update", id, v)
		}
	case r < 55:
		// A write that changes nothing: no ledger row needed, and none of
		// the shapes may change.
		op = "no-op update"
		_, err = tx.Exec(ctx, `UPDATE accounts SET value = value WHERE id = $1`, id)
	case r < 65:
		op = "delete"
		tag, err := tx.Exec(ctx, `DELETE FROM accounts WHERE id = $1`, id)
		if err != nil {
			return op, err
		}
		if tag.RowsAffected() == 1 {
			err = ledger("delete", id, 0)
		}
	case r < 80:
		op = "insert"
		if _, err = tx.Exec(ctx, `INSERT INTO accounts (id, value, note) VALUES ($1, $2, $3)`, id, v, c.name); err == nil {
			err = ledger("insert", id, v)
		}
	case r < 92:
		op = "key update"
		to := w.pick(rng)
		err = tx.QueryRow(ctx, `UPDATE accounts SET id = $1 WHERE id = $2 RETURNING value`, to, id).Scan(&v)
		if err == pgx.ErrNoRows {
			err = nil
		} else if err == nil && to != id {
			if err = ledger("delete", id, 0); err == nil {
				err = ledger("update", to, v)
			}
		}
	default:
		op = "range update"
		rows, err := tx.Query(ctx, `UPDATE accounts SET value = value + 1 WHERE id BETWEEN $1 AND $1 + 3 RETURNING id, value`, id)
		if err != nil {
			return op, err
		}
		type iv struct{ id, v int64 }
		got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (iv, error) {
			var x iv
			var val int64
			err := r.Scan(&x.id, &val)
			x.v = val
			return x, err
		})
		if err != nil {
			return op, err
		}
		for _, x := range got {
			if err = ledger("update", x.id, x.v); err != nil {
				break
			}
		}
	}
	if err != nil {
		return op, err
	}
	return op, tx.Commit(ctx)
}

// TestSyncTriggerHotRowsBothShapes: the trigger-mode statements (the plain
// UPDATE by key with the upsert as fallback, the key update in place, the
// delete) under 8 writers through the app name racing the backfill (30% of
// their writes hit rows not copied yet), then, synced and again cut over,
// the same 8 plus 2 clients pinned to blue's and 2 to green's version
// schema, all on 40 hot keys: updates, increments, no-op updates, deletes,
// inserts, key updates onto keys others write, 4-row range updates. After
// each phase, every shape equals the ledger under one snapshot, and blue
// equals green row for row (EXCEPT both ways, by hand). Deadlocks between
// the shapes and key collisions roll back with their ledger rows.
func TestSyncTriggerHotRowsBothShapes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, mapping string }{
		// value mapped by name: the direct form (casts of NEW's fields).
		{"by-name", ""},
		// value through an expression both ways: the subquery form.
		{"expression", "forward:\n  value: value::bigint + 0\nreverse:\n  value: (value - 0)::integer\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			hotRowsLifecycle(t, tc.mapping)
		})
	}
}

func hotRowsLifecycle(t *testing.T, mapping string) {
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, hotSchema)
	env := coEnv(t, dsn)
	w := &hotWriters{t: t, dsn: dsn, hot: 40}
	defer w.stop()
	simple, prepared := pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement
	for i := range 8 {
		mode := simple
		if i%2 == 1 {
			mode = prepared
		}
		w.start(fmt.Sprintf("app-%d", i), "", mode, uint64(100+i))
	}
	time.Sleep(100 * time.Millisecond)
	sp := syncSpec(t, `
name: hot
table: public.accounts
mode: trigger
target:
  ddl: CREATE TABLE accounts (id bigint PRIMARY KEY, value bigint NOT NULL, note text)
`+mapping)
	st, err := Sync(ctx, env, sp, SyncOptions{BatchSize: 200})
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	if st.Batches < 50 {
		t.Fatalf("sync in %d batches: too few to race the writers", st.Batches)
	}
	duringSync := w.count("update") + w.count("key update") + w.count("delete")
	for i, p := range []string{"gs_hot_blue", "gs_hot_green"} {
		w.start(fmt.Sprintf("%s-simple", p), p+", public", simple, uint64(200+i))
		w.start(fmt.Sprintf("%s-prepared", p), p+", public", prepared, uint64(300+i))
	}
	check := func(phase string) {
		t.Helper()
		errs := w.stop()
		for i, err := range errs {
			if i < 5 {
				t.Errorf("%s: %v", phase, err)
			}
		}
		if len(errs) > 0 {
			t.Fatalf("%s: %d unexpected errors", phase, len(errs))
		}
		for k, d := range ledgerDiff(t, dsn, map[string]string{
			"app":   `SELECT id, value::bigint FROM public.accounts`,
			"blue":  `SELECT id, value::bigint FROM gs_hot_blue.accounts`,
			"green": `SELECT id, value FROM gs_hot_green.accounts`,
		}) {
			if d != 0 {
				t.Errorf("%s: %s differs from the ledger in %d rows", phase, k, d)
			}
		}
		if d := testkit.Count(t, pool, `SELECT (SELECT count(*) FROM (SELECT id, value::bigint, note FROM gs_hot_blue.accounts
			EXCEPT SELECT id, value, note FROM gs_hot_green.accounts) a) + (SELECT count(*) FROM (SELECT id, value, note FROM gs_hot_green.accounts
			EXCEPT SELECT id, value::bigint, note FROM gs_hot_blue.accounts) b)`); d != 0 {
			t.Errorf("%s: blue and green differ in %d rows", phase, d)
		}
	}
	time.Sleep(1500 * time.Millisecond)
	check("synced")
	if duringSync < 100 {
		t.Fatalf("only %d writes during the sync", duringSync)
	}
	coVerify(t, env, sp)
	out := &coBuffer{}
	if _, err := Cutover(ctx, env, "hot", CutoverOptions{SwapCommandOptions: SwapCommandOptions{Out: out, LockTimeout: 500 * time.Millisecond, MaxAttempts: 40}}); err != nil {
		t.Fatalf("cutover: %v\n%s", err, out)
	}
	for i := range 8 {
		mode := simple
		if i%2 == 1 {
			mode = prepared
		}
		w.start(fmt.Sprintf("app-%d", i), "", mode, uint64(400+i))
	}
	for i, p := range []string{"gs_hot_blue", "gs_hot_green"} {
		w.start(fmt.Sprintf("%s-simple", p), p+", public", simple, uint64(500+i))
		w.start(fmt.Sprintf("%s-prepared", p), p+", public", prepared, uint64(600+i))
	}
	time.Sleep(1500 * time.Millisecond)
	check("cut over")
	for _, op := range []string{"update", "increment", "no-op update", "delete", "insert", "key update", "range update"} {
		if n := w.count(op); n < 20 {
			t.Errorf("only %d commits of %s", n, op)
		}
	}
	t.Logf("commits: update %d, increment %d, no-op %d, delete %d, insert %d, key update %d, range %d; %d rolled back (deadlock, key taken)",
		w.count("update"), w.count("increment"), w.count("no-op update"), w.count("delete"), w.count("insert"),
		w.count("key update"), w.count("range update"), w.aborts.Load())
}
