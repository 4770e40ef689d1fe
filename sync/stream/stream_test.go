package stream_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/testkit"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
	gssync "github.com/greenswap/greenswap/sync"
	"github.com/greenswap/greenswap/sync/stream"
	"github.com/greenswap/greenswap/trigger"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// names are unique per test process: replication slots are cluster-wide.
var counter atomic.Int64

func uniqueName(prefix string) string { return fmt.Sprintf("%s%d", prefix, counter.Add(1)) }

// ordersTable is blue: a bigserial key, a nullable email, an int amount,
// notes some of which are TOAST-sized.
func ordersTable(rows int) string {
	return fmt.Sprintf(`
		CREATE TABLE orders (
			id         bigserial PRIMARY KEY,
			tenant     int NOT NULL,
			email      text,
			amount     int NOT NULL,
			note       text,
			created_at timestamptz NOT NULL DEFAULT now()
		);
		INSERT INTO orders (tenant, email, amount, note)
		SELECT g %% 7, CASE WHEN g %% 5 = 0 THEN NULL ELSE 'u' || g || '@x' END, g %% 1000,
		       CASE WHEN g %% 3 = 0 THEN NULL WHEN g %% 97 = 0 THEN repeat(md5(g::text), 300) ELSE 'n' || g END
		FROM generate_series(1, %d) g;
		ANALYZE orders;`, rows)
}

// ordersSpec: bigint, numeric(12,2) with a lossy reverse mapping, NOT NULL
// email through coalesce, a unique index on email... not: emails repeat.
func ordersSpec(name string) string {
	return fmt.Sprintf(`
name: %s
table: public.orders
mode: logical
target:
  ddl: |
    CREATE TABLE orders (
      id         bigint PRIMARY KEY,
      tenant     int NOT NULL,
      email      text NOT NULL,
      amount     numeric(12,2) NOT NULL,
      note       text,
      created_at timestamptz NOT NULL DEFAULT now()
    )
forward:
  email: coalesce(email, 'unknown@invalid')
reverse:
  amount: round(amount)::int
`, name)
}

// fixture is a logical-mode migration adopted, with green created (forward
// triggers off, reverse off) and the slot and publication made, green not
// yet backfilled.
type fixture struct {
	t       *testing.T
	pool    *pgxpool.Pool
	dsn     string
	name    string
	names   shadow.Names
	mapping *shadow.Mapping
	blue    *shadow.Table
	start   pglogrepl.LSN
}

// checkpointTable holds the fixture's stream checkpoint. It is written in
// the apply transaction, as greenswap.migrations.confirmed_lsn is, so a
// batch whose commit fails (its session killed) does not move it: a
// checkpoint kept in memory by the callback would, and the next streamer
// would start past a batch that never landed.
const checkpointTable = "public.gs_test_checkpoint"

// checkpoint is the last committed checkpoint (0 before any).
func (f *fixture) checkpoint() pglogrepl.LSN {
	f.t.Helper()
	var lsn string
	err := f.pool.QueryRow(context.Background(), `SELECT coalesce(max(lsn), '0/0')::text FROM `+checkpointTable).Scan(&lsn)
	if err != nil {
		f.t.Fatal(err)
	}
	l, err := pglogrepl.ParseLSN(lsn)
	if err != nil {
		f.t.Fatal(err)
	}
	return l
}

