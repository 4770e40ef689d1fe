package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/cutover"
	"github.com/greenswap/greenswap/guard"
	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// The guarded cutover's tests: a regression injected after the swap on a
// real server, under gwWriters writers through the app name whose
// committed writes a ledger records (the oracle blue and green are
// checked against at the end, besides blue EXCEPT green).

const gwWriters = 8

// gwLedger: writers inserting, updating and deleting their own rows of
// public.orders, one autocommit statement each; what committed is in rows
// (id → amount; deleted ids removed).
type gwLedger struct {
	ops    atomic.Int64
	cancel context.CancelFunc
	wg     gosync.WaitGroup
	mu     gosync.Mutex
	rows   map[int64]int64
	errs   []error
}

func startGwLedger(t *testing.T, dsn string, seed uint64) *gwLedger {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = gwWriters
	cfg.ConnConfig.RuntimeParams["application_name"] = "app-writer"
	// No prepared statements: the swap may change the view's row type.
	cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	stop, cancel := context.WithCancel(context.Background())
	w := &gwLedger{cancel: cancel, rows: map[int64]int64{}}
	ctx := context.Background() // a statement is never canceled: its commit is never in doubt
	for i := range gwWriters {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			var mine []int64
			for stop.Err() == nil {
				amount := int64(rng.IntN(1000))
				var err error
				switch op := rng.IntN(10); {
				case op < 5 || len(mine) < 3:
					var id int64
					err = pool.QueryRow(ctx, `INSERT INTO public.orders (tenant, email, amount) VALUES ($1, $2, $3) RETURNING id`,
						i, fmt.Sprintf("gw%d-%d@x", i, rng.IntN(1e6)), amount).Scan(&id)
					if err == nil {
						mine = append(mine, id)
						w.set(id, amount, false)
					}
				case op < 8:
					id := mine[rng.IntN(len(mine))]
					if _, err = pool.Exec(ctx, `UPDATE public.orders SET amount = $2 WHERE id = $1`, id, amount); err == nil {
						w.set(id, amount, false)
					}
				default:
					k := rng.IntN(len(mine))
					id := mine[k]
					if _, err = pool.Exec(ctx, `DELETE FROM public.orders WHERE id = $1`, id); err == nil {
						mine = append(mine[:k], mine[k+1:]...)
						w.set(id, 0, true)
					}
				}
				if err != nil {
					w.mu.Lock()
					w.errs = append(w.errs, err)
					w.mu.Unlock()
					return
				}
				w.ops.Add(1)
				time.Sleep(time.Duration(1+rng.IntN(3)) * time.Millisecond)
			}
		}()
	}
	t.Cleanup(func() { w.stop(); pool.Close() })
	return w
}

func (w *gwLedger) set(id, amount int64, gone bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if gone {
		delete(w.rows, id)
		return
	}
	w.rows[id] = amount
}

func (w *gwLedger) stop() []error {
	w.cancel()
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.errs
}

// check stops the writers and compares the ledger with blue, green and
// the app name: the same rows with the same amounts, none lost, none
// extra; then blue EXCEPT green both ways (through the forward mapping).
func (w *gwLedger) check(t *testing.T, pool *pgxpool.Pool, n shadow.Names, name string) {
	t.Helper()
	if errs := w.stop(); len(errs) > 0 {
		t.Fatalf("%d writer errors, first: %v", len(errs), errs[0])
	}
	if len(w.rows) < 50 {
		t.Fatalf("the ledger holds %d rows: too few to prove anything", len(w.rows))
	}
	for _, tbl := range []string{db.Ident(n.Blue.Schema, n.Blue.Name), db.Ident(n.Green.Schema, n.Green.Name), db.Ident(n.App.Schema, n.App.Name)} {
		rows, err := pool.Query(context.Background(), `SELECT id::bigint, amount::bigint FROM `+tbl+` WHERE email LIKE 'gw%'`)
		if err != nil {
			t.Fatal(err)
		}
		got := map[int64]int64{}
		for rows.Next() {
			var id, amount int64
			if err := rows.Scan(&id, &amount); err != nil {
				t.Fatal(err)
			}
			got[id] = amount
		}
		if rows.Err() != nil {
			t.Fatal(rows.Err())
		}
		for id, a := range w.rows {
			if g, ok := got[id]; !ok || g != a {
				t.Fatalf("%s: committed row %d (amount %d) is lost or wrong (found %v, %d there); %d rows in the ledger", tbl, id, a, ok, g, len(w.rows))
			}
		}
		if len(got) != len(w.rows) {
			t.Fatalf("%s holds %d of the writers' rows, the ledger %d", tbl, len(got), len(w.rows))
		}
	}
	if d := syncOrdersDiff(t, pool, name); d != 0 {
		t.Fatalf("blue EXCEPT green (mapped), both ways: %d rows", d)
	}
}

