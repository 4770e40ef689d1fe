package sync_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
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

// settleWriters update and insert rows of table until stop, counting
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
				if rand.IntN(2) == 0 {
					_, err = pool.Exec(ctx, `UPDATE `+table+` SET v = v + 1 WHERE id = $1`, 1+rand.IntN(30000))
				} else {
					_, err = pool.Exec(ctx, `INSERT INTO `+table+` (id, v) VALUES ($1, 0) ON CONFLICT (id) DO NOTHING`, 30001+rand.IntN(1000000))
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
// then vacuums every leaf: each leaf's relfrozenxid passes the xids spent
// after the load and its visibility map is set; no writer failed or waited
// a second.
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
	var loaded int64
	if err := pool.QueryRow(ctx, `SELECT txid_current()`).Scan(&loaded); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ { // xids the freeze must pass
		pgtest.Exec(t, dsn, `SELECT txid_current()`)
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
	rows, err := pool.Query(ctx, `SELECT c.relname, c.relfrozenxid::text::bigint, c.relallvisible, c.relpages
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'gs_settle_green' AND c.relkind = 'r' ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var name string
		var frozen int64
		var visible, pages int32
		if err := rows.Scan(&name, &frozen, &visible, &pages); err != nil {
			t.Fatal(err)
		}
		n++
		if frozen <= loaded%(1<<32) {
			t.Errorf("%s: relfrozenxid %d not past the load's xid %d: not frozen", name, frozen, loaded)
		}
		if pages > 0 && visible == 0 {
			t.Errorf("%s: %d pages, none all-visible: the visibility map was not set", name, pages)
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
	s := &gssync.Settler{Pool: pool, Names: settleNames("gs_settle2_green", "t"), LockTimeout: 100 * time.Millisecond}
	res, err := s.Run(ctx)
	if err != nil || res.Leaves != 1 || res.Retries == 0 {
		t.Fatalf("settle under a held lock: %+v, %v; want 1 leaf after at least one retry", res, err)
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