func setup(t *testing.T, tableSQL, specYAML, name string) *fixture {
	t.Helper()
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, tableSQL+";CREATE TABLE "+checkpointTable+" (lsn pg_lsn NOT NULL)")
	spec, err := spec.ParseSpec([]byte(specYAML), "test.yaml", "yaml")
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, pool: pool, dsn: dsn, name: name, names: shadow.NamesFor(spec.Name, spec.AppTable())}
	n := f.names
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		app, err := shadow.LoadTable(ctx, tx, n.App)
		if err != nil {
			return err
		}
		all := shadow.AdoptStep(n, app, pgtest.ServerMajor(t)).SQL
		all = append(all, shadow.CreateGreenSQL(n, spec)...)
		if err := execAll(ctx, tx, all); err != nil {
			return err
		}
		if f.blue, err = shadow.LoadTable(ctx, tx, n.Blue); err != nil {
			return err
		}
		green, err := shadow.LoadTable(ctx, tx, n.Green)
		if err != nil {
			return err
		}
		if f.mapping, err = shadow.BuildMapping(spec, f.blue, green); err != nil {
			return err
		}
		if err := execAll(ctx, tx, shadow.GreenFixupSQL(n, f.blue, green, f.mapping)); err != nil {
			return err
		}
		if green, err = shadow.LoadTable(ctx, tx, n.Green); err != nil {
			return err
		}
		if f.mapping, err = shadow.BuildMapping(spec, f.blue, green); err != nil {
			return err
		}
		return execAll(ctx, tx, trigger.LogicalInstallStep(n, f.mapping, f.blue.Owner).SQL)
	})
	if err != nil {
		t.Fatal(err)
	}
	if f.start, err = stream.Setup(ctx, pool, n, f.mapping, true, testLog(t)); err != nil {
		t.Fatal(err)
	}
	return f
}