// gwSetup: the orders table synced and verified, writers running.
func gwSetup(t *testing.T, name string, seed uint64) (*pgxpool.Pool, string, *Env, *Migration, *gwLedger) {
	t.Helper()
	return gwSetupMode(t, name, seed, false)
}

// gwSetupMode is gwSetup in trigger mode or, with logical, in mode:
// logical with a streamer running (the cutover hands the stream over).
func gwSetupMode(t *testing.T, name string, seed uint64, logical bool) (*pgxpool.Pool, string, *Env, *Migration, *gwLedger) {
	t.Helper()
	pool, dsn := syncNewDB(t)
	coExec(t, pool, syncOrdersTable(3000, false))
	env := coEnv(t, dsn)
	var w *gwLedger
	if logical {
		if _, err := Sync(context.Background(), env, syncSpec(t, logicalSpec(name, false)), SyncOptions{}); err != nil {
			t.Fatal(err)
		}
		startWatch(t, env, name)
		w = startGwLedger(t, dsn, seed)
		syncWaitFor(t, 10*time.Second, "the writers to start", func() bool { return w.ops.Load() > 50 })
		coVerify(t, env, syncSpec(t, logicalSpec(name, false)))
	} else {
		coSync(t, env, syncOrdersSpec(name, false))
		w = startGwLedger(t, dsn, seed)
		syncWaitFor(t, 10*time.Second, "the writers to start", func() bool { return w.ops.Load() > 50 })
	}
	m, err := env.LoadMigration(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return pool, dsn, env, m, w
}

// gwBounds: only the signals a test sets, sampled every 100ms.
func gwBounds(o spec.GuardOptions) spec.GuardOptions {
	off := func(f *float64) {
		if *f == 0 {
			*f = spec.GuardOff
		}
	}
	off(&o.RollbackRate)
	off(&o.LatencyRatio)
	if o.LockWaitTime.Duration == 0 {
		o.LockWaitTime.Duration = spec.GuardOff
	}
	o.ReplicaLag.Duration = spec.GuardOff
	o.Every.Duration = 100 * time.Millisecond
	return o
}

type gwRun struct {
	res *CutoverResult
	err error
}

// gwCutover runs the guarded cutover in the background; it reports when
// the window has started (the migration's lock released).
func gwCutover(ctx context.Context, t *testing.T, env *Env, name string, window time.Duration, bounds spec.GuardOptions, lo SwapCommandOptions) <-chan gwRun {
	t.Helper()
	out := make(chan gwRun, 1)
	go func() {
		res, err := Cutover(ctx, env, name, CutoverOptions{SwapCommandOptions: lo,
			Guard: CutoverGuardOptions{Window: window, Bounds: bounds}})
		out <- gwRun{res, err}
	}()
	syncWaitFor(t, 60*time.Second, "the guard window to start", func() bool {
		return gwEvent(t, env, name, "guard-window", "watching") != nil
	})
	return out
}

// gwEvent is the last event of step with outcome, nil when none.
func gwEvent(t *testing.T, env *Env, name, step, outcome string) *state.Event {
	t.Helper()
	evs, err := state.Events(context.Background(), env.Pool, name, 500)
	if err != nil {
		return nil
	}
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Step == step && evs[i].Outcome == outcome {
			return &evs[i]
		}
	}
	return nil
}

func gwWait(t *testing.T, ch <-chan gwRun, d time.Duration) gwRun {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(d):
		t.Fatal("the guarded cutover did not end")
	}
	return gwRun{}
}

