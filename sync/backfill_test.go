package sync_test

import (
	"context"
	"errors"
	"fmt"
	gosync "sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/runner"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
	gssync "github.com/greenswap/greenswap/sync"
)

// fixture is a migration adopted with green created (sync triggers on),
// not yet backfilled.
type fixture struct {
	pool    *pgxpool.Pool
	dsn     string
	names   shadow.Names
	mapping *shadow.Mapping
	blue    *shadow.Table

	mu          gosync.Mutex
	checkpoints []gssync.Checkpoint
	throttles   []string
}

func setup(t *testing.T, tableSQL, specYAML string) *fixture {
	t.Helper()
	pool, dsn := pgtest.NewPool(t)
	return setupOn(t, pool, dsn, tableSQL, specYAML)
}

// setupOn is setup on a database the caller chose (replica_test.go: one on
// its own primary, followed by a standby).
func setupOn(t *testing.T, pool *pgxpool.Pool, dsn, tableSQL, specYAML string) *fixture {
	t.Helper()
	ctx := context.Background()
	pgtest.Exec(t, dsn, tableSQL)
	spec, err := spec.ParseSpec([]byte(specYAML), "test.yaml", "yaml")
	if err != nil {
		t.Fatal(err)
	}
	env, err := runner.Connect(ctx, dsn, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel))
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	if _, err := runner.Sync(ctx, env, spec, runner.SyncOptions{StopAfterSetup: true}); err != nil {
		t.Fatal(err)
	}
	f := &fixture{pool: pool, dsn: dsn, names: shadow.NamesFor(spec.Name, spec.AppTable())}
	if f.blue, err = shadow.LoadTable(ctx, pool, f.names.Blue); err != nil {
		t.Fatal(err)
	}
	green, err := shadow.LoadTable(ctx, pool, f.names.Green)
	if err != nil {
		t.Fatal(err)
	}
	if f.mapping, err = shadow.BuildMapping(spec, f.blue, green); err != nil {
		t.Fatal(err)
	}
	return f
}

// backfiller checkpoints into memory (the runner's tests cover the
// migrations row).
func (f *fixture) backfiller(t *testing.T, o gssync.Options) *gssync.Backfiller {
	return &gssync.Backfiller{
		Pool: f.pool, Names: f.names, Mapping: f.mapping, Blue: f.blue, Options: o,
		Log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
		Checkpoint: func(ctx context.Context, tx pgx.Tx, cp gssync.Checkpoint) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.checkpoints = append(f.checkpoints, cp)
			return nil
		},
		OnThrottle: func(r string) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.throttles = append(f.throttles, r)
		},
	}
}

func (f *fixture) exec(t *testing.T, sql string) { t.Helper(); pgtest.Exec(t, f.dsn, sql) }

