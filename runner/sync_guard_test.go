package runner

import (
	"context"
	"encoding/json"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/spec"
)

// guardOnly switches the default-on signals off, so that only the one a
// test injects can open the breaker.
func guardOnly(o spec.GuardOptions) spec.GuardOptions {
	o.LockWaitTime.Duration, o.ReplicaLag.Duration = spec.GuardOff, spec.GuardOff
	o.Every.Duration = 100 * time.Millisecond
	return o
}

func syncThrottle(t *testing.T, env *Env, name string) string {
	m, err := state.Get(context.Background(), env.Pool, name)
	if err != nil {
		return ""
	}
	return m.Throttle
}

// TestSyncBreakerHoldsOnErrorStormAndResumes: an error storm begun while
// the backfill runs opens the breaker; the backfill holds (rows_copied
// stands still, status's throttle names the signal, value and bound) and
// resumes once the storm is over, to synced with blue and green equal.
func TestSyncBreakerHoldsOnErrorStormAndResumes(t *testing.T) {
	t.Parallel()
	pool, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, syncOrdersTable(20000, false))
	env := syncTestEnv(t, dsn)
	sp := syncSpec(t, syncOrdersSpec("gs_storm", false))
	res := make(chan error, 1)
	go func() {
		_, err := Sync(context.Background(), env, sp, SyncOptions{BatchSize: 50, NiceRatio: 5,
			Guard: guardOnly(spec.GuardOptions{RollbackRate: 0.3})})
		res <- err
	}()
	syncWaitFor(t, 30*time.Second, "the backfill to start", func() bool { return syncRowsCopied(pool, "gs_storm") > 0 })

	ctx, stopStorm := context.WithCancel(context.Background())
	app := coConn(t, dsn, map[string]string{"application_name": "app"})
	stormDone := make(chan struct{})
	go func() {
		defer close(stormDone)
		for ctx.Err() == nil {
			_, _ = app.Exec(ctx, "SELECT 1 / 0")
		}
	}()
	syncWaitFor(t, 20*time.Second, "the breaker to hold the backfill", func() bool {
		return strings.HasPrefix(syncThrottle(t, env, "gs_storm"), "guard: rollback_rate=")
	})
	reason := syncThrottle(t, env, "gs_storm")
	if !strings.Contains(reason, " > ") || !strings.Contains(reason, "(baseline ") {
		t.Errorf("throttle %q does not carry value, bound and baseline", reason)
	}
	held := syncRowsCopied(pool, "gs_storm")
	time.Sleep(time.Second)
	if now := syncRowsCopied(pool, "gs_storm"); now != held {
		t.Fatalf("rows copied went from %d to %d while the breaker was open", held, now)
	}
	stopStorm()
	<-stormDone
	select {
	case err := <-res:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("sync did not finish after the storm")
	}
	if n := syncOrdersDiff(t, pool, "gs_storm"); n != 0 {
		t.Fatalf("%d rows differ between blue and green", n)
	}
	evs, err := state.Events(context.Background(), pool, "gs_storm", 200)
	if err != nil {
		t.Fatal(err)
	}
	var open, closed bool
	for _, e := range evs {
		open = open || e.Step == "guard-open" && strings.Contains(string(e.Detail), `"rollback_rate"`)
		closed = closed || e.Step == "guard-close"
	}
	if !open || !closed {
		t.Errorf("events: guard-open naming rollback_rate %v, guard-close %v", open, closed)
	}
}

