package runner

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
)

func TestSyncEndToEnd(t *testing.T) {
	t.Parallel()
	pool, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, syncOrdersTable(5000, false))
	env := syncTestEnv(t, dsn)
	ctx := context.Background()
	var progress []SyncProgress
	stats, err := Sync(ctx, env, syncSpec(t, syncOrdersSpec("o", false)), SyncOptions{
		Progress: func(p SyncProgress) { progress = append(progress, p) }, ProgressEvery: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if stats.State != state.Synced || stats.Rows != 5000 || stats.Batches == 0 || stats.RowsPerSec <= 0 {
		t.Fatalf("stats = %+v", stats)
	}
	if d := syncOrdersDiff(t, pool, "o"); d != 0 {
		t.Fatalf("green differs from blue in %d rows", d)
	}
	m, err := state.Get(ctx, pool, "o")
	if err != nil {
		t.Fatal(err)
	}
	if m.State != state.Synced || m.Phase != PhaseNone || m.RowsCopied != 5000 || m.BackfillDoneAt == nil || m.BackfillStartedAt == nil {
		t.Fatalf("row = %+v", m)
	}
	// Both target.indexes exist and are valid; the unnamed one got PostgreSQL's name.
	if n := syncCount(t, pool, `SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
		WHERE i.indrelid = 'gs_o_green.orders'::regclass AND i.indisvalid AND c.relname IN ('orders_created_at_idx', 'orders_email_idx')`); n != 2 {
		t.Fatalf("%d of 2 target indexes", n)
	}
	// green was analyzed (before PostgreSQL 15 the statistics arrive a
	// moment later, through the stats collector).
	syncWaitFor(t, 10*time.Second, "green's last_analyze", func() bool {
		return syncCount(t, pool, `SELECT count(*) FROM pg_stat_user_tables WHERE relid = 'gs_o_green.orders'::regclass AND (last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL)`) == 1
	})
	// The reverse direction is on: a write through green's version schema reaches blue.
	pgtest.Exec(t, dsn, `SET search_path TO gs_o_green; INSERT INTO orders (tenant, email, amount) VALUES (1, 'g@x', 3)`)
	if n := syncCount(t, pool, `SELECT count(*) FROM gs_o_blue.orders WHERE email = 'g@x' AND amount = 3`); n != 1 {
		t.Fatal("a write through green did not reach blue")
	}
	if d := syncOrdersDiff(t, pool, "o"); d != 0 {
		t.Fatalf("after a write through green: %d rows differ", d)
	}
	// Events: one per step, with SQL.
	evs, err := state.Events(ctx, pool, "o", 100)
	if err != nil {
		t.Fatal(err)
	}
	var steps []string
	for _, e := range evs {
		steps = append(steps, e.Step)
	}
	want := "create adopt create-green backfill build-index build-index settle analyze synced"
	if got := strings.Join(steps, " "); got != want {
		t.Fatalf("events %q, want %q", got, want)
	}
	if len(progress) == 0 || progress[len(progress)-1].State != state.Synced || progress[len(progress)-1].Percent != 100 {
		t.Fatalf("progress = %+v", progress)
	}
	// A second sync has nothing to do.
	stats, err = Sync(ctx, env, syncSpec(t, syncOrdersSpec("o", false)), SyncOptions{})
	if err != nil || !stats.AlreadySynced {
		t.Fatalf("second sync: %+v, %v", stats, err)
	}
}

func TestSyncRefusesChangedSpec(t *testing.T) {
	t.Parallel()
	_, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, syncOrdersTable(100, false))
	env := syncTestEnv(t, dsn)
	ctx := context.Background()
	if _, err := Sync(ctx, env, syncSpec(t, syncOrdersSpec("o", false)), SyncOptions{StopAfterSetup: true}); err != nil {
		t.Fatal(err)
	}
	changed := strings.Replace(syncOrdersSpec("o", false), "coalesce(email, 'unknown@invalid')", "coalesce(email, 'x')", 1)
	_, err := Sync(ctx, env, syncSpec(t, changed), SyncOptions{})
	if exitcode.Of(err) != exitcode.BadInput || !strings.Contains(err.Error(), "forward") || !strings.Contains(err.Error(), "rollback") {
		t.Fatalf("err = %v (exit %d), want exit 2 naming forward and rollback", err, exitcode.Of(err))
	}
	// Sync options may change between runs.
	tuned := syncOrdersSpec("o", false) + "sync:\n  batch_size: 77\n"
	if _, err := Sync(ctx, env, syncSpec(t, tuned), SyncOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestSyncBusy(t *testing.T) {
	t.Parallel()
	_, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, syncOrdersTable(100, false))
	env := syncTestEnv(t, dsn)
	lock, err := env.Lock(context.Background(), "o")
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release(context.Background())
	_, err = Sync(context.Background(), env, syncSpec(t, syncOrdersSpec("o", false)), SyncOptions{})
	if exitcode.Of(err) != exitcode.Busy {
		t.Fatalf("err = %v, want exit 4", err)
	}
}

func TestSyncMissingTable(t *testing.T) {
	t.Parallel()
	pool, dsn := syncNewDB(t)
	env := syncTestEnv(t, dsn)
	_, err := Sync(context.Background(), env, syncSpec(t, syncOrdersSpec("o", false)), SyncOptions{})
	if exitcode.Of(err) != exitcode.BadInput || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("err = %v, want exit 2: does not exist", err)
	}
	// Nothing was touched: sync's plan gate refused before any state was written.
	if m, err := state.Get(context.Background(), pool, "o"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("row %+v, %v; want none", m, err)
	}
}

