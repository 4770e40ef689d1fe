package sync_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/testkit"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
	gssync "github.com/greenswap/greenswap/sync"
)

func settleNames(schema, table string) shadow.Names {
	return shadow.Names{Green: spec.QualifiedName{Schema: schema, Name: table}}
}

// settleWriters update, delete and insert hot rows of table until stop, counting
// errors; each statement must finish within a second (nothing the settle
// takes may block them).
func settleWriters(t *testing.T, pool *pgxpool.Pool, table string, n int) (stop func() (commits, errs int64)) {
	t.Helper()
	var wg gosync.WaitGroup
	var commits, errs atomic.Int64
	done := make(chan struct{})
	for w := 0; w < n; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				var err error
				// Hot rows: a few pages the VACUUM's result may lose again.
				id := 1 + rand.IntN(50)
				switch rand.IntN(3) {
				case 0:
					_, err = pool.Exec(ctx, `UPDATE `+table+` SET v = v + 1 WHERE id = $1`, id)
				case 1:
					_, err = pool.Exec(ctx, `DELETE FROM `+table+` WHERE id = $1`, id)
				default:
					_, err = pool.Exec(ctx, `INSERT INTO `+table+` (id, v) VALUES ($1, 0) ON CONFLICT (id) DO NOTHING`, id)
				}
				cancel()
				if err != nil {
					errs.Add(1)
					t.Logf("writer: %v", err)
				} else {
					commits.Add(1)
				}
			}
		}()
	}
	return func() (int64, int64) { close(done); wg.Wait(); return commits.Load(), errs.Load() }
}

