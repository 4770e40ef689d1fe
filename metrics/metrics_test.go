package metrics

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/runner"
	"github.com/greenswap/greenswap/spec"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// metricsEnv connects a runner Env to dsn, logging warnings to the test log.
func metricsEnv(t *testing.T, dsn string) *runner.Env {
	t.Helper()
	env, err := runner.Connect(context.Background(), dsn, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(env.Close)
	return env
}

func testLog(t *testing.T) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
}

// metricsTable is a small blue table: id, a nullable email, an int amount.
func metricsTable(rows int) string {
	return fmt.Sprintf(`
		CREATE TABLE orders (id bigserial PRIMARY KEY, email text, amount int NOT NULL);
		INSERT INTO orders (email, amount)
		SELECT CASE WHEN g %% 5 = 0 THEN NULL ELSE 'u' || g || '@x' END, g %% 1000 FROM generate_series(1, %d) g;
		ANALYZE orders;`, rows)
}

// metricsSpec migrates metricsTable to bigint/numeric with a NOT NULL email.
func metricsSpec(t *testing.T, name, mode string) *spec.Spec {
	t.Helper()
	s, err := spec.ParseSpec([]byte(fmt.Sprintf(`
name: %s
table: public.orders
mode: %s
target:
  ddl: |
    CREATE TABLE orders (id bigint PRIMARY KEY, email text NOT NULL, amount numeric(12,2) NOT NULL)
forward:
  email: coalesce(email, 'unknown@invalid')
reverse:
  amount: round(amount)::int
`, name, mode)), "test.yaml", "yaml")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// scrape GETs url and parses the text exposition; it also lints it
// against Prometheus' naming conventions (units, _total on counters only).
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %d %v\n%s", url, resp.StatusCode, err, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parse the scrape: %v\n%s", err, body)
	}
	problems, err := promlint.New(strings.NewReader(string(body))).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, pr := range problems {
		if strings.HasPrefix(pr.Metric, "greenswap_") {
			t.Errorf("promlint: %s: %s", pr.Metric, pr.Text)
		}
	}
	return fams
}