func (f *fixture) count(t *testing.T, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := f.pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// diff counts rows differing between blue (selected with blueCols, the
// forward mapping written by hand) and green (greenCols), both ways.
func (f *fixture) diff(t *testing.T, blueCols, greenCols string) int64 {
	t.Helper()
	b := "SELECT " + blueCols + " FROM " + f.names.Blue.Schema + "." + f.names.Blue.Name
	g := "SELECT " + greenCols + " FROM " + f.names.Green.Schema + "." + f.names.Green.Name
	return f.count(t, fmt.Sprintf("SELECT count(*) FROM ((%s EXCEPT %s) UNION ALL (%s EXCEPT %s)) d", b, g, g, b))
}

// waitBlocked waits until backend pid waits on a lock.
func waitBlocked(t *testing.T, pool *pgxpool.Pool, pid uint32) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'`, int32(pid)).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend %d never waited on a lock", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Key values go to the cursor as text and come back through casts to the
// column types: they must round-trip exactly whatever the session's
// DateStyle, IntervalStyle, extra_float_digits and bytea_output. A batch of
// 7 rows makes every row a range boundary sooner or later.
func TestBackfillKeyRoundTrip(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, table, key string
	}{
		{"time-float-text", `ts timestamptz, f float8, s text COLLATE "C", v int`, "ts, f, s"},
		{"numeric-uuid-bytea-interval", `n numeric, u uuid, b bytea, iv interval, v int`, "n, u, b, iv"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			table := fmt.Sprintf(`
				CREATE TABLE k (%s, PRIMARY KEY (%s));
				INSERT INTO k SELECT %s FROM generate_series(1, 400) g;
				DO $$BEGIN EXECUTE format('ALTER DATABASE %%I SET datestyle = %%L', current_database(), 'SQL, DMY');
				  EXECUTE format('ALTER DATABASE %%I SET extra_float_digits = 0', current_database());
				  EXECUTE format('ALTER DATABASE %%I SET bytea_output = escape', current_database());
				  EXECUTE format('ALTER DATABASE %%I SET intervalstyle = sql_standard', current_database()); END$$;`,
				tc.table, tc.key, map[string]string{
					"time-float-text": `'2024-02-29 23:59:59.999999+05:30'::timestamptz + (g % 37) * interval '1.000001 second',
						1 / (g % 11 + 3)::float8 + 1e-300, 'a''b "c" ü ' || (g % 3), g`,
					"numeric-uuid-bytea-interval": `(g % 13) / 7.0::numeric, md5((g % 5)::text)::uuid, decode(lpad(to_hex(g % 3), 2, '0') || '5c27', 'hex'),
						make_interval(months => g % 2, days => g % 3, secs => (g % 4) / 3.0), g`,
				}[tc.name])
			f := setup(t, table, `
name: k
table: k
target:
  ddl: CREATE TABLE k (`+tc.table+`, PRIMARY KEY (`+tc.key+`))
`)
			var ds string
			if err := f.pool.QueryRow(context.Background(), "SHOW datestyle").Scan(&ds); err != nil || ds != "SQL, DMY" {
				t.Fatalf("datestyle %q, %v: the test must run under unusual settings", ds, err)
			}
			bf := f.backfiller(t, gssync.Options{BatchSize: 7, Fixed: true})
			res, err := bf.Run(context.Background(), nil)
			if err != nil {
				t.Fatal(err)
			}
			if !res.Done || res.Rows != 400 || res.Batches != 400/7+1 {
				t.Fatalf("result %+v; want 400 rows in %d batches", res, 400/7+1)
			}
			if d := f.diff(t, "*", "*"); d != 0 {
				t.Fatalf("%d rows differ", d)
			}
			// Resuming from any recorded cursor copies exactly the rest.
			f.mu.Lock()
			cp := f.checkpoints[len(f.checkpoints)/2]
			f.mu.Unlock()
			pgtest.Exec(t, f.dsn, `SELECT set_config('greenswap.sync_k', '0', true); DELETE FROM gs_k_green.k`) // the flag passes green's write gate
			res, err = f.backfiller(t, gssync.Options{BatchSize: 7, Fixed: true}).Run(context.Background(), cp.Cursor)
			if err != nil {
				t.Fatal(err)
			}
			if want := 400 - cp.RowsCopied; res.Rows != want {
				t.Fatalf("resumed from %q: %d rows, want %d", cp.Cursor, res.Rows, want)
			}
		})
	}
}

const ordersTable = `
	CREATE TABLE orders (id bigserial PRIMARY KEY, email text, amount int NOT NULL, note text);
	INSERT INTO orders (email, amount, note)
	SELECT CASE WHEN g % 4 = 0 THEN NULL ELSE 'u' || g END, g, CASE WHEN g % 50 = 0 THEN repeat('x', 5000) END
	FROM generate_series(1, 2000) g;`

const ordersSpec = `
name: o
table: orders
target:
  ddl: CREATE TABLE orders (id bigint PRIMARY KEY, email text NOT NULL, amount numeric(12,2) NOT NULL, note text)
forward:
  email: coalesce(email, '-')
`

const ordersBlue = `id, coalesce(email, '-'), amount::numeric(12,2), note`