// TestSyncBreakerLockWaitOnBlue: another session's lock on blue queues the
// application's writes: the breaker holds the backfill until it is gone.
func TestSyncBreakerLockWaitOnBlue(t *testing.T) {
	t.Parallel()
	pool, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, syncOrdersTable(20000, false))
	env := syncTestEnv(t, dsn)
	sp := syncSpec(t, syncOrdersSpec("gs_lockw", false))
	res := make(chan error, 1)
	go func() {
		_, err := Sync(context.Background(), env, sp, SyncOptions{BatchSize: 50, NiceRatio: 5,
			Guard: guardOnly(spec.GuardOptions{LockWaits: 1})})
		res <- err
	}()
	syncWaitFor(t, 30*time.Second, "the backfill to start", func() bool { return syncRowsCopied(pool, "gs_lockw") > 0 })
	holder := coConn(t, dsn, map[string]string{"application_name": "deploy"})
	tx, err := holder.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// SHARE blocks writers, not the backfill's FOR KEY SHARE reads.
	if _, err := tx.Exec(context.Background(), `LOCK TABLE gs_gs_lockw_blue.orders IN SHARE MODE`); err != nil {
		t.Fatal(err)
	}
	app := coConn(t, dsn, map[string]string{"application_name": "app"})
	appDone := make(chan error, 1)
	go func() {
		_, err := app.Exec(context.Background(), `INSERT INTO public.orders (tenant, email, amount) VALUES (1, 'x@y', 5)`)
		appDone <- err
	}()
	syncWaitFor(t, 20*time.Second, "the breaker to hold on the lock wait", func() bool {
		return strings.HasPrefix(syncThrottle(t, env, "gs_lockw"), "guard: lock_waits=1 > 0")
	})
	held := syncRowsCopied(pool, "gs_lockw")
	time.Sleep(500 * time.Millisecond)
	if now := syncRowsCopied(pool, "gs_lockw"); now != held {
		t.Fatalf("rows copied went from %d to %d while the breaker was open", held, now)
	}
	if err := tx.Rollback(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-appDone; err != nil {
		t.Fatal(err)
	}
	if err := <-res; err != nil {
		t.Fatal(err)
	}
	if n := syncOrdersDiff(t, pool, "gs_lockw"); n != 0 {
		t.Fatalf("%d rows differ between blue and green", n)
	}
}

// TestSyncBreakerOpenTooLongStops: a failing SQL probe keeps the breaker
// open past --guard-max-open: sync stops with exit code 6, checkpointed,
// a failed backfill event naming the probe; with the probe passing, the
// same sync resumes to synced and blue EXCEPT green is empty both ways.
func TestSyncBreakerOpenTooLongStops(t *testing.T) {
	t.Parallel()
	pool, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, syncOrdersTable(5000, false)+`; CREATE TABLE health (ok bool); INSERT INTO health VALUES (true)`)
	env := syncTestEnv(t, dsn)
	sp := syncSpec(t, syncOrdersSpec("gs_long", false))
	opts := SyncOptions{BatchSize: 100, NiceRatio: 1, Guard: guardOnly(spec.GuardOptions{ProbeSQL: "SELECT ok FROM public.health",
		MaxOpen: spec.Duration{Duration: 700 * time.Millisecond}})}
	res := make(chan error, 1)
	go func() { _, err := Sync(context.Background(), env, sp, opts); res <- err }()
	syncWaitFor(t, 30*time.Second, "the backfill to start", func() bool { return syncRowsCopied(pool, "gs_long") > 0 })
	pgtest.Exec(t, dsn, `UPDATE health SET ok = false`)
	var err error
	select {
	case err = <-res:
	case <-time.After(time.Minute):
		t.Fatal("sync did not stop with the breaker open")
	}
	if exitcode.Of(err) != exitcode.GuardTripped || !strings.Contains(err.Error(), "probe_sql=1 > 0") {
		t.Fatalf("sync: %v (exit %d); want exit %d naming probe_sql", err, exitcode.Of(err), exitcode.GuardTripped)
	}
	m, gerr := state.Get(context.Background(), pool, "gs_long")
	if gerr != nil {
		t.Fatal(gerr)
	}
	if m.State != state.Syncing || m.RowsCopied == 0 || m.RowsCopied >= 5000 {
		t.Fatalf("after the stop: state %s, rows copied %d; want syncing with a partial checkpoint", m.State, m.RowsCopied)
	}
	evs, gerr := state.Events(context.Background(), pool, "gs_long", 200)
	if gerr != nil {
		t.Fatal(gerr)
	}
	found := false
	for _, e := range evs {
		var d map[string]any
		_ = json.Unmarshal(e.Detail, &d)
		msg, _ := d["error"].(string)
		found = found || e.Step == PhaseBackfill && e.Outcome != "ok" && strings.Contains(msg, "probe_sql") && strings.Contains(msg, "--guard-max-open")
	}
	if !found {
		t.Error("no failed backfill event naming probe_sql and the limit")
	}
	if th := syncThrottle(t, env, "gs_long"); !strings.HasPrefix(th, "guard: probe_sql=1 > 0") {
		t.Errorf("after the stop, status's throttle %q does not say why", th)
	}
	pgtest.Exec(t, dsn, `UPDATE health SET ok = true`)
	var mu gosync.Mutex
	var progress []SyncProgress
	opts.Progress, opts.ProgressEvery = func(p SyncProgress) { mu.Lock(); progress = append(progress, p); mu.Unlock() }, 50*time.Millisecond
	if _, err := Sync(context.Background(), env, sp, opts); err != nil {
		t.Fatal(err)
	}
	if m, _ := state.Get(context.Background(), pool, "gs_long"); m.State != state.Synced {
		t.Fatalf("state %s after the resumed sync; want synced", m.State)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(progress) == 0 {
		t.Fatal("no progress reported by the resumed run")
	}
	for _, p := range progress {
		if strings.HasPrefix(p.Throttle, "guard:") {
			t.Fatalf("the resumed run showed the last run's breaker reason %q", p.Throttle)
		}
	}
	if n := syncOrdersDiff(t, pool, "gs_long"); n != 0 {
		t.Fatalf("%d rows differ between blue and green", n)
	}
}