func gwState(t *testing.T, env *Env, name string) state.State {
	t.Helper()
	m, err := state.Get(context.Background(), env.Pool, name)
	if err != nil {
		t.Fatal(err)
	}
	return m.State
}

// gwRolledBack checks a guard trip: exit 7, the migration synced with the
// app name on blue, the trip recorded with the signal's value, bound and
// baseline, and the rollback done by Rollback (its own phase event).
func gwRolledBack(t *testing.T, env *Env, name, signal string, r gwRun) {
	t.Helper()
	var rb *GuardRolledBackError
	if !errors.As(r.err, &rb) || exitcode.Of(r.err) != exitcode.GuardRolledBack {
		t.Fatalf("want the guard's rollback (exit 7), got %v (exit %d); guard %+v", r.err, exitcode.Of(r.err), r.res.Guard)
	}
	if !strings.Contains(r.err.Error(), signal+"=") {
		t.Errorf("the message does not name %s: %v", signal, r.err)
	}
	if st := gwState(t, env, name); st != state.Synced {
		t.Fatalf("state %s after the guard's rollback, want synced", st)
	}
	if r.res.Guard == nil || r.res.Guard.Outcome != "rolled_back" || r.res.Guard.Rollback == nil || r.res.Guard.Rollback.Kind != "swap" {
		t.Fatalf("guard report %+v", r.res.Guard)
	}
	ev := gwEvent(t, env, name, "guard-tripped", "rolling-back")
	if ev == nil {
		t.Fatal("no guard-tripped event")
	}
	var d struct {
		Signals map[string]struct {
			Value, Bound, Baseline *float64
			Reason                 string
		}
	}
	if err := json.Unmarshal(ev.Detail, &d); err != nil {
		t.Fatal(err)
	}
	s, ok := d.Signals[signal]
	if !ok || s.Value == nil || s.Bound == nil || s.Baseline == nil || s.Reason == "" || *s.Value <= *s.Bound {
		t.Fatalf("guard-tripped event does not carry %s's value past its bound, baseline and reason: %s", signal, ev.Detail)
	}
	if gwEvent(t, env, name, string(cutover.ToBlue), "ok") == nil || gwEvent(t, env, name, "guard-rollback", "ok") == nil {
		t.Fatal("no rollback phase event, or no guard-rollback event")
	}
}

// TestGuardedCutoverErrorStormRollsBack (a): after the swap, a client
// the new shape breaks (it writes an audit row, then an order without an
// email, which blue took and green's NOT NULL refuses) fails every
// transaction: the rollback share rises, the guard rolls back by itself,
// exit 7, event recorded, nothing lost.
func TestGuardedCutoverErrorStormRollsBack(t *testing.T) {
	t.Parallel()
	pool, dsn, env, m, w := gwSetup(t, "gw_storm", 1)
	coExec(t, pool, "CREATE TABLE public.audit (at timestamptz DEFAULT now())")
	ch := gwCutover(context.Background(), t, env, "gw_storm", 30*time.Second, gwBounds(spec.GuardOptions{RollbackRate: 0.2}), SwapCommandOptions{})
	ctx, stopStorm := context.WithCancel(context.Background())
	defer stopStorm()
	for range 3 {
		c := coConn(t, dsn, map[string]string{"application_name": "app-broken"})
		go func() {
			for ctx.Err() == nil {
				// One implicit transaction (simple protocol). The audit row
				// gives it a transaction id: PostgreSQL 15 stops flushing a
				// busy session's rollbacks of transactions without one
				// (guard/README.md, rollback_rate).
				_, _ = c.Exec(ctx, "INSERT INTO public.audit DEFAULT VALUES; INSERT INTO public.orders (tenant, email, amount) VALUES (1, NULL, 1)")
			}
		}()
	}
	r := gwWait(t, ch, time.Minute)
	stopStorm()
	gwRolledBack(t, env, "gw_storm", "rollback_rate", r)
	w.check(t, pool, m.Names, "gw_storm")
}