func execAll(ctx context.Context, tx pgx.Tx, sql []string) error {
	for _, s := range sql {
		if _, err := tx.Exec(ctx, s); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return nil
}

func testLog(t *testing.T) zerolog.Logger { return testkit.Logger(t) }

func (f *fixture) config(opt stream.Options) stream.Config {
	cfg, err := pgconn.ParseConfig(f.dsn)
	if err != nil {
		f.t.Fatal(err)
	}
	if opt.StatusInterval == 0 {
		opt.StatusInterval = 200 * time.Millisecond
	}
	if opt.MinBackoff == 0 {
		opt.MinBackoff, opt.MaxBackoff = 20*time.Millisecond, 200*time.Millisecond
	}
	return stream.Config{
		Pool: f.pool, Conn: cfg, Migration: f.name, Names: f.names, Mapping: f.mapping, Blue: f.blue,
		Start: max(f.start, f.checkpoint()),
		Checkpoint: func(ctx context.Context, tx pgx.Tx, lsn pglogrepl.LSN) error {
			_, err := tx.Exec(ctx, `INSERT INTO `+checkpointTable+` VALUES ($1::text::pg_lsn)`, lsn.String())
			return err
		},
		Log: testLog(f.t), Options: opt,
	}
}

// running is a streamer on its own goroutine.
type running struct {
	s      *stream.Streamer
	cancel context.CancelFunc
	done   chan error
}

func (f *fixture) run(opt stream.Options) *running {
	f.t.Helper()
	s, err := stream.New(f.config(opt))
	if err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{s: s, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- s.Run(ctx) }()
	f.t.Cleanup(func() { r.stop() })
	return r
}

func (r *running) stop() error {
	r.cancel()
	err, ok := <-r.done
	if ok {
		close(r.done)
	}
	return err
}

// waitApplied waits until the stream has applied everything committed so far.
func (f *fixture) waitApplied(d time.Duration) {
	f.t.Helper()
	ctx := context.Background()
	lsn, err := stream.CurrentLSN(ctx, f.pool)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := stream.WaitApplied(ctx, f.pool, f.names, lsn, d); err != nil {
		f.t.Fatal(err)
	}
}

// backfill copies blue into green with the real keyed backfill (FOR KEY
// SHARE, ON CONFLICT DO NOTHING) in small batches.
func (f *fixture) backfill(batch int) gssync.Result {
	f.t.Helper()
	b := &gssync.Backfiller{
		Pool: f.pool, Names: f.names, Mapping: f.mapping, Blue: f.blue,
		Options: gssync.Options{BatchSize: batch, Fixed: true},
		Log:     testLog(f.t),
		Checkpoint: func(context.Context, pgx.Tx, gssync.Checkpoint) error {
			return nil
		},
	}
	res, err := b.Run(context.Background(), nil)
	if err != nil {
		f.t.Fatal(err)
	}
	return res
}

// diff is the oracle, written by hand here and not generated by greenswap:
// the rows of blue mapped through the spec's forward expressions EXCEPT
// green's, and the other way round.
func (f *fixture) diff() int {
	f.t.Helper()
	blue, green := testkit.OrdersBlueMapped(f.name), testkit.OrdersGreen(f.name)
	n := int(testkit.Diff(f.t, f.pool, blue, green))
	if n > 0 {
		rows, err := f.pool.Query(context.Background(), fmt.Sprintf(`SELECT * FROM ((SELECT 'blue' AS side, b.* FROM (%s EXCEPT %s) b) UNION ALL (SELECT 'green', g.* FROM (%s EXCEPT %s) g)) d ORDER BY id, side LIMIT 10`, blue, green, green, blue))
		if err == nil {
			for rows.Next() {
				v, _ := rows.Values()
				for i, x := range v {
					if s, ok := x.(string); ok && len(s) > 40 {
						v[i] = s[:40] + "…"
					}
				}
				f.t.Logf("differs: %v", v)
			}
			rows.Close()
		}
	}
	return n
}

func (f *fixture) count(sql string, args ...any) int {
	f.t.Helper()
	return int(testkit.Count(f.t, f.pool, sql, args...))
}

func (f *fixture) exec(sql string, args ...any) {
	f.t.Helper()
	if _, err := f.pool.Exec(context.Background(), sql, args...); err != nil {
		f.t.Fatalf("%s: %v", sql, err)
	}
}

// workload is testkit's workload with the stream's mix
// (testkit.MixStream), under the names this package's tests use.
type workload struct {
	*testkit.Workload
	ops *atomic.Int64
}

func startWorkload(t *testing.T, dsn, table string, workers int, seed uint64, noNull bool) *workload {
	return startPacedWorkload(t, dsn, table, workers, seed, noNull, 0)
}

func startPacedWorkload(t *testing.T, dsn, table string, workers int, seed uint64, noNull bool, pause time.Duration) *workload {
	t.Helper()
	return startParityWorkload(t, dsn, table, workers, seed, noNull, pause, 0)
}

// startParityWorkload is startPacedWorkload kept to one parity of |id| (see
// testkit.WorkloadOptions.Parity).
func startParityWorkload(t *testing.T, dsn, table string, workers int, seed uint64, noNull bool, pause time.Duration, parity int64) *workload {
	t.Helper()
	w := testkit.StartWorkload(t, dsn, testkit.WorkloadOptions{
		Table: table, Workers: workers, Seed: seed, Mix: testkit.MixStream,
		NoNulls: noNull, Pause: pause, Parity: parity,
	})
	return &workload{Workload: w, ops: &w.Ops}
}

func (w *workload) stop() []error { return w.Stop() }

func seeds(t *testing.T, def int) []uint64 { return testkit.Seeds(t, def) }

func TestFullXid(t *testing.T) {
	const epoch = uint64(5) << 32
	for _, c := range []struct {
		xid  uint32
		next uint64
		want uint64
	}{
		{100, 1000, 100},                       // epoch 0
		{100, epoch | 1000, epoch | 100},       // same epoch
		{4294967000, epoch | 5, epoch - 296},   // wrapped: the previous epoch
		{999, epoch | 1000, epoch | 999},       // just assigned
		{1000, epoch | 1000, (4 << 32) | 1000}, // cannot be "next" itself: the previous epoch
	} {
		if got := stream.FullXid(c.xid, c.next); got != c.want {
			t.Errorf("FullXid(%d, %#x) = %#x, want %#x", c.xid, c.next, got, c.want)
		}
	}
}

// The main property: with the slot created before the keyed backfill, a
// concurrent workload through the app name (inserts, updates, deletes, key
// updates, NULLs, TOAST values left unchanged, big transactions) and the
// streamer applying alongside, green converges to blue mapped through the
// forward expressions. The walsender is killed twice on the way (the
// server drops the connection: the streamer reconnects and resumes).
func TestStreamConvergesWithBackfill(t *testing.T) {
	t.Parallel()
	for _, seed := range seeds(t, 3) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			name := uniqueName("conv")
			f := setup(t, ordersTable(4000), ordersSpec(name), name)
			r := f.run(stream.Options{MaxBatchKeys: 300})
			w := startWorkload(t, f.dsn, "orders", 3, seed, false)
			time.Sleep(100 * time.Millisecond)
			res := f.backfill(150)
			f.exec(`SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL`, f.names.Slot)
			time.Sleep(300 * time.Millisecond)
			f.exec(`SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL`, f.names.Slot)
			time.Sleep(300 * time.Millisecond)
			if errs := w.stop(); len(errs) > 0 {
				t.Fatalf("%d workload errors, first: %v", len(errs), errs[0])
			}
			f.waitApplied(30 * time.Second)
			st := r.s.Stats()
			if err := r.stop(); err != nil {
				t.Fatal(err)
			}
			if d := f.diff(); d != 0 {
				t.Fatalf("green differs from blue in %d rows", d)
			}
			if st.Keys == 0 || st.Txns == 0 || st.Reconnects < 1 || f.checkpoint() == 0 {
				t.Fatalf("stats %+v, checkpoint %s", st, f.checkpoint())
			}
			t.Logf("backfill %d rows in %d batches; workload %d ops; stream %d txns, %d keys, %d batches, %d reconnects",
				res.Rows, res.Batches, w.ops.Load(), st.Txns, st.Keys, st.Batches, st.Reconnects)
		})
	}
}