// TestSettleFreezesEveryLeaf: on a partitioned green of 30k rows with 4
// writers updating and inserting throughout, the Settler is held by a
// throttle for its first asks (told through OnThrottle, then released),
// then vacuums every leaf: at least 80% of the pages the load filled
// are all-visible and all-frozen (the writers' hot rows dirty a few again,
// and their new row versions fill new pages); no
// writer failed or waited a second.
func TestSettleFreezesEveryLeaf(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `CREATE SCHEMA gs_settle_green;
		CREATE TABLE gs_settle_green.t (id bigint PRIMARY KEY, v bigint NOT NULL) PARTITION BY RANGE (id);
		CREATE TABLE gs_settle_green.t_a PARTITION OF gs_settle_green.t FOR VALUES FROM (MINVALUE) TO (10001);
		CREATE TABLE gs_settle_green.t_b PARTITION OF gs_settle_green.t FOR VALUES FROM (10001) TO (20001);
		CREATE TABLE gs_settle_green.t_c PARTITION OF gs_settle_green.t DEFAULT;
		ALTER TABLE gs_settle_green.t_a SET (autovacuum_enabled = false);
		ALTER TABLE gs_settle_green.t_b SET (autovacuum_enabled = false);
		ALTER TABLE gs_settle_green.t_c SET (autovacuum_enabled = false);
		INSERT INTO gs_settle_green.t SELECT g, g FROM generate_series(1, 30000) g;`)
	loadedPages := map[string]int64{}
	for _, leaf := range []string{"t_a", "t_b", "t_c"} {
		loadedPages[leaf] = int64(testkit.Count(t, pool, `SELECT pg_relation_size($1::regclass) / 8192`, "gs_settle_green."+leaf))
	}
	stop := settleWriters(t, pool, "gs_settle_green.t", 4)

	var asks atomic.Int32
	var mu gosync.Mutex
	var told []string
	s := &gssync.Settler{
		Pool:  pool,
		Names: settleNames("gs_settle_green", "t"),
		Throttles: []gssync.Throttle{gssync.ThrottleFunc(func(context.Context) (string, error) {
			if asks.Add(1) <= 3 {
				return "test hold", nil
			}
			return "", nil
		})},
		OnThrottle:   func(r string) { mu.Lock(); told = append(told, r); mu.Unlock() },
		PollInterval: 20 * time.Millisecond,
	}
	res, err := s.Run(ctx)
	commits, errs := stop()
	if err != nil {
		t.Fatal(err)
	}
	if res.Leaves != 3 || len(res.Statements) != 3 {
		t.Fatalf("settled %d leaves (%v), want 3", res.Leaves, res.Statements)
	}
	if fmt.Sprint(told) != "[test hold ]" || res.Held <= 0 {
		t.Errorf("throttle reasons told %q (held %s), want the hold and then its end", told, res.Held)
	}
	if errs != 0 || commits == 0 {
		t.Errorf("writers: %d commits, %d errors during the settle", commits, errs)
	}
	// Frozen pages from the visibility map where pg_visibility is
	// installed (not every server build has contrib); all-visible pages
	// from pg_class everywhere. Writers ran throughout, so a few pages
	// lost their bits again after the VACUUM passed them.
	_, verr := pool.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_visibility`)
	if verr != nil {
		t.Logf("no pg_visibility (%v): the frozen pages are not counted", verr)
	}
	n := 0
	for _, leaf := range []string{"t_a", "t_b", "t_c"} {
		rel := "gs_settle_green." + leaf
		n++
		var visible int64
		if err := pool.QueryRow(ctx, `SELECT relallvisible FROM pg_class WHERE oid = $1::regclass`, rel).Scan(&visible); err != nil {
			t.Fatal(err)
		}
		pages := loadedPages[leaf] // the writers' new pages come after
		if pages > 0 && visible < pages*8/10 {
			t.Errorf("%s: %d of %d pages all-visible: the visibility map was not set", leaf, visible, pages)
		}
		if verr == nil {
			var frozen int64
			if err := pool.QueryRow(ctx, `SELECT all_frozen FROM pg_visibility_map_summary($1::regclass)`, rel).Scan(&frozen); err != nil {
				t.Fatal(err)
			}
			if pages > 0 && frozen < pages*8/10 {
				t.Errorf("%s: %d of %d pages all-frozen: not frozen", leaf, frozen, pages)
			}
		}
	}
	if n != 3 {
		t.Errorf("%d leaves in the catalog", n)
	}
}

// TestSettleWaitsForTheLockAndRetries: a session holding SHARE UPDATE
// EXCLUSIVE on green (as another VACUUM, ANALYZE or DDL would) makes each
// attempt time out at LockTimeout; the Settler retries and finishes once
// the lock is gone. Cancelled while held by a throttle, it returns the
// context's error having vacuumed nothing.
func TestSettleWaitsForTheLockAndRetries(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `CREATE SCHEMA gs_settle2_green;
		CREATE TABLE gs_settle2_green.t (id bigint PRIMARY KEY, v bigint NOT NULL);
		INSERT INTO gs_settle2_green.t SELECT g, g FROM generate_series(1, 5000) g;`)
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `LOCK TABLE gs_settle2_green.t IN SHARE UPDATE EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(1500 * time.Millisecond)
		tx.Rollback(context.Background())
	}()
	var told []string
	s := &gssync.Settler{Pool: pool, Names: settleNames("gs_settle2_green", "t"), LockTimeout: 100 * time.Millisecond,
		OnThrottle: func(r string) { told = append(told, r) }}
	res, err := s.Run(ctx)
	if err != nil || res.Leaves != 1 || res.Retries == 0 {
		t.Fatalf("settle under a held lock: %+v, %v; want 1 leaf after at least one retry", res, err)
	}
	if len(told) < 2 || !strings.Contains(told[0], `settle waits for the lock on "gs_settle2_green"."t": pid `) ||
		!strings.Contains(told[0], "holds ShareUpdateExclusiveLock") || told[len(told)-1] != "" {
		t.Errorf("told %q: want the wait named with the lock's holder, then its end", told)
	}
	if got := testkit.Count(t, pool, `SELECT count(*) FROM pg_stat_user_tables WHERE relid = 'gs_settle2_green.t'::regclass AND vacuum_count > 0`); got != 1 {
		t.Errorf("pg_stat_user_tables shows no vacuum of green")
	}

	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	held := &gssync.Settler{Pool: pool, Names: settleNames("gs_settle2_green", "t"), PollInterval: 20 * time.Millisecond,
		Throttles: []gssync.Throttle{gssync.ThrottleFunc(func(context.Context) (string, error) { return "paused", nil })}}
	res, err = held.Run(cctx)
	if !errors.Is(err, context.DeadlineExceeded) || res.Leaves != 0 {
		t.Errorf("held and cancelled: %+v, %v; want the context's error and nothing vacuumed", res, err)
	}
}