// TestGuardedCutoverLockOnGreenRollsBack (b): a session holds a lock on
// green after the swap and the app's writes queue behind it: lock_waits
// trips; the rollback waits for the same lock, retries as rollback does,
// and gets it once the holder is gone.
func TestGuardedCutoverLockOnGreenRollsBack(t *testing.T) {
	t.Parallel()
	pool, dsn, env, m, w := gwSetup(t, "gw_lock", 2)
	ch := gwCutover(context.Background(), t, env, "gw_lock", 30*time.Second, gwBounds(spec.GuardOptions{LockWaits: 2}),
		SwapCommandOptions{LockTimeout: 300 * time.Millisecond, MaxAttempts: 30})
	holder := coConn(t, dsn, map[string]string{"application_name": "app-report"})
	coExec(t, holder, "BEGIN")
	coExec(t, holder, "LOCK TABLE "+db.Ident(m.Names.Green.Schema, m.Names.Green.Name)+" IN SHARE MODE")
	syncWaitFor(t, 20*time.Second, "the guard to trip", func() bool { return gwEvent(t, env, "gw_lock", "guard-tripped", "rolling-back") != nil })
	time.Sleep(time.Second) // the rollback's first attempts time out on the holder
	coExec(t, holder, "COMMIT")
	r := gwWait(t, ch, time.Minute)
	gwRolledBack(t, env, "gw_lock", "lock_waits", r)
	if r.res.Guard.Rollback.Attempts < 2 {
		t.Errorf("the rollback took %d attempts; it should have waited for the holder", r.res.Guard.Rollback.Attempts)
	}
	w.check(t, pool, m.Names, "gw_lock")
}

