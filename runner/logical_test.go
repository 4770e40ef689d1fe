package runner

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/sync/stream"
)

// Slot names are cluster-wide, and every test package shares one cluster:
// logical tests use migration names unique to this process.
var logicalSeq atomic.Int64

func logicalName(prefix string) string {
	return fmt.Sprintf("%s%d_%d", prefix, os.Getpid()%10000, logicalSeq.Add(1))
}

// logicalSpec is syncOrdersSpec in mode: logical.
func logicalSpec(name string, composite bool) string {
	return strings.Replace(syncOrdersSpec(name, composite), "table: public.orders\n", "table: public.orders\nmode: logical\n", 1)
}

// tuneForTests shortens the stream's intervals and the catch-up bound of
// every Env these tests connect.
func tuneForTests(env *Env) *Env {
	env.Stream = stream.Options{StatusInterval: 200 * time.Millisecond, MinBackoff: 20 * time.Millisecond, MaxBackoff: 500 * time.Millisecond}
	env.StreamCatchUp = time.Minute
	return env
}

// logicalWait waits until green is current up to now, with a streamer of
// this process running (WatchSync) or another one.
func logicalWait(t *testing.T, env *Env, name string) {
	t.Helper()
	m, err := env.LoadMigration(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	lsn, err := stream.CurrentLSN(context.Background(), env.Pool)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.WaitApplied(context.Background(), env.Pool, m.Names, lsn, 60*time.Second); err != nil {
		t.Fatal(err)
	}
}

// startWatch runs WatchSync (streaming, in logical mode) until the returned
// stop is called; stop returns WatchSync's error.
func startWatch(t *testing.T, env *Env, name string) (stop func() error, last func() SyncProgress) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	progress := make(chan SyncProgress, 1000)
	go func() {
		done <- WatchSync(ctx, env, name, 100*time.Millisecond, func(p SyncProgress) {
			select {
			case progress <- p:
			default:
			}
		})
	}()
	var lastP SyncProgress
	stopped := false
	var err error
	stop = func() error {
		if !stopped {
			cancel()
			err = <-done
			stopped = true
		}
		return err
	}
	t.Cleanup(func() { stop() })
	last = func() SyncProgress {
		for {
			select {
			case p := <-progress:
				lastP = p
			default:
				return lastP
			}
		}
	}
	return stop, last
}

func slotExists(t *testing.T, env *Env, slot string) bool {
	t.Helper()
	exists, _, _, err := stream.SlotInfo(context.Background(), env.Pool, slot)
	if err != nil {
		t.Fatal(err)
	}
	return exists
}

func publicationExists(t *testing.T, env *Env, pub string) bool {
	t.Helper()
	return syncCount(t, env.Pool, `SELECT count(*) FROM pg_publication WHERE pubname = $1`, pub) > 0
}

