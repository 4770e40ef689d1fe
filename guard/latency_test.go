package guard_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/guard"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/spec"
)

// TestLatencyRatioOpensAndCloses needs pg_stat_statements preloaded, so it
// starts a cluster of its own. The app's statements on orders run fast
// for the baseline, then slow (pg_sleep in the statement): latency_ratio
// opens, naming the mean against the bound; fast again, it closes.
// greenswap's own statements (naming the version schemas) are not counted.
func TestLatencyRatioOpensAndCloses(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, dsn := pgtest.OwnPool(t, pgtest.Options{Settings: map[string]string{"shared_preload_libraries": "pg_stat_statements"}}, "latency")
	pgtest.Exec(t, dsn, `CREATE EXTENSION pg_stat_statements;
		CREATE TABLE orders (id int PRIMARY KEY, v int); INSERT INTO orders SELECT g, g FROM generate_series(1, 100) g;
		CREATE SCHEMA gs_m_blue; CREATE TABLE gs_m_blue.orders (id int)`)
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	var slow atomicDur
	stop := make(chan struct{})
	done := make(chan struct{})
	app := connAs(t, dsn, "app")
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_, _ = app.Exec(ctx, `SELECT v FROM orders WHERE id = $1 AND pg_sleep($2) IS NOT NULL`, i%100+1, slow.get().Seconds())
		}
	}()
	defer func() { close(stop); <-done }()
	time.Sleep(500 * time.Millisecond) // the baseline's cumulative mean has calls
	b := &guard.Breaker{S: &guard.Sampler{Q: pool, AppTable: "orders", Exclude: "gs_m_",
		Opts: only(spec.GuardOptions{LatencyRatio: 3, Every: spec.Duration{Duration: 200 * time.Millisecond}})}}
	if r, err := b.Hold(ctx); err != nil || r != "" {
		t.Fatalf("baseline: Hold = %q, %v; want closed", r, err)
	}
	// greenswap's slow statements on its own schema do not count.
	go func() { _, _ = pool.Exec(ctx, `SELECT count(*) FROM gs_m_blue.orders, pg_sleep(3)`) }()
	slow.set(5 * time.Millisecond)
	r := waitReason(t, b, "latency_ratio to open", has("guard: latency_ratio="))
	if !strings.Contains(r, "ms > ") || !strings.Contains(r, "calls on orders") {
		t.Errorf("reason %q does not carry the mean, the bound and the table", r)
	}
	slow.set(0)
	waitReason(t, b, "latency_ratio to close", closed)
}

type atomicDur struct{ v atomic.Int64 }

func (a *atomicDur) get() time.Duration  { return time.Duration(a.v.Load()) }
func (a *atomicDur) set(d time.Duration) { a.v.Store(int64(d)) }