// gwProbe is a command probe that fails once the file it names exists.
func gwProbe(t *testing.T) (cmd string, fail func()) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "broken")
	return "test ! -e " + f + " || { echo 'app health: 503' >&2; exit 3; }", func() {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestGuardedCutoverFailingProbeRollsBack (c): the command probe starts
// failing after the swap: rollback, exit 7, the probe's exit status and
// stderr in the event.
func TestGuardedCutoverFailingProbeRollsBack(t *testing.T) {
	t.Parallel()
	pool, _, env, m, w := gwSetup(t, "gw_probe", 3)
	cmd, fail := gwProbe(t)
	ch := gwCutover(context.Background(), t, env, "gw_probe", 30*time.Second, gwBounds(spec.GuardOptions{ProbeCmd: cmd}), SwapCommandOptions{})
	time.Sleep(500 * time.Millisecond) // healthy samples first
	if st := gwState(t, env, "gw_probe"); st != state.CutOver {
		t.Fatalf("state %s while the probe passes, want cut_over", st)
	}
	fail()
	r := gwWait(t, ch, time.Minute)
	gwRolledBack(t, env, "gw_probe", "probe_cmd", r)
	if ev := gwEvent(t, env, "gw_probe", "guard-tripped", "rolling-back"); !strings.Contains(string(ev.Detail), "app health: 503") {
		t.Errorf("the event does not carry the probe's stderr: %s", ev.Detail)
	}
	w.check(t, pool, m.Names, "gw_probe")
}

// TestGuardedCutoverLogicalProbeRollsBack: (c) in mode: logical, the
// stream handed over to the triggers by the cutover: the guard's rollback
// loses nothing either.
func TestGuardedCutoverLogicalProbeRollsBack(t *testing.T) {
	t.Parallel()
	name := logicalName("gwl")
	pool, _, env, m, w := gwSetupMode(t, name, 7, true)
	cmd, fail := gwProbe(t)
	ch := gwCutover(context.Background(), t, env, name, 30*time.Second, gwBounds(spec.GuardOptions{ProbeCmd: cmd}), SwapCommandOptions{})
	fail()
	r := gwWait(t, ch, time.Minute)
	gwRolledBack(t, env, name, "probe_cmd", r)
	w.check(t, pool, m.Names, name)
}

// TestGuardedCutoverHealthyWindowStays (d): a window with the cutover
// defaults and a passing probe ends cut over, exit 0, recorded. While it
// watches, greenswap holds no advisory lock, no greenswap session sits in
// a transaction, finalize's usage check sees no client of blue, and
// status shows the window (time left) from its last event.
func TestGuardedCutoverHealthyWindowStays(t *testing.T) {
	t.Parallel()
	pool, _, env, m, w := gwSetup(t, "gw_ok", 4)
	bounds := spec.GuardOptions{ProbeCmd: "true", Every: spec.Duration{Duration: 100 * time.Millisecond}}
	ch := gwCutover(context.Background(), t, env, "gw_ok", 4*time.Second, bounds, SwapCommandOptions{})
	since := time.Now()
	var samples int
	var shown bool
	for {
		select {
		case r := <-ch:
			if r.err != nil {
				t.Fatalf("a healthy window failed: %v", r.err)
			}
			if st := gwState(t, env, "gw_ok"); st != state.CutOver || r.res.Guard.Outcome != "passed" || r.res.Guard.Samples < 10 {
				t.Fatalf("state %s, guard %+v; want cut_over after a passed window of samples", st, r.res.Guard)
			}
			if gwEvent(t, env, "gw_ok", "guard-window", "passed") == nil {
				t.Fatal("no guard-window passed event")
			}
			if samples < 5 {
				t.Fatalf("only %d checks ran during the window", samples)
			}
			if !shown {
				t.Fatal("status never showed the guard window")
			}
			if rep, err := Status(context.Background(), env, "gw_ok"); err != nil || rep.Migrations[0].GuardWindow != nil {
				t.Fatalf("status after the window: %v, %+v; want no guard window", err, rep)
			}
			w.check(t, pool, m.Names, "gw_ok")
			return
		case <-time.After(200 * time.Millisecond):
		}
		samples++
		if rep, err := Status(context.Background(), env, "gw_ok"); err != nil {
			t.Fatal(err)
		} else if g := rep.Migrations[0].GuardWindow; g != nil {
			if g.WindowMS != 4000 || g.LeftMS > 4000 || g.Stale {
				t.Fatalf("status shows the guard window as %+v", g)
			}
			shown = true
		}
		// The guard's own liveness lock (its session greenswap:NAME:guard,
		// a key apart from the migration's) is the one allowed: status
		// reads it; no other command waits on it.
		if n := coInt(t, pool, `SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
			WHERE l.locktype = 'advisory' AND a.application_name LIKE 'greenswap%' AND a.application_name NOT LIKE 'greenswap:%:guard' AND a.datname = current_database()`); n != 0 {
			t.Fatalf("greenswap holds %d advisory locks while watching: %s", n, coStr(t, pool, `SELECT string_agg(l.classid || '/' || l.objid || ' ' || l.pid || ' ' || a.state || ' ' || a.query, '; ') FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
			WHERE l.locktype = 'advisory' AND a.application_name LIKE 'greenswap%' AND a.application_name NOT LIKE 'greenswap:%:guard' AND a.datname = current_database()`))
		}
		if n := coInt(t, pool, `SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'greenswap%'
			AND datname = current_database() AND state LIKE 'idle in transaction%'`); n != 0 {
			t.Fatalf("%d greenswap sessions sit in a transaction while watching", n)
		}
		clients, err := cutover.Usage(context.Background(), pool, m.Names, since, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range clients {
			if strings.HasPrefix(c.Application, "greenswap") {
				t.Fatalf("finalize would take the guard's session for a client of blue: %s", c)
			}
		}
	}
}

// TestGuardedCutoverInterruptedStaysCutOver (e): the window interrupted
// (the CLI's SIGINT cancels the context) leaves the migration cut over,
// exit 130, one line saying so.
func TestGuardedCutoverInterruptedStaysCutOver(t *testing.T) {
	t.Parallel()
	pool, _, env, m, w := gwSetup(t, "gw_int", 5)
	ctx, cancel := context.WithCancel(context.Background())
	ch := gwCutover(ctx, t, env, "gw_int", time.Minute, gwBounds(spec.GuardOptions{ProbeCmd: "true"}), SwapCommandOptions{})
	time.Sleep(500 * time.Millisecond)
	cancel()
	r := gwWait(t, ch, 30*time.Second)
	var ie *GuardInterruptedError
	if !errors.As(r.err, &ie) || exitcode.Of(r.err) != exitcode.Interrupted {
		t.Fatalf("want an interrupted window (exit 130), got %v (exit %d)", r.err, exitcode.Of(r.err))
	}
	if line := ie.InterruptedLine(); !strings.Contains(line, "stays cut over") || strings.Contains(line, "\n") {
		t.Errorf("interrupted line %q", line)
	}
	if st := gwState(t, env, "gw_int"); st != state.CutOver {
		t.Fatalf("state %s after an interrupted window, want cut_over", st)
	}
	if gwEvent(t, env, "gw_int", "guard-window", "interrupted") == nil {
		t.Fatal("no guard-window interrupted event")
	}
	w.check(t, pool, m.Names, "gw_int")
}

// TestGuardedCutoverRollbackLockedGivesUp: the guard trips, but a session
// holds a lock on green for longer than the rollback's lock budget: exit
// 5, the message says it is still cut over, and it is; nothing lost.
func TestGuardedCutoverRollbackLockedGivesUp(t *testing.T) {
	t.Parallel()
	pool, dsn, env, m, w := gwSetup(t, "gw_stuck", 6)
	cmd, fail := gwProbe(t)
	ch := gwCutover(context.Background(), t, env, "gw_stuck", 30*time.Second, gwBounds(spec.GuardOptions{ProbeCmd: cmd}),
		SwapCommandOptions{LockTimeout: 200 * time.Millisecond, MaxAttempts: 3})
	holder := coConn(t, dsn, map[string]string{"application_name": "app-report"})
	coExec(t, holder, "BEGIN")
	// ACCESS SHARE on the app view: the writers go on, the rollback's
	// swap (ACCESS EXCLUSIVE on the view) cannot lock.
	coExec(t, holder, "LOCK TABLE "+db.Ident(m.Names.App.Schema, m.Names.App.Name)+" IN ACCESS SHARE MODE")
	fail()
	r := gwWait(t, ch, time.Minute)
	coExec(t, holder, "COMMIT")
	if exitcode.Of(r.err) != exitcode.LockTimeout || !strings.Contains(r.err.Error(), "still cut over") {
		t.Fatalf("want exit 5 saying it is still cut over, got %v (exit %d)", r.err, exitcode.Of(r.err))
	}
	if st := gwState(t, env, "gw_stuck"); st != state.CutOver {
		t.Fatalf("state %s, want cut_over", st)
	}
	if r.res.Guard.Outcome != "rollback_failed" || gwEvent(t, env, "gw_stuck", "guard-rollback", "failed") == nil {
		t.Fatalf("guard %+v, or no guard-rollback failed event", r.res.Guard)
	}
	w.check(t, pool, m.Names, "gw_stuck")
}

// TestGuardedCutoverSeveralTables: a migration of several tables (orders
// and order_items) under the ledger workload; the probe fails after the
// swap: every table is swapped back in the rollback, nothing lost.
func TestGuardedCutoverSeveralTables(t *testing.T) {
	t.Parallel()
	pool, dsn, env := tablesSynced(t, "gwt", 1500)
	w := startLedgerWorkload(t, dsn, gwWriters, 9)
	syncWaitFor(t, 10*time.Second, "the writers to start", func() bool { return w.ops.Load() > 20 })
	cmd, fail := gwProbe(t)
	out := make(chan gwRun, 1)
	go func() {
		res, err := Cutover(context.Background(), env, "gwt", CutoverOptions{SkipVerify: true,
			SwapCommandOptions: SwapCommandOptions{LockTimeout: time.Second},
			Guard:              CutoverGuardOptions{Window: 30 * time.Second, Bounds: gwBounds(spec.GuardOptions{ProbeCmd: cmd, LockWaits: 100})}})
		out <- gwRun{res, err}
	}()
	syncWaitFor(t, 60*time.Second, "the guard window to start", func() bool { return gwEvent(t, env, "gwt", "guard-window", "watching") != nil })
	if o, i := tablesReads(t, pool, "gwt"); o != "green" || i != "green" {
		t.Fatalf("during the window orders reads %s, order_items %s; want green", o, i)
	}
	fail()
	r := gwWait(t, out, time.Minute)
	gwRolledBack(t, env, "gwt", "probe_cmd", r)
	if o, i := tablesReads(t, pool, "gwt"); o != "blue" || i != "blue" {
		t.Fatalf("after the guard's rollback orders reads %s, order_items %s; want blue", o, i)
	}
	// The row type of both app names changes (int → bigint): a writer's
	// prepared statement fails once per swap with "cached plan must not
	// change result type" (trap 6), rolled back; any other error fails.
	for _, err := range w.stop() {
		if db.SQLState(err) != "0A000" {
			t.Fatalf("writer error: %v", err)
		}
	}
	if o, i := tablesDiff(t, pool, "gwt"); o != 0 || i != 0 {
		t.Fatalf("blue EXCEPT green both ways: %d orders rows, %d order_items rows", o, i)
	}
	for _, s := range []string{"public", "gs_gwt_blue", "gs_gwt_green"} {
		w.check(t, pool, s)
	}
}

// TestGuardedCutoverRowTypeBurstSettles: the swap changes the app name's
// row type, so every prepared statement on it fails once (trap 6): a burst
// of rollbacks that is the swap's. Readers with many prepared statements
// make that burst most of the first seconds' transactions; the guard lets
// it settle (guardSettle) and the window passes. Without the settle the
// burst tripped rollback_rate and rolled a healthy cutover back.
func TestGuardedCutoverRowTypeBurstSettles(t *testing.T) {
	t.Parallel()
	pool, dsn, env, m, w := gwSetup(t, "gw_burst", 8)
	readers := coPool(t, dsn, map[string]string{"application_name": "app-reader"}, pgx.QueryExecModeCacheStatement, 16)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var wg gosync.WaitGroup
	var planErrs atomic.Int64
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; ctx.Err() == nil; k++ {
				// 100 statement texts per reader: 100 prepared statements per connection.
				rows, err := readers.Query(ctx, fmt.Sprintf("SELECT * FROM public.orders WHERE id = $1 /* %d */", k%100), int64(i*100+k%100+1))
				if err == nil {
					rows.Close()
					err = rows.Err()
				}
				if err != nil && strings.Contains(err.Error(), "cached plan must not change result type") {
					planErrs.Add(1)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	time.Sleep(2 * time.Second) // every statement prepared
	ch := gwCutover(context.Background(), t, env, "gw_burst", 8*time.Second, gwBounds(spec.GuardOptions{RollbackRate: guard.DefaultCutoverRollbackRate}), SwapCommandOptions{})
	r := gwWait(t, ch, time.Minute)
	stop()
	wg.Wait()
	if planErrs.Load() < 1000 {
		t.Fatalf("only %d cached-plan errors: the burst this test is about did not happen", planErrs.Load())
	}
	if r.err != nil || r.res.Guard.Outcome != "passed" || gwState(t, env, "gw_burst") != state.CutOver {
		t.Fatalf("after the swap's burst of %d cached-plan errors: %v, guard %+v; want a passed window, cut over", planErrs.Load(), r.err, r.res.Guard)
	}
	w.check(t, pool, m.Names, "gw_burst")
}

// TestGuardWindowStatusFromEvent: status reads a window in progress from
// the last event alone: time left while it runs, stale once it should have
// recorded a verdict, nothing for another event or state.
func TestGuardWindowStatusFromEvent(t *testing.T) {
	until := time.Date(2026, 1, 1, 12, 10, 0, 0, time.UTC)
	ev := &state.Event{Step: "guard-window", Outcome: "watching",
		Detail: json.RawMessage(`{"until":"2026-01-01T12:10:00Z","window_ms":600000,"last_sample":"probe_cmd=0 <= 0 (baseline 0): exit status 0"}`)}
	g := guardWindowStatus(ev, state.CutOver, until.Add(-3*time.Minute))
	if g == nil || g.LeftMS != 180000 || g.WindowMS != 600000 || g.Stale || !strings.HasPrefix(g.LastSample, "probe_cmd=0") {
		t.Fatalf("in progress: %+v", g)
	}
	if g := guardWindowStatus(ev, state.CutOver, until.Add(time.Minute)); g == nil || !g.Stale || g.LeftMS != 0 {
		t.Fatalf("past its end without a verdict: %+v", g)
	}
	if guardWindowStatus(ev, state.Synced, until) != nil {
		t.Fatal("a window shown for a migration no longer cut over")
	}
	passed := *ev
	passed.Outcome = "passed"
	if guardWindowStatus(&passed, state.CutOver, until) != nil {
		t.Fatal("a passed window shown as in progress")
	}
}
