package runner

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
)

// TestLogicalSettleAfterStreamCatchUp (issue 20, logical mode): 8 writers
// update blue through the app name from before the sync until its settle
// phase begins, and the stream applies in batches at most every 1.5 s, so
// it has a backlog of their writes when the settle starts. The settle must
// vacuum only after the stream has applied everything committed before
// the phase began (the slot's confirmed position, read when the VACUUMs
// are done, is past the WAL position at the phase's start), and then every
// page of green is all-visible (pg_visibility). Right after analyze a burst
// of updates commits on blue; at the moment synced is recorded the stream
// has applied it (the slot's confirmed position is past the WAL position
// after the burst). In the end green equals blue (the EXCEPT diff both
// ways) and no writer saw an error.
func TestLogicalSettleAfterStreamCatchUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	name := logicalName("ls")
	pool, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, syncOrdersTable(20000, false)+`; CREATE EXTENSION IF NOT EXISTS pg_visibility`)
	env := syncTestEnv(t, dsn)
	// Batches start at most every 1.5 s and are never cut short by their
	// size: the stream is behind the writers by up to that much.
	env.Stream.ApplyInterval, env.Stream.MaxBatchKeys = 1500*time.Millisecond, 1_000_000
	app := startSyncWorkload(t, dsn, "orders", false, 8, 20)
	green := fmt.Sprintf("gs_%s_green.orders", name)
	slot := "gs_" + name
	lsnNow := func() pglogrepl.LSN {
		var s string
		if err := pool.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&s); err != nil {
			t.Error(err)
		}
		l, _ := pglogrepl.ParseLSN(s)
		return l
	}
	confirmed := func() pglogrepl.LSN {
		var s string
		if err := pool.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&s); err != nil {
			t.Error(err)
		}
		l, _ := pglogrepl.ParseLSN(s)
		return l
	}
	var atSettle, afterBurst pglogrepl.LSN
	var settledConfirmed, syncedConfirmed pglogrepl.LSN
	var notVisible, pages int64 = -1, -1
	var writerErrs []error
	var stopped bool
	env.syncPoint = func(ctx context.Context, point string) error {
		switch point {
		case "settle":
			// The writers stop here: whatever the stream applies after the
			// VACUUM is their backlog, and nothing else writes green.
			writerErrs, stopped = app.stop(), true
			atSettle = lsnNow()
		case "settled":
			settledConfirmed = confirmed()
			if err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE NOT all_visible), count(*) FROM pg_visibility_map($1::regclass)`,
				green).Scan(&notVisible, &pages); err != nil {
				return err
			}
		case "analyzed":
			if _, err := pool.Exec(ctx, `UPDATE public.orders SET amount = amount + 1 WHERE id % 10 = 3`); err != nil {
				return err
			}
			afterBurst = lsnNow()
		case "synced":
			syncedConfirmed = confirmed()
		}
		return nil
	}
	time.Sleep(200 * time.Millisecond) // the writers are under way before adopt
	stats, err := Sync(ctx, env, syncSpec(t, logicalSpec(name, false)), SyncOptions{BatchSize: 500})
	if !stopped {
		writerErrs = app.stop()
	}
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range writerErrs {
		if i < 5 {
			t.Errorf("writer error: %v", e)
		}
	}
	if stats.State != state.Synced || app.ops.Load() < 200 {
		t.Fatalf("stats %+v; %d writes", stats, app.ops.Load())
	}
	if atSettle == 0 || settledConfirmed < atSettle {
		t.Errorf("the settle vacuumed before the stream had applied what committed before it began: confirmed %s after the VACUUMs, WAL at the phase's start %s",
			settledConfirmed, atSettle)
	}
	if pages <= 0 || notVisible != 0 {
		t.Errorf("after the settle %d of green's %d pages are not all-visible, want none", notVisible, pages)
	}
	if afterBurst == 0 || syncedConfirmed < afterBurst {
		t.Errorf("synced was recorded with the stream behind: confirmed %s, the burst after analyze ended at %s", syncedConfirmed, afterBurst)
	}
	var detail string
	if err := pool.QueryRow(ctx, `SELECT string_agg(step || ' ' || coalesce(detail::text, ''), '; ' ORDER BY id) FROM greenswap.events
		WHERE migration = $1 AND step IN ('settle', 'synced') AND outcome = 'ok'`, name).Scan(&detail); err != nil {
		t.Fatal(err)
	}
	if strings.Count(detail, "stream_applied_to") != 2 {
		t.Errorf("the settle and synced events do not both say how far the stream had applied: %s", detail)
	}
	stop, _ := startWatch(t, env, name)
	logicalWait(t, env, name)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if d := syncOrdersDiff(t, pool, name); d != 0 {
		t.Fatalf("green differs from blue in %d rows", d)
	}
	t.Logf("%d writes; settle began at %s, confirmed %s after it; burst ended %s, confirmed %s at synced; %d pages; events: %s",
		app.ops.Load(), atSettle, settledConfirmed, afterBurst, syncedConfirmed, pages, detail)
}

// TestLogicalWatchKeepsTheSyncsStreamer: with KeepStreaming (sync --watch)
// the streamer that caught up after synced is the one WatchSync streams
// with: the slot's walsender at the moment synced is recorded is still the
// one streaming during the watch (no new walsender decoding the slot's WAL
// again from its restart position), the stream event says so, and under 8
// writers from before the sync to the end of the watch green equals blue.
// Without KeepStreaming the sync stops its streamer (the slot idle once
// Sync has returned), as before.
func TestLogicalWatchKeepsTheSyncsStreamer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, keep := range []bool{true, false} {
		t.Run(fmt.Sprintf("keep=%v", keep), func(t *testing.T) {
			name := logicalName("lk")
			pool, dsn := syncNewDB(t)
			pgtest.Exec(t, dsn, syncOrdersTable(10000, false))
			env := syncTestEnv(t, dsn)
			slot := "gs_" + name
			walsender := func() (pid int64, start string) {
				_ = pool.QueryRow(ctx, `SELECT coalesce(s.active_pid, 0), coalesce(a.backend_start::text, '')
					FROM pg_replication_slots s LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid WHERE s.slot_name = $1`, slot).Scan(&pid, &start)
				return pid, start
			}
			var syncedPid int64
			var syncedStart string
			env.syncPoint = func(ctx context.Context, point string) error {
				if point == "synced" {
					syncedPid, syncedStart = walsender()
				}
				return nil
			}
			app := startSyncWorkload(t, dsn, "orders", false, 8, 21)
			time.Sleep(150 * time.Millisecond)
			stats, err := Sync(ctx, env, syncSpec(t, logicalSpec(name, false)), SyncOptions{BatchSize: 500, KeepStreaming: keep})
			if err != nil {
				app.stop()
				t.Fatal(err)
			}
			if stats.State != state.Synced || syncedPid == 0 {
				app.stop()
				t.Fatalf("stats %+v; walsender at synced %d", stats, syncedPid)
			}
			kept := coStr(t, pool, `SELECT coalesce(detail->>'kept_streaming', '') FROM greenswap.events WHERE migration = $1 AND step = 'stream'`, name)
			if kept != fmt.Sprint(keep) {
				t.Errorf("stream event kept_streaming = %q, want %v", kept, keep)
			}
			if !keep {
				// The sync's streamer stopped: its walsender goes (a moment
				// after the replication connection closes).
				syncWaitFor(t, 10*time.Second, "the sync's walsender to go", func() bool { pid, _ := walsender(); return pid != syncedPid })
			}
			stop, _ := startWatch(t, env, name)
			syncWaitFor(t, 20*time.Second, "a walsender streaming the slot", func() bool { pid, _ := walsender(); return pid != 0 })
			time.Sleep(500 * time.Millisecond)
			pid, start := walsender()
			if keep && (pid != syncedPid || start != syncedStart) {
				t.Errorf("the watch streams with walsender %d (started %s), the sync's was %d (started %s): a new streamer", pid, start, syncedPid, syncedStart)
			}
			if !keep && pid == syncedPid {
				t.Errorf("without KeepStreaming the watch streams with the sync's walsender %d", pid)
			}
			errs := app.stop()
			for i, e := range errs {
				if i < 5 {
					t.Errorf("writer error: %v", e)
				}
			}
			logicalWait(t, env, name)
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			if d := syncOrdersDiff(t, pool, name); d != 0 {
				t.Fatalf("green differs from blue in %d rows", d)
			}
			t.Logf("keep=%v: %d writes; walsender %d at synced, %d during the watch", keep, app.ops.Load(), syncedPid, pid)
		})
	}
}