// TestSyncBreakerHoldsStreamApply: in logical mode the breaker holds the
// stream's apply as well as the backfill: an application insert made while
// the probe fails does not reach green until it passes again; then sync
// goes on to synced with blue and green equal.
func TestSyncBreakerHoldsStreamApply(t *testing.T) {
	t.Parallel()
	pool, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, syncOrdersTable(5000, false)+`; CREATE TABLE health (ok bool); INSERT INTO health VALUES (true)`)
	env := syncTestEnv(t, dsn)
	sp := syncSpec(t, "mode: logical\n"+syncOrdersSpec("gs_lhold", false))
	res := make(chan error, 1)
	go func() {
		_, err := Sync(context.Background(), env, sp, SyncOptions{BatchSize: 50, NiceRatio: 5,
			Guard: guardOnly(spec.GuardOptions{ProbeSQL: "SELECT ok FROM public.health"})})
		res <- err
	}()
	syncWaitFor(t, 30*time.Second, "the backfill to start", func() bool { return syncRowsCopied(pool, "gs_lhold") > 0 })
	pgtest.Exec(t, dsn, `UPDATE health SET ok = false`)
	syncWaitFor(t, 20*time.Second, "the breaker to open", func() bool {
		return strings.HasPrefix(syncThrottle(t, env, "gs_lhold"), "guard: probe_sql=1 > 0")
	})
	pgtest.Exec(t, dsn, `INSERT INTO public.orders (id, tenant, email, amount) VALUES (900001, 1, 'held@x', 7)`)
	time.Sleep(1500 * time.Millisecond)
	if n := syncCount(t, pool, `SELECT count(*) FROM gs_gs_lhold_green.orders WHERE id = 900001`); n != 0 {
		t.Fatalf("the stream applied an insert while the breaker was open (%d rows)", n)
	}
	pgtest.Exec(t, dsn, `UPDATE health SET ok = true`)
	select {
	case err := <-res:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("sync did not finish once the probe passed")
	}
	syncWaitFor(t, 20*time.Second, "the held insert to reach green", func() bool {
		return syncCount(t, pool, `SELECT count(*) FROM gs_gs_lhold_green.orders WHERE id = 900001`) == 1
	})
	if n := syncOrdersDiff(t, pool, "gs_lhold"); n != 0 {
		t.Fatalf("%d rows differ between blue and green", n)
	}
}

// TestSyncBreakerFailingProbeCopiesNothing (break5 finding 04): with a
// probe failing from the start, no batch runs: the breaker's first sample
// comes before the first batch (it came `every`, 1s, after the baseline,
// and the copy ran meanwhile). Open past max_open, sync stops (exit 6)
// with nothing copied.
func TestSyncBreakerFailingProbeCopiesNothing(t *testing.T) {
	t.Parallel()
	pool, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, syncOrdersTable(20000, false))
	env := syncTestEnv(t, dsn)
	g := guardOnly(spec.GuardOptions{ProbeCmd: "echo down >&2; false", MaxOpen: spec.Duration{Duration: 1500 * time.Millisecond}})
	g.Every.Duration = time.Second // the default, the finding's setting
	_, err := Sync(context.Background(), env, syncSpec(t, syncOrdersSpec("gs_first", false)), SyncOptions{BatchSize: 100, Guard: g})
	if exitcode.Of(err) != exitcode.GuardTripped || !strings.Contains(err.Error(), "probe_cmd=1 > 0") {
		t.Fatalf("sync: %v (exit %d); want exit %d naming probe_cmd", err, exitcode.Of(err), exitcode.GuardTripped)
	}
	if n := syncRowsCopied(pool, "gs_first"); n != 0 {
		t.Fatalf("%d rows copied with the probe failing from the start; want none", n)
	}
}