// A batch's range is fixed before it locks its rows: a row of the range
// whose key an in-flight UPDATE moves far ahead is re-read in its new
// version (EvalPlanQual), but the cursor stays at the range's end, so the
// rows in between are not skipped. ("The last key of a LIMIT n FOR KEY SHARE
// batch" would be the moved key here.)
func TestBackfillCursorSurvivesKeyUpdateInFlight(t *testing.T) {
	t.Parallel()
	f := setup(t, ordersTable, ordersSpec)
	ctx := context.Background()
	bf := f.backfiller(t, gssync.Options{})
	app, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Rollback(ctx)
	if _, err := app.Exec(ctx, `UPDATE orders SET id = 100000 WHERE id = 10`); err != nil {
		t.Fatal(err)
	}
	tx, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	type out struct {
		b   gssync.Batch
		err error
	}
	done := make(chan out, 1)
	go func() {
		b, err := bf.CopyBatch(ctx, tx, nil, 10)
		done <- out{b, err}
	}()
	waitBlocked(t, f.pool, tx.Conn().PgConn().PID())
	if err := app.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	o := <-done
	if o.err != nil {
		t.Fatal(o.err)
	}
	if fmt.Sprint(o.b.Next) != "[10]" || o.b.Scanned != 9 || o.b.Last {
		t.Fatalf("batch %+v; want 9 rows up to key 10", o.b)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := bf.Run(ctx, o.b.Next); err != nil {
		t.Fatal(err)
	}
	if d := f.diff(t, ordersBlue, "*"); d != 0 {
		t.Fatalf("%d rows differ", d)
	}
}

// A batch that waits too long for a row lock rolls back, backs off,
// shrinks and retries; nothing is lost.
func TestBackfillRetriesOnLockTimeout(t *testing.T) {
	t.Parallel()
	f := setup(t, ordersTable, ordersSpec)
	ctx := context.Background()
	app, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Rollback(ctx)
	if _, err := app.Exec(ctx, `DELETE FROM orders WHERE id = 1500`); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(1200 * time.Millisecond)
		app.Commit(ctx)
	}()
	bf := f.backfiller(t, gssync.Options{BatchSize: 400, LockTimeout: 100 * time.Millisecond, PollInterval: 50 * time.Millisecond})
	res, err := bf.Run(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Retries == 0 {
		t.Fatal("no batch was retried")
	}
	f.mu.Lock()
	if len(f.throttles) == 0 || f.throttles[0] != "row locks held by the application" {
		t.Errorf("throttle reasons %q", f.throttles)
	}
	f.mu.Unlock()
	if d := f.diff(t, ordersBlue, "*"); d != 0 {
		t.Fatalf("%d rows differ", d)
	}
	if n := f.count(t, `SELECT count(*) FROM gs_o_green.orders WHERE id = 1500`); n != 0 {
		t.Fatal("the deleted row reached green")
	}
}

// Throttles hold the backfill until they all say go; each change of reason is reported.
func TestBackfillThrottle(t *testing.T) {
	t.Parallel()
	f := setup(t, ordersTable, ordersSpec)
	calls := 0
	bf := f.backfiller(t, gssync.Options{BatchSize: 500, Fixed: true, PollInterval: 10 * time.Millisecond})
	bf.Throttles = []gssync.Throttle{
		&gssync.ReplicaLag{Q: f.pool, Max: time.Second}, // no standbys here: never holds
		gssync.ThrottleFunc(func(context.Context) (string, error) {
			calls++
			if calls == 2 || calls == 3 {
				return "test hold", nil
			}
			return "", nil
		}),
	}
	res, err := bf.Run(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Batches != 5 || calls != 7 {
		t.Fatalf("%d batches, %d throttle calls", res.Batches, calls)
	}
	if fmt.Sprintf("%q", f.throttles) != `["test hold" ""]` {
		t.Fatalf("throttle reasons %q", f.throttles)
	}
	failing := f.backfiller(t, gssync.Options{})
	failing.Throttles = []gssync.Throttle{gssync.ThrottleFunc(func(context.Context) (string, error) { return "", errors.New("boom") })}
	if _, err := failing.Run(context.Background(), nil); err == nil || err.Error() != "boom" {
		t.Fatalf("err = %v", err)
	}
}

// Cancellation stops after the batch in flight: that batch is committed and checkpointed.
func TestBackfillCancelAfterBatch(t *testing.T) {
	t.Parallel()
	f := setup(t, ordersTable, ordersSpec)
	ctx, cancel := context.WithCancel(context.Background())
	bf := f.backfiller(t, gssync.Options{BatchSize: 100, Fixed: true})
	inner := bf.Checkpoint
	bf.Checkpoint = func(c context.Context, tx pgx.Tx, cp gssync.Checkpoint) error {
		if cp.RowsCopied == 300 {
			cancel() // Ctrl-C while the third batch is in flight
		}
		return inner(c, tx, cp)
	}
	res, err := bf.Run(ctx, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if res.Batches != 3 || res.Rows != 300 || fmt.Sprint(res.Cursor) != "[300]" {
		t.Fatalf("result %+v", res)
	}
	if n := f.count(t, `SELECT count(*) FROM gs_o_green.orders`); n != 300 {
		t.Fatalf("green has %d rows", n)
	}
}

// NiceRatio sleeps after every batch but the last, in proportion to the
// batch's time, and copies the same rows; without it nothing is slept.
func TestBackfillNiceRatio(t *testing.T) {
	t.Parallel()
	f := setup(t, ordersTable, ordersSpec)
	res, err := f.backfiller(t, gssync.Options{BatchSize: 500, Fixed: true, NiceRatio: 2}).Run(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Batches != 5 || res.Rows != 2000 || res.Yielded <= 0 || res.Yielded > res.Duration*2/3 {
		t.Fatalf("result %+v", res)
	}
	if d := f.diff(t, ordersBlue, "*"); d != 0 {
		t.Fatalf("%d rows differ", d)
	}
	f.exec(t, `SELECT set_config('greenswap.sync_o', '0', true); TRUNCATE gs_o_green.orders`) // the flag passes green's write gate
	plain, err := f.backfiller(t, gssync.Options{BatchSize: 500, Fixed: true}).Run(context.Background(), nil)
	if err != nil || plain.Yielded != 0 || plain.Rows != 2000 {
		t.Fatalf("without NiceRatio: %+v, %v", plain, err)
	}
}

// Adaptive sizing grows fast batches toward the target time.
func TestBackfillAdaptive(t *testing.T) {
	t.Parallel()
	f := setup(t, ordersTable, ordersSpec)
	bf := f.backfiller(t, gssync.Options{BatchSize: 10, MinBatchSize: 10, MaxBatchSize: 400, TargetBatchTime: time.Second})
	res, err := bf.Run(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	sizes := []int{}
	for _, cp := range f.checkpoints {
		sizes = append(sizes, cp.BatchSize)
	}
	if sizes[0] != 10 || sizes[1] != 15 || sizes[len(sizes)-1] != 400 || res.Rows != 2000 {
		t.Fatalf("sizes %v, %d rows", sizes, res.Rows)
	}
}

// LockWaiters sees an application session queued behind a batch's row
// locks; once the batch commits the session's DELETE goes through and its
// trigger removes the copied row from green (trap 1, the other order).
func TestLockWaiters(t *testing.T) {
	t.Parallel()
	f := setup(t, ordersTable, ordersSpec)
	ctx := context.Background()
	bf := f.backfiller(t, gssync.Options{})
	tx, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := bf.CopyBatch(ctx, tx, nil, 50); err != nil {
		t.Fatal(err)
	}
	pid := tx.Conn().PgConn().PID()
	// greenswap's own session (the logical stream's applier) waiting on
	// the batch does not count: it is not the application.
	cfg, err := pgx.ParseConfig(f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["application_name"] = "greenswap:o:stream"
	own, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close(ctx)
	ownDone := make(chan error, 1)
	go func() {
		_, err := own.Exec(ctx, `SELECT set_config('greenswap.sync_o', '0', true); INSERT INTO gs_o_green.orders (id, email, amount) VALUES (8, 'x', 0) ON CONFLICT (id) DO NOTHING`)
		ownDone <- err
	}()
	waitBlocked(t, f.pool, own.PgConn().PID())
	if n, err := gssync.LockWaiters(ctx, f.pool, pid); err != nil || n != 0 {
		t.Fatalf("greenswap's own waiter counted: %d, %v", n, err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := f.pool.Exec(ctx, `DELETE FROM orders WHERE id = 7`)
		done <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := gssync.LockWaiters(ctx, f.pool, pid)
		if err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the DELETE never waited on the batch")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := <-ownDone; err != nil {
		t.Fatal(err)
	}
	if n := f.count(t, `SELECT count(*) FROM gs_o_green.orders WHERE id = 7`); n != 0 {
		t.Fatal("ghost row 7 in green")
	}
	if n := f.count(t, `SELECT count(*) FROM gs_o_green.orders`); n != 49 {
		t.Fatalf("green has %d rows, want 49", n)
	}
}

// Batches insert without ON CONFLICT while no key of their range is in
// green; a batch that meets one (written by the trigger) is redone with
// ON CONFLICT DO NOTHING, and the row keeps the trigger's newer version.
func TestBackfillRedoesPlainBatchOnConflict(t *testing.T) {
	t.Parallel()
	f := setup(t, ordersTable, ordersSpec)
	f.exec(t, `UPDATE orders SET amount = -1 WHERE id = 550`)
	res, err := f.backfiller(t, gssync.Options{BatchSize: 100, Fixed: true}).Run(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Redone != 1 || res.Rows != 1999 || res.Scanned != 2000 || res.Batches != 21 { // 20 ranges, then the empty tail
		t.Fatalf("result %+v", res)
	}
	if d := f.diff(t, ordersBlue, "*"); d != 0 {
		t.Fatalf("%d rows differ", d)
	}
}