// sample is the value of the series of family name whose labels include
// want (every label of the series when want is nil); ok is false when
// there is no such series.
func sample(fams map[string]*dto.MetricFamily, name string, want map[string]string) (v float64, ok bool) {
	mf := fams[name]
	if mf == nil {
		return 0, false
	}
next:
	for _, m := range mf.GetMetric() {
		got := map[string]string{}
		for _, lp := range m.GetLabel() {
			got[lp.GetName()] = lp.GetValue()
		}
		for k, v := range want {
			if got[k] != v {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Untyped != nil:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

// labelValues lists family name's values of label.
func labelValues(fams map[string]*dto.MetricFamily, name, label string) []string {
	var out []string
	for _, m := range fams[name].GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == label {
				out = append(out, lp.GetValue())
			}
		}
	}
	return out
}

// must is sample that fails the test when the series is missing.
func must(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	v, ok := sample(fams, name, labels)
	if !ok {
		t.Fatalf("the scrape has no %s%v", name, labels)
	}
	return v
}

// recorded is rows_copied as greenswap's state table holds it.
func recorded(t *testing.T, pool *pgxpool.Pool, name string) int64 {
	t.Helper()
	var n int64
	if err := pool.QueryRow(context.Background(), `SELECT rows_copied FROM greenswap.migrations WHERE name = $1`, name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// serveMigration starts the endpoint for migration on a free local port;
// stop ends it and returns Wait's error.
func serveMigration(t *testing.T, env *runner.Env, migration string) (url string, stop func() error) {
	t.Helper()
	reg, err := NewRegistry(env, migration)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := Serve(ctx, "127.0.0.1:0", reg, testLog(t))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	stop = func() error {
		cancel()
		return srv.Wait()
	}
	t.Cleanup(func() { _ = stop() })
	return "http://" + srv.Addr() + "/metrics", stop
}

// A trigger-mode sync seen through /metrics: nothing but scrape_error
// before the migration exists; paused, throttled and the backfill phase
// while paused; synced with every row copied at the end; the rows copied
// always equal to the state table's; the server gone once its context ends.
func TestScrapeFollowsSync(t *testing.T) {
	t.Parallel()
	pool, dsn := pgtest.NewPool(t)
	const rows = 20000
	pgtest.Exec(t, dsn, metricsTable(rows))
	env := metricsEnv(t, dsn)
	ctx := context.Background()
	const name = "m_trigger"
	url, stop := serveMigration(t, env, name)
	mig := map[string]string{"migration": name}

	fams := scrape(t, url)
	if v := must(t, fams, "greenswap_scrape_error", mig); v != 1 {
		t.Errorf("scrape_error before the migration exists = %v, want 1", v)
	}
	if _, ok := sample(fams, "greenswap_backfill_rows_copied", nil); ok {
		t.Error("rows copied reported for a migration that does not exist")
	}
	if _, ok := sample(fams, "go_goroutines", nil); !ok {
		t.Error("the Go runtime collector is missing")
	}

	spec := metricsSpec(t, name, "trigger")
	if _, err := runner.Sync(ctx, env, spec, runner.SyncOptions{StopAfterSetup: true}); err != nil {
		t.Fatal(err)
	}
	if err := runner.Pause(ctx, env, name); err != nil {
		t.Fatal(err)
	}
	fams = scrape(t, url)
	if v := must(t, fams, "greenswap_scrape_error", mig); v != 0 {
		t.Fatalf("scrape_error = %v", v)
	}
	if v := must(t, fams, "greenswap_paused", mig); v != 1 {
		t.Errorf("paused = %v after runner.Pause, want 1", v)
	}
	if v := must(t, fams, "greenswap_state", map[string]string{"migration": name, "state": "syncing"}); v != 1 {
		t.Errorf("state syncing = %v", v)
	}
	if got := labelValues(fams, "greenswap_state", "state"); len(got) != 1 {
		t.Errorf("more than one state: %v", got)
	}

	done := make(chan error, 1)
	go func() {
		_, err := runner.Sync(ctx, env, spec, runner.SyncOptions{BatchSize: 500})
		done <- err
	}()
	waitFor(t, 15*time.Second, "the backfill to hold on the pause", func() bool {
		fams = scrape(t, url)
		v, _ := sample(fams, "greenswap_throttled", mig)
		return v == 1
	})
	if v := must(t, fams, "greenswap_throttle_info", map[string]string{"migration": name, "reason": ReasonPaused}); v != 1 {
		t.Errorf("throttle_info{reason=paused} = %v", v)
	}
	if v := must(t, fams, "greenswap_phase", map[string]string{"migration": name, "phase": "backfill"}); v != 1 {
		t.Errorf("phase backfill = %v (phases %v)", v, labelValues(fams, "greenswap_phase", "phase"))
	}
	if v, want := must(t, fams, "greenswap_backfill_rows_copied", mig), recorded(t, pool, name); int64(v) != want {
		t.Errorf("rows copied while paused: scrape %v, state table %d", v, want)
	}
	if v := must(t, fams, "greenswap_backfill_rows_estimate", mig); v < rows*0.5 {
		t.Errorf("rows estimate %v for %d rows", v, rows)
	}
	if _, ok := sample(fams, "greenswap_stream_lag_bytes", nil); ok {
		t.Error("stream series in trigger mode")
	}

	if err := runner.Resume(ctx, env, name); err != nil {
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
	fams = scrape(t, url)
	if v, want := must(t, fams, "greenswap_backfill_rows_copied", mig), recorded(t, pool, name); int64(v) != want || want != rows {
		t.Errorf("rows copied once synced: scrape %v, state table %d, table %d", v, want, rows)
	}
	for metric, want := range map[string]float64{
		"greenswap_backfill_done": 1, "greenswap_backfill_progress_ratio": 1, "greenswap_paused": 0,
		"greenswap_throttled": 0,
	} {
		if v := must(t, fams, metric, mig); v != want {
			t.Errorf("%s = %v, want %v", metric, v, want)
		}
	}
	if v := must(t, fams, "greenswap_state", map[string]string{"migration": name, "state": "synced"}); v != 1 {
		t.Errorf("state synced = %v", v)
	}
	if v := must(t, fams, "greenswap_phase", map[string]string{"migration": name, "phase": PhaseNone}); v != 1 {
		t.Errorf("phase none = %v (phases %v)", v, labelValues(fams, "greenswap_phase", "phase"))
	}
	if _, ok := sample(fams, "greenswap_throttle_info", nil); ok {
		t.Error("throttle_info present while not throttled")
	}

	// The application's writes after synced show as captured changes.
	pgtest.Exec(t, dsn, `INSERT INTO orders (email, amount) SELECT 'n@x', 1 FROM generate_series(1, 25)`)
	waitFor(t, 10*time.Second, "the captured changes", func() bool {
		// green's counters reach pg_stat after the session ends, within
		// the stats flush interval.
		v, _ := sample(scrape(t, url), "greenswap_changes_captured", mig)
		return v >= 25
	})

	if err := stop(); err != nil {
		t.Fatalf("the server stopped with %v", err)
	}
	if resp, err := http.Get(url); err == nil {
		resp.Body.Close()
		t.Fatal("the endpoint still answers after its context ended")
	}
}

// A logical-mode migration streamed by this process (sync --watch) also
// reports the stream: the slot, its lag in bytes and seconds and the WAL
// it retains.
func TestScrapeLogicalStream(t *testing.T) {
	t.Parallel()
	if pgtest.ServerMajor(t) < 14 {
		t.Skip("logical mode needs PostgreSQL 14+")
	}
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, metricsTable(3000))
	env := metricsEnv(t, dsn)
	ctx := context.Background()
	// Slot names are cluster-wide: unique to this process.
	name := fmt.Sprintf("m_logical_%d", os.Getpid()%100000)
	url, _ := serveMigration(t, env, name)
	mig := map[string]string{"migration": name}
	if _, err := runner.Sync(ctx, env, metricsSpec(t, name, "logical"), runner.SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	fams := scrape(t, url)
	if v := must(t, fams, "greenswap_stream_slot_exists", mig); v != 1 {
		t.Errorf("slot exists = %v", v)
	}
	if _, ok := sample(fams, "greenswap_stream_lag_seconds", nil); ok {
		t.Error("lag in seconds reported while no streamer runs in this process")
	}
	// The backlog from one sample: its bytes, no trend, rate or ETA yet.
	if v := must(t, fams, "greenswap_stream_backlog_bytes", mig); v < 0 {
		t.Errorf("backlog bytes = %v", v)
	}
	if got := labelValues(fams, "greenswap_stream_backlog_trend", "trend"); len(got) != 1 || got[0] != string(runner.TrendUnknown) {
		t.Errorf("trend after one sample: %v", got)
	}
	for _, metric := range []string{"greenswap_stream_backlog_growth_bytes_per_second", "greenswap_stream_catch_up_eta_seconds"} {
		if _, ok := sample(fams, metric, nil); ok {
			t.Errorf("%s reported from a single sample", metric)
		}
	}

	wctx, cancel := context.WithCancel(ctx)
	watched := make(chan error, 1)
	go func() {
		watched <- runner.WatchSync(wctx, env, name, 100*time.Millisecond, func(runner.SyncProgress) {})
	}()
	defer func() {
		cancel()
		if err := <-watched; err != nil {
			t.Errorf("watch: %v", err)
		}
	}()
	pgtest.Exec(t, dsn, `INSERT INTO orders (email, amount) SELECT 'n@x', 1 FROM generate_series(1, 40)`)
	waitFor(t, 30*time.Second, "the stream to apply the inserts", func() bool {
		fams = scrape(t, url)
		v, _ := sample(fams, "greenswap_stream_keys_applied_total", mig)
		return v >= 40
	})
	for _, metric := range []string{"greenswap_stream_lag_seconds", "greenswap_stream_lag_bytes", "greenswap_slot_wal_retained_bytes",
		"greenswap_stream_keys_per_second", "greenswap_stream_transactions_total", "greenswap_stream_reconnects_total"} {
		if v := must(t, fams, metric, mig); v < 0 {
			t.Errorf("%s = %v", metric, v)
		}
	}
	if v := must(t, fams, "greenswap_stream_active", mig); v != 1 {
		t.Errorf("stream active = %v while this process streams", v)
	}
	// Samples over more than a second (the watch's reports and the
	// scrapes): a trend, a growth rate and, caught up, an ETA of 0.
	waitFor(t, 30*time.Second, "the backlog to read as caught up", func() bool {
		fams = scrape(t, url)
		got := labelValues(fams, "greenswap_stream_backlog_trend", "trend")
		return len(got) == 1 && got[0] == string(runner.TrendCaughtUp)
	})
	if v := must(t, fams, "greenswap_stream_catch_up_eta_seconds", mig); v != 0 {
		t.Errorf("catch-up ETA caught up = %v", v)
	}
	must(t, fams, "greenswap_stream_backlog_growth_bytes_per_second", mig)
	if v := must(t, fams, "greenswap_stream_backlog_bytes", mig); v > 64<<20 {
		t.Errorf("backlog caught up = %v bytes", v)
	}
	if mf := fams["greenswap_stream_keys_applied_total"]; mf.GetType() != dto.MetricType_COUNTER {
		t.Errorf("keys applied is a %s", mf.GetType())
	}
	if v, want := must(t, fams, "greenswap_backfill_rows_copied", mig), recorded(t, pool, name); int64(v) != want {
		t.Errorf("rows copied: scrape %v, state table %d", v, want)
	}
}

// A read that fails (here: it cannot finish within the timeout) reports
// greenswap_scrape_error 1 and none of the figures a successful read gave.
func TestScrapeErrorDropsFigures(t *testing.T) {
	t.Parallel()
	_, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, metricsTable(100))
	env := metricsEnv(t, dsn)
	if _, err := runner.Sync(context.Background(), env, metricsSpec(t, "m_err", "trigger"), runner.SyncOptions{StopAfterSetup: true}); err != nil {
		t.Fatal(err)
	}
	c := NewCollector(env, "m_err")
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	gather := func() map[string]*dto.MetricFamily {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		fams := map[string]*dto.MetricFamily{}
		for _, mf := range mfs {
			fams[mf.GetName()] = mf
		}
		return fams
	}
	fams := gather()
	if v := must(t, fams, "greenswap_scrape_error", nil); v != 0 {
		t.Fatalf("scrape_error = %v", v)
	}
	must(t, fams, "greenswap_backfill_rows_copied", nil)
	c.Timeout = time.Nanosecond
	fams = gather()
	if v := must(t, fams, "greenswap_scrape_error", nil); v != 1 {
		t.Errorf("scrape_error = %v after a timed-out read, want 1", v)
	}
	for name := range fams {
		if name != "greenswap_scrape_error" && name != "greenswap_scrape_duration_seconds" {
			t.Errorf("a failed read still reports %s", name)
		}
	}
}

// A taken or malformed address is bad input (exit 2), reported at once.
func TestServeBadAddressExits2(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for addr, want := range map[string]string{
		ln.Addr().String(): "address already in use",
		"9187":             "missing port",
		"256.1.1.1:9187":   "cannot listen",
	} {
		srv, err := Serve(ctx, addr, prometheus.NewRegistry(), testLog(t))
		if err == nil {
			cancel()
			srv.Wait()
			t.Fatalf("%s: Serve succeeded", addr)
		}
		if exitcode.Of(err) != exitcode.BadInput || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: exit %d, %v; want exit 2 containing %q", addr, exitcode.Of(err), err, want)
		}
	}
}

func TestThrottleReason(t *testing.T) {
	for in, want := range map[string]string{
		"":                                    "",
		"paused (greenswap resume orders_v2)": ReasonPaused,
		"replica standby1 replay lag 12.3s > 10s":         ReasonReplica,
		"row locks held by the application":               ReasonRowLocks,
		"application sessions waited on backfill locks":   ReasonLockWaits,
		"something a later version holds the backfill on": ReasonOther,
	} {
		if got := ThrottleReason(in); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}

// A backlog that will never catch up at the current rates exports its ETA
// as +Inf (alertable), and the trend as a label of a fixed set.
func TestBacklogNeverIsInf(t *testing.T) {
	t.Parallel()
	age := 40.0
	p := &runner.SyncProgress{Migration: "m", State: "synced", Stream: &runner.StreamProgress{Exists: true},
		StreamBacklog: &runner.StreamBacklog{Bytes: 300 << 20, Seconds: &age, Trend: runner.TrendGrowing, GrowthBytesPerSec: 2 << 20, Never: true}}
	got := gaugesOf(p)
	want := map[string]float64{
		"greenswap_stream_backlog_bytes": 300 << 20, "greenswap_stream_backlog_seconds": 40,
		"greenswap_stream_backlog_growth_bytes_per_second": 2 << 20, "greenswap_stream_backlog_trend{growing}": 1,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
	if v, ok := got["greenswap_stream_catch_up_eta_seconds"]; !ok || !math.IsInf(v, 1) {
		t.Errorf("catch-up ETA = %v (present %v), want +Inf", v, ok)
	}
}

// TestGuardGauges: a throttle reason from the circuit breaker is exported
// as the guard class of throttle_info and, per tripped signal, its value
// and bound.
func TestGuardGauges(t *testing.T) {
	t.Parallel()
	p := &runner.SyncProgress{Migration: "m", State: "syncing",
		Throttle: "guard: lock_waits=3 > 1 (baseline 0): 3 sessions wait; probe_cmd=22 > 0 (baseline 0): \"curl -f x\" exited 22: 503"}
	got := gaugesOf(p)
	want := map[string]float64{
		"greenswap_throttle_info{guard}": 1, "greenswap_guard_tripped{lock_waits}": 1, "greenswap_guard_signal_value{lock_waits}": 3,
		"greenswap_guard_signal_bound{lock_waits}": 1, "greenswap_guard_tripped{probe_cmd}": 1, "greenswap_guard_signal_value{probe_cmd}": 22,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
}

// TestTableGauges: a migration of several tables has each table's backfill
// series, labelled table, beside the totals (whose names and labels stay
// as they were).
func TestTableGauges(t *testing.T) {
	t.Parallel()
	p := &runner.SyncProgress{Migration: "m", State: "syncing", RowsCopied: 150, RowsEstimate: 400, Percent: 37.5,
		Tables: []runner.TableProgress{
			{Table: "public.orders", RowsCopied: 100, RowsEstimate: 100, Percent: 100, Done: true},
			{Table: "public.order_items", RowsCopied: 50, RowsEstimate: 300, Percent: 50.0 / 3},
		}}
	got := gaugesOf(p)
	want := map[string]float64{
		"greenswap_backfill_rows_copied": 150, "greenswap_backfill_rows_estimate": 400,
		"greenswap_table_backfill_rows_copied{public.orders}": 100, "greenswap_table_backfill_done{public.orders}": 1,
		"greenswap_table_backfill_rows_copied{public.order_items}": 50, "greenswap_table_backfill_rows_estimate{public.order_items}": 300,
		"greenswap_table_backfill_done{public.order_items}": 0,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
	if r := got["greenswap_table_backfill_progress_ratio{public.order_items}"]; math.Abs(r-1.0/6) > 1e-9 {
		t.Errorf("order_items progress ratio %v, want 1/6", r)
	}
}

// gaugesOf is collectProgress's gauges of p by name{label values}.
func gaugesOf(p *runner.SyncProgress) map[string]float64 {
	got := map[string]float64{}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		name := d.String()
		name = name[strings.Index(name, `"`)+1:]
		name = name[:strings.Index(name, `"`)]
		if len(labels) > 0 {
			name += "{" + strings.Join(labels, ",") + "}"
		}
		got[name] = v
	}
	collectProgress(p, gauge, func(*prometheus.Desc, float64) {})
	return got
}