// Cancelling the context (Ctrl-C) stops after the batch in flight, with
// exit 130; the cursor is checkpointed and a re-run finishes the job.
func TestSyncInterruptAndResume(t *testing.T) {
	t.Parallel()
	pool, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, syncOrdersTable(20000, false))
	env := syncTestEnv(t, dsn)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		// One worker: this is the one-cursor checkpoint (a parallel copy's
		// ranges: TestSyncParallelResumeAfterCancel); the resume below may
		// split what is left.
		_, err := Sync(ctx, env, syncSpec(t, syncOrdersSpec("o", false)), SyncOptions{BatchSize: 200, Workers: 1})
		done <- err
	}()
	syncWaitFor(t, 30*time.Second, "some batches", func() bool {
		return syncRowsCopied(pool, "o") >= 2000
	})
	cancel()
	err := <-done
	if exitcode.Of(err) != exitcode.Interrupted || !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v (exit %d), want 130", err, exitcode.Of(err))
	}
	m, err := state.Get(context.Background(), pool, "o")
	if err != nil {
		t.Fatal(err)
	}
	var cur []string
	if err := json.Unmarshal(m.Cursor, &cur); err != nil || len(cur) != 1 {
		t.Fatalf("cursor %s: %v", m.Cursor, err)
	}
	if m.State != state.Syncing || m.Phase != PhaseBackfill || m.RowsCopied >= 20000 {
		t.Fatalf("row after interrupt: %+v", m)
	}
	// The checkpoint matches green exactly: batches commit with their cursor.
	if n := syncCount(t, pool, `SELECT count(*) FROM gs_o_green.orders`); n != m.RowsCopied {
		t.Fatalf("green has %d rows, checkpoint says %d", n, m.RowsCopied)
	}
	if n := syncCount(t, pool, `SELECT count(*) FROM gs_o_green.orders WHERE id > $1::bigint`, cur[0]); n != 0 {
		t.Fatalf("%d rows beyond the cursor", n)
	}
	stats, err := Sync(context.Background(), env, syncSpec(t, syncOrdersSpec("o", false)), SyncOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if stats.Rows+m.RowsCopied != 20000 {
		t.Fatalf("resumed run copied %d rows after %d", stats.Rows, m.RowsCopied)
	}
	if d := syncOrdersDiff(t, pool, "o"); d != 0 {
		t.Fatalf("%d rows differ", d)
	}
}