// The randomized concurrent workload of trigger mode, in logical mode: the
// application writes through the app name (inserts, updates, deletes, key
// updates, NULLs, TOAST-sized values, multi-row statements) from before
// adopt to after synced; then, with `sync --watch` streaming, a second
// workload writes through green's version schema too. Green must equal blue
// mapped forward (the hand-written EXCEPT diff both ways), the application
// must see no error, and the app's writes fire no trigger on blue.
func TestLogicalSyncUnderWorkload(t *testing.T) {
	t.Parallel()
	for _, seed := range syncSeeds(t, 2) {
		composite := seed%2 == 0
		t.Run(fmt.Sprintf("seed=%d,composite=%v", seed, composite), func(t *testing.T) {
			name := logicalName("lw")
			pool, dsn := syncNewDB(t)
			pgtest.Exec(t, dsn, syncOrdersTable(15000, composite))
			env := syncTestEnv(t, dsn)
			app := startSyncWorkload(t, dsn, "orders", composite, 3, seed)
			time.Sleep(150 * time.Millisecond)
			t0 := time.Now()
			stats, err := Sync(context.Background(), env, syncSpec(t, logicalSpec(name, composite)), SyncOptions{BatchSize: 300})
			if err != nil {
				t.Fatal(err)
			}
			if stats.State != state.Synced || stats.Stream == nil || stats.Stream.Keys == 0 {
				t.Fatalf("stats %+v, stream %+v", stats, stats.Stream)
			}
			// Logical mode: the forward triggers are off.
			if n := syncCount(t, pool, `SELECT count(*) FROM pg_trigger WHERE tgrelid = $1::regclass AND tgname LIKE 'gs_sync_%' AND tgenabled <> 'D'`,
				fmt.Sprintf("gs_%s_blue.orders", name)); n != 0 {
				t.Fatalf("%d sync triggers enabled on blue", n)
			}
			stopWatch, last := startWatch(t, env, name)
			// The same rows as the app's writers: some writes meet a row
			// the stream has not applied yet and are refused.
			greenSide := startSyncWorkloadWith(t, dsn+"&options=-c%20search_path%3Dgs_"+name+"_green", "orders", composite, true, true, 1, seed+1000)
			time.Sleep(800 * time.Millisecond)
			errs := append(app.stop(), greenSide.stop()...)
			for i, err := range errs {
				if i < 5 {
					t.Errorf("workload error: %v", err)
				}
			}
			if len(errs) > 0 {
				t.Fatalf("%d workload errors", len(errs))
			}
			logicalWait(t, env, name)
			p := last()
			if err := stopWatch(); err != nil {
				t.Fatal(err)
			}
			if d := syncOrdersDiff(t, pool, name); d != 0 {
				t.Fatalf("green differs from blue in %d rows", d)
			}
			if p.Stream == nil || !p.Stream.Exists || !p.Stream.Local || p.Stream.Slot != "gs_"+name {
				t.Fatalf("watch progress %+v / %+v", p, p.Stream)
			}
			t.Logf("sync %s (%d batches); stream during sync: %d txns, %d keys; watch: %+v; app %d ops, green side %d ops",
				time.Since(t0).Round(time.Millisecond), stats.Batches, stats.Stream.Txns, stats.Stream.Keys, *p.Stream,
				app.ops.Load(), greenSide.ops.Load())
			t.Logf("green-side writes refused on rows the stream had not applied yet: %d", greenSide.refused.Load())
		})
	}
}

// `greenswap sync --watch` is killed with SIGKILL at random moments (during
// the backfill, while streaming), under a workload, and started again: the
// slot keeps what was not confirmed, the restart resumes from it, changes
// applied twice do no harm. In the end green equals blue.
func TestLogicalCrashRestart(t *testing.T) {
	t.Parallel()
	bin := syncBuildCLI(t)
	name := logicalName("lc")
	pool, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, syncOrdersTable(20000, false))
	spec := syncWriteSpec(t, logicalSpec(name, false))
	app := startSyncWorkload(t, dsn, "orders", false, 2, 5)
	rng := rand.New(rand.NewPCG(5, 5))
	kills := 0
	for run := 0; run < 4; run++ {
		r := syncStartCLI(t, bin, dsn, "sync", "-f", spec, "--watch", "--batch-size", "200")
		time.Sleep(time.Duration(400+rng.IntN(900)) * time.Millisecond)
		if r.cmd.ProcessState == nil {
			r.cmd.Process.Signal(syscall.SIGKILL)
			kills++
		}
		r.wait(t, 30*time.Second)
	}
	// Run to synced, then keep streaming until stopped.
	r := syncStartCLI(t, bin, dsn, "sync", "-f", spec, "--watch", "--batch-size", "500")
	syncWaitFor(t, 90*time.Second, "synced", func() bool {
		m, err := state.Get(context.Background(), pool, name)
		return err == nil && m.State == state.Synced
	})
	time.Sleep(300 * time.Millisecond)
	if errs := app.stop(); len(errs) > 0 {
		t.Fatalf("%d workload errors, first: %v", len(errs), errs[0])
	}
	env := syncTestEnv(t, dsn)
	syncWaitFor(t, 30*time.Second, "sync --watch to stream", func() bool {
		_, active, _, err := stream.SlotInfo(context.Background(), env.Pool, "gs_"+name)
		return err == nil && active
	})
	logicalWait(t, env, name)
	r.cmd.Process.Signal(syscall.SIGINT)
	if code := r.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("sync --watch exited %d after Ctrl-C; stderr:\n%s", code, r.stderr.String())
	}
	if d := syncOrdersDiff(t, pool, name); d != 0 {
		t.Fatalf("after %d kills green differs from blue in %d rows", kills, d)
	}
	t.Logf("%d kills; app %d ops", kills, app.ops.Load())
}