// The streaming process is stopped abruptly at random moments — its
// context cancelled mid-transaction, or its walsender and apply sessions
// killed — and started again from the checkpoint, while a workload with big
// transactions runs: no change is lost, and changes applied twice do no
// harm.
func TestStreamRestartMidTransaction(t *testing.T) {
	t.Parallel()
	name := uniqueName("rst")
	f := setup(t, ordersTable(2000), ordersSpec(name), name)
	f.backfill(1000)
	w := startWorkload(t, f.dsn, "orders", 3, 7, false)
	rng := rand.New(rand.NewPCG(7, 7))
	restarts := 0
	for i := range 6 {
		r := f.run(stream.Options{MaxBatchKeys: 50})
		time.Sleep(time.Duration(100+rng.IntN(250)) * time.Millisecond)
		if i%2 == 0 {
			// Kill every session of the streamer (walsender and appliers)
			// first, then abandon it.
			f.exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity
				WHERE (application_name = $1 OR (backend_type = 'client backend' AND query LIKE '%gs_' || $2 || '_green%'))
				  AND pid <> pg_backend_pid()`, "greenswap:"+name+":stream", name)
			// The appliers share the test's pool: drop its killed idle
			// sessions, or the test's next query may get one.
			f.pool.Reset()
		}
		_ = r.stop()
		restarts++
	}
	if errs := w.stop(); len(errs) > 0 {
		t.Fatalf("%d workload errors, first: %v", len(errs), errs[0])
	}
	r := f.run(stream.Options{})
	f.waitApplied(30 * time.Second)
	_ = r.stop()
	if d := f.diff(); d != 0 {
		t.Fatalf("after %d restarts green differs from blue in %d rows", restarts, d)
	}
	t.Logf("%d restarts, workload %d ops", restarts, w.ops.Load())
}

// Trap 8: a commit reaches the stream before it is visible. A session with
// synchronous_commit = on and a synchronous standby that never answers has
// written and flushed its commit record (the stream has it) but stays in
// the proc array: pg_xact_status says 'in progress' and other sessions do
// not see its rows. The applier must wait, not re-read blue too early.
func TestVisibilityWait(t *testing.T) {
	ctx := context.Background()
	name := uniqueName("vis")
	f := setup(t, ordersTable(10), ordersSpec(name), name)
	var sc string
	if err := f.pool.QueryRow(ctx, `SHOW synchronous_commit`).Scan(&sc); err != nil || sc != "off" {
		t.Skipf("the server's synchronous_commit is %q: a cluster-wide synchronous_standby_names would stall other sessions", sc)
	}
	f.backfill(100)
	r := f.run(stream.Options{VisibilityTimeout: time.Minute})
	f.waitApplied(10 * time.Second)

	f.exec(fmt.Sprintf(`ALTER SYSTEM SET synchronous_standby_names = 'gs_nobody_%s'`, name))
	f.exec(`SELECT pg_reload_conf()`)
	reset := func() {
		f.exec(`ALTER SYSTEM RESET synchronous_standby_names`)
		f.exec(`SELECT pg_reload_conf()`)
	}
	defer reset()
	time.Sleep(200 * time.Millisecond) // let the backends reload

	conn, err := pgx.Connect(ctx, f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `SET synchronous_commit = on`); err != nil {
		t.Fatal(err)
	}
	var xid uint32
	var pid int32
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRow(ctx, `INSERT INTO orders (id, tenant, email, amount) VALUES (424242, 1, 'late@x', 7)
		RETURNING pg_current_xact_id()::text::bigint::int8 & 4294967295, pg_backend_pid()`).Scan(&xid, &pid); err != nil {
		t.Fatal(err)
	}
	committed := make(chan error, 1)
	go func() { committed <- tx.Commit(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for f.count(`SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'SyncRep'`, pid) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the commit never waited for the synchronous standby")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The commit is in the WAL: the stream receives it ...
	deadline = time.Now().Add(10 * time.Second)
	for r.s.Stats().Txns == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the stream never received the commit: %+v", r.s.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// ... but it is not visible, and the applier waits for it.
	if n := f.count(`SELECT count(*) FROM orders WHERE id = 424242`); n != 0 {
		t.Fatal("the row is visible before its commit completed: the test does not reproduce trap 8")
	}
	if err := stream.WaitVisible(ctx, f.pool, []uint32{xid}, 200*time.Millisecond); err == nil || !strings.Contains(err.Error(), "still in progress") {
		t.Fatalf("WaitVisible = %v, want a timeout while the commit waits", err)
	}
	time.Sleep(300 * time.Millisecond)
	if n := f.count(fmt.Sprintf(`SELECT count(*) FROM gs_%s_green.orders WHERE id = 424242`, name)); n != 0 {
		t.Fatal("green has the row although blue's commit is not visible yet")
	}
	reset()
	select {
	case err := <-committed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the commit did not complete after the standby requirement was lifted")
	}
	if err := stream.WaitVisible(ctx, f.pool, []uint32{xid}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	f.waitApplied(10 * time.Second)
	if n := f.count(fmt.Sprintf(`SELECT count(*) FROM gs_%s_green.orders WHERE id = 424242`, name)); n != 1 {
		t.Fatal("green lacks the row once it is visible")
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if d := f.diff(); d != 0 {
		t.Fatalf("green differs from blue in %d rows", d)
	}
}

// Bidirectional (synced): writes through green reach blue by the reverse
// trigger, and their echo in the stream is skipped — green keeps 12.34, not
// round(12.34)::numeric = 12.00 re-derived from blue. Blue writes still
// reach green, including after a TRUNCATE of blue.
func TestEchoSkipped(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	name := uniqueName("echo")
	f := setup(t, ordersTable(200), ordersSpec(name), name)
	f.backfill(1000)
	f.exec(strings.Join(trigger.SetReverseSQL(f.names, true), ";"))
	r := f.run(stream.Options{})
	green := fmt.Sprintf("gs_%s_green.orders", name)
	blue := fmt.Sprintf("gs_%s_blue.orders", name)
	f.exec(`UPDATE ` + green + ` SET amount = 12.34, note = 'from green' WHERE id = 5`)
	f.exec(`INSERT INTO ` + green + ` (id, tenant, email, amount) VALUES (100001, 1, 'g@x', 7.77)`)
	f.exec(`UPDATE orders SET amount = 9 WHERE id = 6`) // blue, through the app name
	f.exec(`DELETE FROM ` + green + ` WHERE id = 7`)
	f.waitApplied(10 * time.Second)
	var a5, a6, a100 string
	if err := f.pool.QueryRow(ctx, `SELECT (SELECT amount::text FROM `+green+` WHERE id = 5), (SELECT amount::text FROM `+green+` WHERE id = 6),
		(SELECT amount::text FROM `+green+` WHERE id = 100001)`).Scan(&a5, &a6, &a100); err != nil {
		t.Fatal(err)
	}
	if a5 != "12.34" || a100 != "7.77" || a6 != "9.00" {
		t.Fatalf("green amounts: id 5 = %s (want 12.34), id 100001 = %s (want 7.77), id 6 = %s (want 9.00)", a5, a100, a6)
	}
	if n := f.count(`SELECT count(*) FROM ` + blue + ` WHERE (id = 5 AND amount = 12) OR (id = 100001 AND amount = 8)`); n != 2 {
		t.Fatal("the reverse trigger did not write blue")
	}
	if n := f.count(`SELECT count(*) FROM ` + blue + ` WHERE id = 7`); n != 0 {
		t.Fatal("the delete through green did not reach blue")
	}
	if st := r.s.Stats(); st.Echoes < 3 {
		t.Fatalf("echoes skipped %d, want 3: %+v", st.Echoes, st)
	}
	// TRUNCATE of blue (not an echo): green follows.
	f.exec(`TRUNCATE ` + blue)
	f.exec(`INSERT INTO orders (id, tenant, email, amount) VALUES (1, 1, NULL, 1), (2, 2, 'b@x', 2)`)
	f.waitApplied(10 * time.Second)
	if n := f.count(`SELECT count(*) FROM ` + green); n != 2 {
		t.Fatalf("green has %d rows after blue's TRUNCATE and two inserts, want 2", n)
	}
	if d := f.diff(); d != 0 {
		t.Fatalf("green differs from blue in %d rows", d)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}

// A client updates through green a row that blue deleted or re-keyed a
// moment ago (the stream has not applied it yet): the write is refused,
// blue does not get the row back, and once the stream applies blue's
// change, green's row goes too: blue wins.
func TestGreenUpdateDoesNotResurrect(t *testing.T) {
	t.Parallel()
	name := uniqueName("res")
	f := setup(t, ordersTable(50), ordersSpec(name), name)
	f.backfill(100)
	f.exec(strings.Join(trigger.SetReverseSQL(f.names, true), ";"))
	green := fmt.Sprintf("gs_%s_green.orders", name)
	blue := fmt.Sprintf("gs_%s_blue.orders", name)
	// No streamer runs: blue's changes are pending in the slot.
	f.exec(`DELETE FROM orders WHERE id = 10`)
	f.exec(`UPDATE orders SET id = -11 WHERE id = 11`)
	// An UPDATE through green of a row blue deleted or re-keyed is refused
	// (40001: the retry finds the row where blue moved it, or not at all;
	// see TestGreenWriteOnStaleRowRefused), never upserted back into blue.
	for _, id := range []int{10, 11} {
		if _, err := f.pool.Exec(context.Background(), `UPDATE `+green+` SET amount = 5 WHERE id = $1`, id); db.SQLState(err) != "40001" {
			t.Fatalf("green update of row %d, which blue deleted or re-keyed: want 40001, got %v", id, err)
		}
	}
	f.exec(`UPDATE ` + green + ` SET amount = 5 WHERE id = 12`)
	if n := f.count(`SELECT count(*) FROM ` + blue + ` WHERE id IN (10, 11)`); n != 0 {
		t.Fatalf("a green update brought back %d rows blue had deleted or re-keyed", n)
	}
	if n := f.count(`SELECT count(*) FROM ` + blue + ` WHERE id = 12 AND amount = 5`); n != 1 {
		t.Fatal("the green update of an existing row did not reach blue")
	}
	r := f.run(stream.Options{})
	f.waitApplied(10 * time.Second)
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if d := f.diff(); d != 0 {
		t.Fatalf("green differs from blue in %d rows", d)
	}
}

// Two rows swap a value that is unique in green: applied in one batch the
// upsert would collide with itself; the applier retries in replace mode.
func TestUniqueSwapInOneBatch(t *testing.T) {
	t.Parallel()
	name := uniqueName("uniq")
	spec := strings.Replace(ordersSpec(name), "      note       text,", "      note       text UNIQUE,", 1)
	f := setup(t, ordersTable(0)+`INSERT INTO orders (id, tenant, email, amount, note) VALUES (1, 1, 'a', 1, 'x'), (2, 1, 'b', 2, 'y');`, spec, name)
	f.backfill(100)
	f.exec(`BEGIN; UPDATE orders SET note = 'tmp' WHERE id = 1; UPDATE orders SET note = 'x' WHERE id = 2; UPDATE orders SET note = 'y' WHERE id = 1; COMMIT`)
	r := f.run(stream.Options{})
	f.waitApplied(10 * time.Second)
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if d := f.diff(); d != 0 {
		t.Fatalf("green differs from blue in %d rows", d)
	}
}

// Setup fails when the slot cannot be created (every slot taken): the
// publication it created first is gone again, nothing is left behind.
func TestSetupFailureLeavesNothing(t *testing.T) {
	ctx := context.Background()
	name := uniqueName("fail")
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, ordersTable(10))
	spec, err := spec.ParseSpec([]byte(ordersSpec(name)), "t.yaml", "yaml")
	if err != nil {
		t.Fatal(err)
	}
	n := shadow.NamesFor(spec.Name, spec.AppTable())
	var blue *shadow.Table
	var mapping *shadow.Mapping
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		app, err := shadow.LoadTable(ctx, tx, n.App)
		if err != nil {
			return err
		}
		if err := execAll(ctx, tx, append(shadow.AdoptStep(n, app, pgtest.ServerMajor(t)).SQL, shadow.CreateGreenSQL(n, spec)...)); err != nil {
			return err
		}
		blue, _ = shadow.LoadTable(ctx, tx, n.Blue)
		green, _ := shadow.LoadTable(ctx, tx, n.Green)
		mapping, err = shadow.BuildMapping(spec, blue, green)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// Take every free slot.
	var free int
	if err := pool.QueryRow(ctx, `SELECT current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)`).Scan(&free); err != nil {
		t.Fatal(err)
	}
	var fillers []string
	defer func() {
		for _, s := range fillers {
			_, _ = pool.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, s)
		}
	}()
	for i := range free {
		s := fmt.Sprintf("%s_filler_%d", name, i)
		if _, err := pool.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, s); err != nil {
			break // another test took one meanwhile
		}
		fillers = append(fillers, s)
	}
	_, err = stream.Setup(ctx, pool, n, mapping, true, testLog(t))
	if err == nil {
		t.Fatal("Setup succeeded with every slot taken")
	}
	var pub int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_publication WHERE pubname = $1`, n.Publication).Scan(&pub); err != nil {
		t.Fatal(err)
	}
	if exists, _, _, _ := stream.SlotInfo(ctx, pool, n.Slot); exists || pub != 0 {
		t.Fatalf("after a failed setup: slot exists %v, publications %d", exists, pub)
	}
	t.Logf("setup failed as expected: %v", err)
}

