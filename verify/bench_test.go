package verify

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/verify/verifytest"
)

// BenchmarkVerify times verify on GREENSWAP_BENCH_ROWS rows (default
// 200000) against its yardstick, one plain hash scan of each table
// (SELECT sum(hashtextextended(t::text, 0)) FROM t), measured in the same
// iteration. Metrics: x_hashscans (verify time / both hash scans, the
// planner free to use parallel workers) and x_serial_hashscans (the scans
// without parallel workers). The target is x_hashscans ≤ 1.5.
// The exact variant compares text output (Options.Exact).
//
//	GREENSWAP_BENCH_ROWS=1000000 go test -run '^$' -bench BenchmarkVerify -benchtime 3x ./verify/
func BenchmarkVerify(b *testing.B) {
	rows := 200000
	if s := os.Getenv("GREENSWAP_BENCH_ROWS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("GREENSWAP_BENCH_ROWS=%q", s)
		}
		rows = n
	}
	pool, dsn := pgtest.NewPool(b)
	ctx := b.Context()
	pgtest.Exec(b, dsn, ordersSeed(rows))
	f, err := verifytest.Setup(ctx, pool, ordersSpec, pgtest.ServerMajor(b))
	if err != nil {
		b.Fatal(err)
	}
	if err := f.Copy(ctx, pool); err != nil {
		b.Fatal(err)
	}
	pgtest.Exec(b, dsn, "VACUUM ANALYZE gs_o2_blue.orders")
	pgtest.Exec(b, dsn, "VACUUM ANALYZE gs_o2_green.orders")
	serial, err := pool.Acquire(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer serial.Release()
	if _, err := serial.Exec(ctx, "SET max_parallel_workers_per_gather = 0"); err != nil {
		b.Fatal(err)
	}
	both := func(serialScan bool) time.Duration {
		var total time.Duration
		for _, t := range []string{"blue", "green"} {
			name := f.Names.Blue
			if t == "green" {
				name = f.Names.Green
			}
			var d time.Duration
			var err error
			if serialScan {
				d, err = HashScan(ctx, serial, name)
			} else {
				d, err = HashScan(ctx, pool, name)
			}
			if err != nil {
				b.Fatal(err)
			}
			total += d
		}
		return total
	}
	both(false) // warm the cache
	for _, cfg := range []struct {
		workers int
		exact   bool
	}{{1, false}, {2, false}, {2, true}} {
		workers := cfg.workers
		name := fmt.Sprintf("workers=%d", workers)
		if cfg.exact {
			name += ",exact"
		}
		b.Run(name, func(b *testing.B) {
			var ratio, ratioSerial float64
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				base, baseSerial := both(false), both(true)
				b.StartTimer()
				res, err := Run(ctx, pool, Target{Names: f.Names, Mapping: f.Mapping, Blue: f.Blue, Green: f.Green}, Options{Workers: workers, Exact: cfg.exact})
				if err != nil || !res.OK || res.Rows != int64(rows) {
					b.Fatalf("verify: %v %+v", err, res)
				}
				ratio += float64(res.Duration) / float64(base)
				ratioSerial += float64(res.Duration) / float64(baseSerial)
			}
			b.ReportMetric(ratio/float64(b.N), "x_hashscans")
			b.ReportMetric(ratioSerial/float64(b.N), "x_serial_hashscans")
		})
	}
}