// Trap 9: the slot and the publication are gone after every exit path —
// a rollback of an interrupted sync, a failed setup (and its rollback), a
// cutover (the stream retires) then finalize, and a rollback of a
// rolled-back migration that left a slot behind. While the slot exists,
// status reports it with the WAL it retains.
func TestLogicalSlotGoneOnEveryExitPath(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("rollback after an interrupted sync", func(t *testing.T) {
		name := logicalName("xr")
		_, dsn := syncNewDB(t)
		pgtest.Exec(t, dsn, syncOrdersTable(30000, false))
		env := syncTestEnv(t, dsn)
		sctx, cancel := context.WithCancel(ctx)
		go func() {
			syncWaitFor(t, 30*time.Second, "the backfill", func() bool { return syncRowsCopied(env.Pool, name) > 0 })
			cancel()
		}()
		_, err := Sync(sctx, env, syncSpec(t, logicalSpec(name, false)), SyncOptions{BatchSize: 200})
		if err == nil {
			t.Fatal("sync was not interrupted")
		}
		n := "gs_" + name
		pgtest.Exec(t, dsn, `INSERT INTO orders (tenant, email, amount) VALUES (1, 'x', 1)`) // the slot retains it
		st, err := Status(ctx, env, name)
		if err != nil {
			t.Fatal(err)
		}
		if s := st.Migrations[0].Slot; s == nil || !s.Exists || s.RetainedBytes <= 0 {
			t.Fatalf("status slot = %+v", s)
		}
		if _, err := Rollback(ctx, env, name, SwapCommandOptions{}); err != nil {
			t.Fatal(err)
		}
		if slotExists(t, env, n) || publicationExists(t, env, n) {
			t.Fatal("slot or publication survived the rollback")
		}
	})

	t.Run("rollback while sync --watch streams", func(t *testing.T) {
		name := logicalName("xw")
		_, dsn := syncNewDB(t)
		pgtest.Exec(t, dsn, syncOrdersTable(500, false))
		env := syncTestEnv(t, dsn)
		if _, err := Sync(ctx, env, syncSpec(t, logicalSpec(name, false)), SyncOptions{}); err != nil {
			t.Fatal(err)
		}
		// Sync's own walsender lets go a moment after it returns: only then
		// does "active" mean the watch's stream.
		syncWaitFor(t, 10*time.Second, "sync's stream to let go of the slot", func() bool {
			_, active, _, _ := stream.SlotInfo(ctx, env.Pool, "gs_"+name)
			return !active
		})
		stop, _ := startWatch(t, env, name)
		syncWaitFor(t, 10*time.Second, "the stream to be active", func() bool {
			_, active, _, _ := stream.SlotInfo(ctx, env.Pool, "gs_"+name)
			return active
		})
		if _, err := Rollback(ctx, env, name, SwapCommandOptions{}); err != nil {
			t.Fatal(err)
		}
		if slotExists(t, env, "gs_"+name) || publicationExists(t, env, "gs_"+name) {
			t.Fatal("slot or publication survived the rollback")
		}
		if err := stop(); err != nil {
			t.Fatalf("watch after the rollback: %v", err)
		}
	})

	t.Run("cutover then finalize", func(t *testing.T) {
		name := logicalName("xc")
		pool, dsn := syncNewDB(t)
		pgtest.Exec(t, dsn, syncOrdersTable(2000, false))
		env := syncTestEnv(t, dsn)
		if _, err := Sync(ctx, env, syncSpec(t, logicalSpec(name, false)), SyncOptions{}); err != nil {
			t.Fatal(err)
		}
		pgtest.Exec(t, dsn, `UPDATE orders SET amount = amount + 1 WHERE id <= 100`) // pending in the slot
		if _, err := Cutover(ctx, env, name, CutoverOptions{SkipVerify: true}); err != nil {
			t.Fatal(err)
		}
		if slotExists(t, env, "gs_"+name) || publicationExists(t, env, "gs_"+name) {
			t.Fatal("slot or publication survived the cutover")
		}
		if d := syncOrdersDiff(t, pool, name); d != 0 {
			t.Fatalf("after cutover green differs from blue in %d rows", d)
		}
		// Both directions by trigger now, like trigger mode: a rollback
		// after cutover and a cutover again.
		if _, err := Rollback(ctx, env, name, SwapCommandOptions{}); err != nil {
			t.Fatal(err)
		}
		pgtest.Exec(t, dsn, `UPDATE orders SET amount = amount + 1 WHERE id <= 10`)
		if _, err := Cutover(ctx, env, name, CutoverOptions{SkipVerify: true}); err != nil {
			t.Fatal(err)
		}
		if d := syncOrdersDiff(t, pool, name); d != 0 {
			t.Fatalf("after rollback and cutover green differs from blue in %d rows", d)
		}
		if _, err := Finalize(ctx, env, name, FinalizeOptions{QuietPeriod: -1, Yes: true, Force: true}); err != nil {
			t.Fatal(err)
		}
		if slotExists(t, env, "gs_"+name) || publicationExists(t, env, "gs_"+name) {
			t.Fatal("slot or publication after finalize")
		}
		var ev int64 = syncCount(t, pool, `SELECT count(*) FROM greenswap.events WHERE migration = $1 AND step = 'retire-stream' AND outcome = 'ok'`, name)
		if ev < 1 {
			t.Fatal("no retire-stream event")
		}
	})

	t.Run("leftover slot after rollback", func(t *testing.T) {
		name := logicalName("xl")
		_, dsn := syncNewDB(t)
		pgtest.Exec(t, dsn, syncOrdersTable(100, false))
		env := syncTestEnv(t, dsn)
		if _, err := Sync(ctx, env, syncSpec(t, logicalSpec(name, false)), SyncOptions{StopAfterSetup: true}); err != nil {
			t.Fatal(err)
		}
		if !slotExists(t, env, "gs_"+name) {
			t.Fatal("no slot after setup")
		}
		if _, err := Rollback(ctx, env, name, SwapCommandOptions{}); err != nil {
			t.Fatal(err)
		}
		// A crash between teardown and slot drop leaves one behind.
		pgtest.Exec(t, dsn, `SELECT pg_create_logical_replication_slot('gs_`+name+`', 'pgoutput')`)
		if _, err := Rollback(ctx, env, name, SwapCommandOptions{}); err != nil {
			t.Fatal(err)
		}
		if slotExists(t, env, "gs_"+name) {
			t.Fatal("rollback of a rolled-back migration left its slot")
		}
	})
}