// Retire under a workload, with another streamer running (a `sync
// --watch`): it takes the slot over, switches blue → green to the forward
// triggers, drains the stream up to the switch and drops the slot and the
// publication. The other streamer stops with ErrRetired; writes after the
// switch reach green by trigger; nothing is lost.
func TestRetireUnderWorkload(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	name := uniqueName("ret")
	f := setup(t, ordersTable(3000), ordersSpec(name), name)
	watch := f.run(stream.Options{})
	// Blue's writers keep to odd ids, green's to even ones (see workload.parity).
	w := startParityWorkload(t, f.dsn, "orders", 3, 11, false, 2*time.Millisecond, 1)
	f.backfill(300)
	f.exec(strings.Join(trigger.SetReverseSQL(f.names, true), ";")) // synced
	gw := startParityWorkload(t, f.dsn+"&options=-c%20search_path%3Dgs_"+name+"_green", "orders", 1, 12, true, 2*time.Millisecond, 2)
	time.Sleep(300 * time.Millisecond)
	cfg := f.config(stream.Options{})
	res, err := stream.Retire(ctx, cfg, stream.RetireOptions{Lock: shadow.DefaultLockOptions(), CatchUp: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-watch.done:
		if !errors.Is(err, stream.ErrRetired) {
			t.Fatalf("the other streamer stopped with %v, want ErrRetired", err)
		}
		watch.done <- err
	case <-time.After(15 * time.Second):
		t.Fatal("the other streamer did not stop")
	}
	time.Sleep(300 * time.Millisecond) // trigger mode now
	errs := append(w.stop(), gw.stop()...)
	for i, err := range errs {
		var pe *pgconn.PgError
		if i < 5 && errors.As(err, &pe) {
			t.Errorf("workload error: %v (table %s.%s, %s; where %s)", err, pe.SchemaName, pe.TableName, pe.Detail, pe.Where)
		}
	}
	if len(errs) > 0 {
		t.Fatalf("%d workload errors, first: %v", len(errs), errs[0])
	}
	if exists, _, _, _ := stream.SlotInfo(ctx, f.pool, f.names.Slot); exists {
		t.Fatal("the slot survived Retire")
	}
	if n := f.count(`SELECT count(*) FROM pg_publication WHERE pubname = $1`, f.names.Publication); n != 0 {
		t.Fatal("the publication survived Retire")
	}
	if n := f.count(`SELECT count(*) FROM pg_proc WHERE proname = 'gs_reverse' AND prosrc LIKE '%pg_logical_emit_message%'`); n != 0 {
		t.Fatal("the reverse function still emits echo markers")
	}
	if n := f.count(`SELECT count(*) FROM pg_trigger WHERE tgrelid = $1::regclass AND tgenabled = 'D'`, db.Ident(f.names.Blue.Schema, f.names.Blue.Name)); n != 0 {
		t.Fatal("forward triggers still disabled")
	}
	if d := f.diff(); d != 0 {
		t.Fatalf("green differs from blue in %d rows", d)
	}
	// Again: nothing to do.
	res2, err := stream.Retire(ctx, cfg, stream.RetireOptions{Lock: shadow.DefaultLockOptions()})
	if err != nil || !res2.AlreadyDone {
		t.Fatalf("second Retire = %+v, %v", res2, err)
	}
	t.Logf("retire: pre-drain %s, switch %s, drain %s, %d keys", res.PreDrain, res.Switch, res.Drain, res.Keys)
}

// DropSlotAndPublication drops a slot that is being streamed: the
// walsender is ours, it is terminated. The streamer then finds its slot
// gone while green still needs it: ErrSlotLost.
func TestDropActiveSlot(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	name := uniqueName("drop")
	f := setup(t, ordersTable(10), ordersSpec(name), name)
	r := f.run(stream.Options{})
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, active, _, err := stream.SlotInfo(ctx, f.pool, f.names.Slot)
		if err != nil {
			t.Fatal(err)
		}
		if active {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the slot never became active")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := stream.DropSlotAndPublication(ctx, f.pool, f.names); err != nil {
		t.Fatal(err)
	}
	if exists, _, _, _ := stream.SlotInfo(ctx, f.pool, f.names.Slot); exists {
		t.Fatal("slot still exists")
	}
	select {
	case err := <-r.done:
		r.done <- err
		if !errors.Is(err, stream.ErrSlotLost) {
			t.Fatalf("streamer stopped with %v, want ErrSlotLost", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the streamer did not stop")
	}
}
