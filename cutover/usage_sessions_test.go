package cutover

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// The watch must not flag the caller's own pool connections as clients of
// blue when another part of the process (a `sync --watch` in the same
// process) uses the pool meanwhile: a connection busy when the caller
// listed its own sessions, that then ran a sample (whose text names the
// blue schema), was flagged by the next sample run in another connection.
// Seen as a flaky refusal in TestFeedConformance/logical under load.
func TestWatchUsageIgnoresItsOwnSamples(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	n := shadow.NamesFor("uo", spec.QualifiedName{Schema: "public", Name: "acc"})
	pgtest.Exec(t, dsn, `CREATE SCHEMA gs_uo_blue; CREATE TABLE gs_uo_blue.acc (id int PRIMARY KEY)`)
	for _, s := range usageInstallSQL(n, "postgres", usageObjects{}) {
		pgtest.Exec(t, dsn, s)
	}
	// Two connections exist; one is busy elsewhere while the own sessions
	// are listed, as the watcher's would be.
	busy, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	idle, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	idle.Release()
	own := OwnSessions(ctx, pool)
	busy.Release()

	// The other user of the pool: takes whichever connection is idle, for
	// a moment, again and again, so the samples cannot all find the same one.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if c, err := pool.Acquire(ctx); err == nil {
				c.Exec(ctx, `SELECT pg_catalog.pg_sleep(0.015)`)
				c.Release()
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	var sampler int32
	seen, err := WatchUsage(ctx, pool, n, WatchOptions{Period: 2 * time.Second, Interval: 10 * time.Millisecond,
		Since: time.Now().Add(-time.Minute), Own: own, Sampler: func(pid int32) { sampler = pid }})
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) > 0 {
		t.Fatalf("own pool connections flagged as clients of blue (own %v, sampler %d): %v", own, sampler, seen)
	}
	if sampler == 0 {
		t.Fatal("the sampling session's PID was not reported")
	}
	// The sampling session's trace is what a later check would see: it
	// names blue's schema, so only its PID keeps it out.
	cs, err := Usage(ctx, pool, n, time.Now().Add(-time.Minute), own)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if c.PID != sampler {
			t.Errorf("unexpected client %v", c)
		}
	}
}