// A failed setup: the slot cannot be created (every slot taken) after a
// first run lost it. Sync fails, leaves neither slot nor publication, and
// the migration rolls back cleanly. Not parallel: it takes every slot of
// the package's cluster for a moment.
func TestLogicalFailedSetup(t *testing.T) {
	ctx := context.Background()
	name := logicalName("xf")
	pool, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, syncOrdersTable(100, false))
	env := syncTestEnv(t, dsn)
	spec := syncSpec(t, logicalSpec(name, false))
	if _, err := Sync(ctx, env, spec, SyncOptions{StopAfterSetup: true}); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, dsn, `SELECT pg_drop_replication_slot('gs_`+name+`')`)
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
		s := fmt.Sprintf("%s_f%d", name, i)
		if _, err := pool.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, s); err != nil {
			t.Fatal(err)
		}
		fillers = append(fillers, s)
	}
	_, err := Sync(ctx, env, spec, SyncOptions{})
	if err == nil || !strings.Contains(err.Error(), "slot") {
		t.Fatalf("sync with every slot taken: %v", err)
	}
	if slotExists(t, env, "gs_"+name) || publicationExists(t, env, "gs_"+name) {
		t.Fatal("a failed setup left its slot or publication")
	}
	if _, err := Rollback(ctx, env, name, SwapCommandOptions{}); err != nil {
		t.Fatal(err)
	}
	if n := syncCount(t, pool, `SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'orders'`); n != 1 {
		t.Fatal("the app did not get its table back")
	}
}

