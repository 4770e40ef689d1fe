package main

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// pgbenchFor returns the server's pgbench pointed at a fresh database.
func pgbenchFor(t *testing.T) (pgbenchTool, string, string) {
	t.Helper()
	dsn := pgtest.NewDB(t)
	dir, err := pgtest.FindBinDir()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "pgbench")
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("no pgbench in the server's bindir %s", dir)
	}
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatal(err)
	}
	return pgbenchTool{bin: bin, host: u.Hostname(), port: port, tmp: t.TempDir()}, strings.TrimPrefix(u.Path, "/"), dsn
}

// The latency figures come from pgbench's per-transaction log: at a fixed
// rate the bench must read as many transactions as pgbench ran, at that
// rate, with ordered statistics.
func TestPgbenchFixedRateLog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pb, dbname, _ := pgbenchFor(t)
	if err := pb.init(ctx, dbname, 1); err != nil {
		t.Fatal(err)
	}
	r, err := pb.fixedRate(ctx, dbname, 100, 2*time.Second, "test")
	if err != nil {
		t.Fatal(err)
	}
	l := r.lat
	if l.n < 100 || l.n > 300 {
		t.Errorf("read %d logged transactions of a 2 s run at 100 tx/s, want about 200", l.n)
	}
	if int64(l.n) != r.txns {
		t.Errorf("read %d transactions from the log, pgbench reported %d", l.n, r.txns)
	}
	if got := l.rate(); got < 50 || got > 150 {
		t.Errorf("achieved rate from the log %.0f tx/s, want about 100", got)
	}
	if l.mean <= 0 || l.p99 < l.mean || l.max < l.p99 {
		t.Errorf("latency stats out of order: mean %s, p99 %s, max %s", l.mean, l.p99, l.max)
	}
	if l.failed != 0 {
		t.Errorf("%d failed transactions", l.failed)
	}
	if files, _ := filepath.Glob(filepath.Join(pb.tmp, "pgbench_test.*")); len(files) != 0 {
		t.Errorf("per-transaction logs left behind: %v", files)
	}
}

// The apply and write rates count the clients' commits in pgbench_history:
// a background writer must commit there, and stopping it reports no error.
func TestPgbenchWriterCommits(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pb, dbname, dsn := pgbenchFor(t)
	if err := pb.init(ctx, dbname, 1); err != nil {
		t.Fatal(err)
	}
	w, err := pb.start(ctx, dbname, "simple", 2)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if msg := w.stop(); msg != "" {
		t.Errorf("stop reported client errors: %s", msg)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int64
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pgbench_history").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Error("the writer committed nothing to pgbench_history")
	}
	r, err := pb.tps(ctx, dbname, "prepared", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r.tps <= 0 || r.txns <= 0 {
		t.Errorf("pgbench -T 1 parsed as %.0f tx/s, %d transactions", r.tps, r.txns)
	}
}

// The keys counter restarts with every streamer (the sync's, then each
// sync --watch): its increase over a window must count a drop as a restart
// and skip the samples no streamer served.
func TestWindowOfCounterRestart(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1_700_000_000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	samples := []loadSample{
		{t: at(0), lag: 100, keys: 0, commits: 1000},
		{t: at(1), lag: 300, keys: 100, commits: 1110},
		{t: at(2), lag: 200, keys: 200, commits: 1220},
		{t: at(3), lag: 400, keys: -1, commits: 1330}, // between two watches
		{t: at(4), lag: -1, keys: 0, commits: 1440},   // no slot: not a lag sample
		{t: at(5), lag: 500, keys: 50, commits: 1500},
		{t: at(9), lag: 9999, keys: 1e6, commits: 9999}, // outside the window
	}
	w, err := windowOf(samples, at(0), at(5))
	if err != nil {
		t.Fatal(err)
	}
	if w.samples != 6 {
		t.Errorf("%d samples in the window, want 6", w.samples)
	}
	if want := 250.0 / 5; w.applyPerSec != want {
		t.Errorf("apply %.1f keys/s, want %.1f (100 + 100, a restart at 0, then 50, over 5 s)", w.applyPerSec, want)
	}
	if want := 500.0 / 5; w.writePerSec != want {
		t.Errorf("writes %.1f tx/s, want %.1f", w.writePerSec, want)
	}
	if w.lagMedian != 300 || w.lagMax != 500 || w.lagFirst != 100 || w.lagLast != 500 {
		t.Errorf("lag median %.0f max %.0f first %.0f last %.0f, want 300 500 100 500", w.lagMedian, w.lagMax, w.lagFirst, w.lagLast)
	}
	if _, err := windowOf(samples, at(6), at(8)); err == nil {
		t.Error("a window with no samples was measured")
	}
}

// A server bindir without pgbench (the npm builds of other majors) prints
// every pgbench row as n/a, naming the bindir, and runs nothing.
func TestPgbenchRowsWithoutPgbench(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b := &bench{res: &Results{}, cluster: &pgtest.Cluster{BinDir: dir}, tmp: t.TempDir(), start: time.Now()}
	f := b.pgbenchFigures()
	b.runPgbench(context.Background(), f)
	if len(b.res.Figures) != len(f.all()) {
		t.Fatalf("%d rows in the table, want the %d pgbench rows", len(b.res.Figures), len(f.all()))
	}
	for _, x := range b.res.Figures {
		if x.Status != "n/a" || x.Value != "n/a (no pgbench)" || !strings.Contains(x.Note, dir) {
			t.Errorf("%s: status %q, value %q, note %q; want n/a (no pgbench) naming %s", x.Name, x.Status, x.Value, x.Note, dir)
		}
	}
}

// A window in which no scrape returned the counter has no apply rate: an
// error, never 0 keys/s.
func TestWindowOfWithoutCounter(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1_700_000_000, 0)
	samples := []loadSample{
		{t: t0, lag: 100, keys: -1, commits: 10},
		{t: t0.Add(time.Second), lag: 100, keys: 7, commits: 20},
		{t: t0.Add(2 * time.Second), lag: 100, keys: -1, commits: 30},
	}
	if w, err := windowOf(samples, t0, t0.Add(2*time.Second)); err == nil {
		t.Errorf("measured %.1f keys/s from a single counter reading", w.applyPerSec)
	}
}