// pause holds the backfill within a second; resume lets it go on.
func TestSyncPauseResume(t *testing.T) {
	t.Parallel()
	pool, dsn := syncNewDB(t)
	// 1000 batches: enough that a fast machine cannot finish the backfill in
	// the pause's reaction time (CI once did with 100).
	pgtest.Exec(t, dsn, syncOrdersTable(100000, false))
	env := syncTestEnv(t, dsn)
	ctx := context.Background()
	if err := Pause(ctx, env, "o"); exitcode.Of(err) != exitcode.BadInput {
		t.Fatalf("pause of an unknown migration: %v", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := Sync(ctx, env, syncSpec(t, syncOrdersSpec("o", false)), SyncOptions{BatchSize: 100})
		done <- err
	}()
	copied := func() int64 {
		return syncRowsCopied(pool, "o")
	}
	syncWaitFor(t, 30*time.Second, "some batches", func() bool { return copied() >= 1000 })
	if err := Pause(ctx, env, "o"); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	syncWaitFor(t, 5*time.Second, "the throttle to say paused", func() bool {
		p, err := ReadSyncProgress(ctx, env, "o")
		if err == nil && p.Done {
			t.Fatalf("the backfill finished before the pause was seen: %+v", p)
		}
		return err == nil && strings.HasPrefix(p.Throttle, "paused") && p.Paused && p.RowsPerSec == 0
	})
	if d := time.Since(paused); d > time.Second+200*time.Millisecond {
		t.Errorf("pause took %s to take effect", d)
	}
	n := copied()
	time.Sleep(700 * time.Millisecond)
	if m := copied(); m != n {
		t.Fatalf("paused, yet rows_copied moved from %d to %d", n, m)
	}
	if err := Resume(ctx, env, "o"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("sync did not finish after resume")
	}
	if d := syncOrdersDiff(t, pool, "o"); d != 0 {
		t.Fatalf("%d rows differ", d)
	}
	if err := Pause(ctx, env, "o"); exitcode.Of(err) != exitcode.BadInput {
		t.Fatalf("pause of a synced migration: %v", err)
	}
}

// An INVALID index left by a crashed CREATE INDEX CONCURRENTLY is dropped
// and rebuilt; a built index is not built again.
func TestSyncRebuildsInvalidIndex(t *testing.T) {
	t.Parallel()
	pool, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, syncOrdersTable(2000, false))
	env := syncTestEnv(t, dsn)
	ctx := context.Background()
	if _, err := Sync(ctx, env, syncSpec(t, syncOrdersSpec("o", false)), SyncOptions{StopAfterSetup: true}); err != nil {
		t.Fatal(err)
	}
	// As if an earlier run had built the first index, then died twice on the
	// second (unnamed) one: once before recording it, once half-way.
	pgtest.Exec(t, dsn, `
		CREATE INDEX orders_created_at_idx ON gs_o_green.orders (created_at);
		CREATE INDEX orders_email_idx ON gs_o_green.orders (email);
		CREATE INDEX orders_email_idx_ccnew ON gs_o_green.orders (email);
		UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'gs_o_green.orders_email_idx_ccnew'::regclass;`)
	oid := syncCount(t, pool, `SELECT 'gs_o_green.orders_created_at_idx'::regclass::oid::bigint`)
	if _, err := Sync(ctx, env, syncSpec(t, syncOrdersSpec("o", false)), SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	if n := syncCount(t, pool, `SELECT count(*) FROM pg_index WHERE indrelid = 'gs_o_green.orders'::regclass AND NOT indisvalid`); n != 0 {
		t.Fatalf("%d invalid indexes remain", n)
	}
	if n := syncCount(t, pool, `SELECT count(*) FROM pg_index WHERE indrelid = 'gs_o_green.orders'::regclass`); n != 3 {
		t.Fatalf("green has %d indexes, want 3 (pkey + 2)", n)
	}
	if got := syncCount(t, pool, `SELECT 'gs_o_green.orders_created_at_idx'::regclass::oid::bigint`); got != oid {
		t.Fatal("a valid named index was rebuilt")
	}
	evs, _ := state.Events(ctx, pool, "o", 100)
	var steps []string
	for _, e := range evs {
		steps = append(steps, e.Step)
	}
	if s := strings.Join(steps, " "); !strings.Contains(s, "drop-invalid-index") || !strings.Contains(s, "drop-leftover-index build-index") {
		t.Fatalf("events: %s", s)
	}
}