// A lost slot while syncing: the changes it held cannot be recovered, so
// the next sync empties green and copies again with a new slot.
func TestLogicalLostSlotRestartsBackfill(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	name := logicalName("xs")
	pool, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, syncOrdersTable(3000, false))
	env := syncTestEnv(t, dsn)
	spec := syncSpec(t, logicalSpec(name, false))
	sctx, cancel := context.WithCancel(ctx)
	go func() {
		syncWaitFor(t, 30*time.Second, "the backfill", func() bool { return syncRowsCopied(pool, name) > 500 })
		cancel()
	}()
	if _, err := Sync(sctx, env, spec, SyncOptions{BatchSize: 100}); err == nil {
		t.Fatal("not interrupted")
	}
	// The walsender lets go of the slot a moment after the stream's
	// connection closed.
	syncWaitFor(t, 10*time.Second, "the slot to be released", func() bool {
		return syncCount(t, pool, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND active`, "gs_"+name) == 0
	})
	pgtest.Exec(t, dsn, `SELECT pg_drop_replication_slot('gs_`+name+`')`)
	pgtest.Exec(t, dsn, `DELETE FROM orders WHERE id <= 50; UPDATE orders SET amount = 0 WHERE id <= 100`) // lost with the slot
	if _, err := Sync(ctx, env, spec, SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	if d := syncOrdersDiff(t, pool, name); d != 0 {
		t.Fatalf("green differs from blue in %d rows", d)
	}
	if n := syncCount(t, pool, `SELECT count(*) FROM greenswap.events WHERE migration = $1 AND step = 'restart-backfill'`, name); n != 1 {
		t.Fatalf("%d restart-backfill events", n)
	}
}

// Verify and cutover under a workload while `sync --watch` streams: verify
// settles the stream for its snapshot and passes; cutover retires the
// stream (the watch stops streaming), the swap runs as in trigger mode, and
// writes through both shapes keep both sides equal afterwards.
func TestLogicalCutoverUnderWorkload(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	name := logicalName("lx")
	pool, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, syncOrdersTable(5000, false))
	env := syncTestEnv(t, dsn)
	if _, err := Sync(ctx, env, syncSpec(t, logicalSpec(name, false)), SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	stopWatch, _ := startWatch(t, env, name)
	// No NULL emails through the app name: after cutover it reads green,
	// where email is NOT NULL (trap 6); blue's version schema takes them.
	app := startSyncWorkloadOpt(t, dsn, "orders", false, true, 1, 9)
	blueSide := startSyncWorkloadOpt(t, dsn+"&options=-c%20search_path%3Dgs_"+name+"_blue", "orders", false, false, 1, 10)
	time.Sleep(500 * time.Millisecond)
	// Verify while everything runs: green is settled for its snapshot.
	vr, err := Verify(ctx, env, name, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !vr.OK {
		t.Fatalf("verify under the workload found %d differences: %+v", vr.DifferenceCount, vr.Differences)
	}
	res, err := Cutover(ctx, env, name, CutoverOptions{})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	var errs []error
	planChanged := 0
	for _, err := range append(app.stop(), blueSide.stop()...) {
		// The app name's row type changes at cutover: a prepared statement
		// on it fails once (trap 6, as in trigger mode).
		if strings.Contains(err.Error(), "cached plan must not change result type") {
			planChanged++
			continue
		}
		errs = append(errs, err)
	}
	for i, err := range errs {
		if i < 5 {
			t.Errorf("workload error: %v", err)
		}
	}
	if len(errs) > 0 {
		t.Fatalf("%d workload errors", len(errs))
	}
	if err := stopWatch(); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if d := syncOrdersDiff(t, pool, name); d != 0 {
		t.Fatalf("green differs from blue in %d rows", d)
	}
	if slotExists(t, env, "gs_"+name) {
		t.Fatal("slot survived the cutover")
	}
	if res.State != state.CutOver {
		t.Fatalf("cutover result %+v", res)
	}
	t.Logf("cutover: lock hold %.1f ms; app %d ops (%d cached-plan errors), blue side %d ops", res.LockHoldMS, app.ops.Load(), planChanged, blueSide.ops.Load())
}