// TestSettleHoldCancelsTheVacuumUnderWay: a slow VACUUM (a high nice ratio
// on 40k rows) is under way when a throttle starts to hold: the VACUUM is
// cancelled (none runs on green while held, as pg_stat_progress_vacuum
// shows), the hold is told, and once released the VACUUM runs again to its
// end: green frozen, Interrupted counted.
func TestSettleHoldCancelsTheVacuumUnderWay(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `CREATE SCHEMA gs_settle3_green;
		CREATE TABLE gs_settle3_green.t (id bigint PRIMARY KEY, v bigint NOT NULL, pad text) WITH (autovacuum_enabled = false);
		INSERT INTO gs_settle3_green.t SELECT g, g, repeat('x', 100) FROM generate_series(1, 40000) g;`)
	var loaded int64
	if err := pool.QueryRow(ctx, `SELECT txid_current()`).Scan(&loaded); err != nil {
		t.Fatal(err)
	}
	var phase atomic.Int32 // 0: run until the VACUUM is seen; 1: hold; 2: released
	var heldSince time.Time
	var sawVacuumWhileHeld atomic.Bool
	var mu gosync.Mutex
	var told []string
	s := &gssync.Settler{
		Pool: pool, Names: settleNames("gs_settle3_green", "t"), NiceRatio: 40, PollInterval: 50 * time.Millisecond,
		OnThrottle: func(r string) { mu.Lock(); told = append(told, r); mu.Unlock() },
		Throttles: []gssync.Throttle{gssync.ThrottleFunc(func(ctx context.Context) (string, error) {
			running := testkit.Count(t, pool, `SELECT count(*) FROM pg_stat_progress_vacuum WHERE relid = 'gs_settle3_green.t'::regclass`) > 0
			switch phase.Load() {
			case 0:
				if running {
					phase.Store(1)
					heldSince = time.Now()
					return "test hold", nil
				}
				return "", nil
			case 1:
				if time.Since(heldSince) > 300*time.Millisecond && running {
					sawVacuumWhileHeld.Store(true)
				}
				if time.Since(heldSince) > time.Second {
					phase.Store(2)
					return "", nil
				}
				return "test hold", nil
			}
			return "", nil
		})},
	}
	res, err := s.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if phase.Load() != 2 || res.Interrupted == 0 || res.Leaves != 1 {
		t.Fatalf("phase %d, %+v: want the VACUUM seen, cancelled by the hold, then run to its end", phase.Load(), res)
	}
	if sawVacuumWhileHeld.Load() {
		t.Error("a VACUUM of green kept running while the throttle held")
	}
	if fmt.Sprint(told) != "[test hold ]" {
		t.Errorf("told %q, want the hold then its end", told)
	}
	if frozen := testkit.Count(t, pool, `SELECT relfrozenxid::text::bigint FROM pg_class WHERE oid = 'gs_settle3_green.t'::regclass`); frozen <= loaded%(1<<32) {
		t.Errorf("relfrozenxid %d not past the load's %d", frozen, loaded)
	}
}

// TestSettleWaitsForTheHorizon: a REPEATABLE READ transaction opened
// before the settle holds the xmin horizon back, so a VACUUM could freeze
// none of green's rows. The Settler waits, telling the throttle reason
// that names the session; when it commits, the VACUUM runs and green is
// frozen. A holder that stays past HorizonWait: the VACUUM runs anyway and
// NotSettled names the leaf and the holder. The VACUUM never truncates
// green (ACCESS EXCLUSIVE): its emptied tail stays on disk.
func TestSettleWaitsForTheHorizon(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `CREATE EXTENSION IF NOT EXISTS pg_visibility;
		CREATE SCHEMA gs_settle4_green;
		CREATE TABLE gs_settle4_green.t (id bigint PRIMARY KEY, v bigint NOT NULL) WITH (autovacuum_enabled = false);
		CREATE TABLE gs_settle4_green.u (id bigint PRIMARY KEY, v bigint NOT NULL) WITH (autovacuum_enabled = false);`)
	frozen := func(rel string) (int64, int64) {
		var f, pages int64
		if err := pool.QueryRow(ctx, `SELECT (SELECT all_frozen FROM pg_visibility_map_summary($1::regclass)), pg_relation_size($1::regclass) / 8192`, rel).Scan(&f, &pages); err != nil {
			t.Fatal(err)
		}
		return f, pages
	}
	for _, tc := range []struct {
		table   string
		release time.Duration // when the holder commits; 0: after the settle
	}{{"t", 700 * time.Millisecond}, {"u", 0}} {
		rel := "gs_settle4_green." + tc.table
		holder, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := holder.Exec(ctx, `SET TRANSACTION ISOLATION LEVEL REPEATABLE READ`); err != nil {
			t.Fatal(err)
		}
		var holderPID int32
		if err := holder.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&holderPID); err != nil { // takes the snapshot
			t.Fatal(err)
		}
		pgtest.Exec(t, dsn, `INSERT INTO `+rel+` SELECT g, g FROM generate_series(1, 20000) g; DELETE FROM `+rel+` WHERE id > 10000`)
		sizeBefore := testkit.Count(t, pool, `SELECT pg_relation_size($1::regclass)`, rel)
		if tc.release > 0 {
			go func() { time.Sleep(tc.release); holder.Commit(context.Background()) }()
		}
		var mu gosync.Mutex
		var told []string
		s := &gssync.Settler{Pool: pool, Names: settleNames("gs_settle4_green", tc.table), PollInterval: 50 * time.Millisecond,
			HorizonWait: 3 * time.Second, OnThrottle: func(r string) { mu.Lock(); told = append(told, r); mu.Unlock() }}
		if tc.release == 0 {
			s.HorizonWait = 500 * time.Millisecond
		}
		res, err := s.Run(ctx)
		if tc.release == 0 {
			holder.Commit(ctx)
		}
		if err != nil || res.Leaves != 1 {
			t.Fatalf("%s: %+v, %v", tc.table, res, err)
		}
		mu.Lock()
		first := ""
		if len(told) > 0 {
			first = told[0]
		}
		mu.Unlock()
		if want := fmt.Sprintf("settle waits for pid %d", holderPID); !strings.Contains(first, want) || !strings.Contains(first, "xmin horizon") {
			t.Errorf("%s: told %q, want the horizon's holder named (%s)", tc.table, told, want)
		}
		f, pages := frozen(rel)
		switch {
		case tc.release > 0 && (len(res.NotSettled) != 0 || f < pages*8/10):
			t.Errorf("%s: holder gone: %d of %d pages frozen, not settled %q; want green frozen", tc.table, f, pages, res.NotSettled)
		case tc.release == 0 && (len(res.NotSettled) != 1 || !strings.Contains(res.NotSettled[0], fmt.Sprintf("pid %d", holderPID))):
			t.Errorf("%s: holder stayed: not settled %q; want the leaf and pid %d named", tc.table, res.NotSettled, holderPID)
		}
		if after := testkit.Count(t, pool, `SELECT pg_relation_size($1::regclass)`, rel); after != sizeBefore {
			t.Errorf("%s: green's file went from %d to %d bytes: the VACUUM truncated it (ACCESS EXCLUSIVE)", tc.table, sizeBefore, after)
		}
	}
}
