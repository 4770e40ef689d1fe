// Package metrics exposes a migration's figures to Prometheus: the metric
// names (all prefixed greenswap_, all labelled with the migration) and the
// HTTP endpoint that serves them (`greenswap sync --metrics-addr`).
//
// Every scrape reads the figures afresh from greenswap's state table
// through runner.ReadSyncProgress, the read path behind `sync --watch` and
// `status`, so a scrape tells what the database records, in trigger and
// logical mode alike, and never repeats figures it could not read: when the
// read fails, the scrape carries greenswap_scrape_error 1 and nothing else
// about the migration. See README.md in this directory.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/cutover"
	"github.com/greenswap/greenswap/guard"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/runner"
)

// DefaultTimeout bounds one scrape's read of the database. Prometheus'
// default scrape timeout is 10s; staying well below it means a slow or
// unreachable database shows up as greenswap_scrape_error 1 rather than as
// a failed scrape with no figures at all.
const DefaultTimeout = 2 * time.Second

// Throttle reason classes, the values of greenswap_throttle_info's reason
// label. The runner's reasons are free text with figures in them (a
// replica's name and lag); a label needs a small fixed set, or every change
// of the figure would start a new series.
const (
	ReasonPaused    = "paused"      // greenswap pause NAME
	ReasonReplica   = "replica_lag" // a standby replays too far behind
	ReasonRowLocks  = "row_locks"   // a batch could not lock rows the application holds
	ReasonLockWaits = "lock_waits"  // application sessions queued behind a batch
	ReasonGuard     = "guard"       // the circuit breaker: a health signal past its bound (greenswap_guard_tripped says which)
	ReasonOther     = "other"       // a reason this version does not know
)

// PhaseNone is the phase label once nothing is left to do (the runner
// records the empty string, which Prometheus would treat as no label).
const PhaseNone = "none"

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("greenswap_"+name, help, append([]string{"migration"}, labels...), nil)
}

// The metric descriptions, in the order of README.md's table.
var (
	descScrapeError    = desc("scrape_error", "1 if this scrape could not read the migration's figures from the database (they are then left out), else 0.")
	descScrapeDuration = desc("scrape_duration_seconds", "How long this scrape's read of the migration's figures took.")
	descState          = desc("state", "The migration's state (planned, syncing, synced, cut_over, finalized, rolled_back): 1 for the current one.", "state")
	descPhase          = desc("phase", "The migration's phase within its state (adopt, create-green, backfill, indexes, analyze, enable-reverse; none once synced): 1 for the current one.", "phase")
	descRowsCopied     = desc("backfill_rows_copied", "Rows the backfill has copied into green, as checkpointed in greenswap.migrations.rows_copied.")
	descRowsEstimate   = desc("backfill_rows_estimate", "Estimated rows to copy (at least the rows copied).")
	descProgress       = desc("backfill_progress_ratio", "Share of the backfill done, 0 to 1 (1 once it is done).")
	descRowsPerSec     = desc("backfill_rows_per_second", "The backfill's recent copy rate (0 while throttled or done).")
	descBatchSize      = desc("backfill_batch_size_rows", "Rows per backfill batch (adaptive unless --batch-size).")
	descDone           = desc("backfill_done", "1 once the backfill has copied every row, else 0.")
	descPaused         = desc("paused", "1 while the migration is paused (greenswap pause), else 0.")
	descThrottled      = desc("throttled", "1 while the backfill is held back (see greenswap_throttle_info for why), else 0.")
	descThrottleInfo   = desc("throttle_info", "Why the backfill is held back, present only while it is: reason is paused, replica_lag, row_locks, lock_waits, guard or other.", "reason")
	descGuardTripped   = desc("guard_tripped", "Present only while the circuit breaker holds the backfill: 1 per tripped signal (rollback_rate, deadlocks, lock_waits, lock_wait_time, latency_ratio, replica_lag, probe_sql, probe_cmd).", "signal")
	descGuardValue     = desc("guard_signal_value", "While the breaker is open: the tripped signal's value (a share, a rate per second, sessions, seconds, ms, or a probe's exit status).", "signal")
	descGuardBound     = desc("guard_signal_bound", "While the breaker is open: the bound the tripped signal is past, in its value's unit (baseline applied).", "signal")
	descCaptured       = desc("changes_captured", "Estimated changes the sync (triggers, or the stream in logical mode) has applied to green: green's insert, update and delete counters minus the rows copied.")

	// Logical mode only (absent in trigger mode).
	descSlotExists  = desc("stream_slot_exists", "Logical mode: 1 if the migration's replication slot exists, else 0.")
	descStreamAct   = desc("stream_active", "Logical mode: 1 while a greenswap (this process or another) streams the slot, else 0.")
	descRetired     = desc("stream_retired", "Logical mode: 1 once a cutover handed blue to green over to the sync triggers (the slot is then dropped), else 0.")
	descLagBytes    = desc("stream_lag_bytes", "Logical mode: WAL between the server's current position and what green is current up to.")
	descRetained    = desc("slot_wal_retained_bytes", "Logical mode: WAL the replication slot holds back on the server (it fills the disk if nothing streams).")
	descLagSeconds  = desc("stream_lag_seconds", "Logical mode, when this process streams: age of the oldest change received but not yet applied.")
	descKeysPerSec  = desc("stream_keys_per_second", "Logical mode, when this process streams: the apply rate in keys per second.")
	descKeysApplied = desc("stream_keys_applied_total", "Logical mode, when this process streams: keys applied to green by this process's streamer.")
	descTxns        = desc("stream_transactions_total", "Logical mode, when this process streams: transactions applied by this process's streamer.")
	descReconnects  = desc("stream_reconnects_total", "Logical mode, when this process streams: replication connections this process's streamer re-established.")
	descBacklog     = desc("stream_backlog_bytes", "Logical mode: WAL between the stream's confirmed position (green is current up to it) and the server's WAL insert position.")
	descBacklogSecs = desc("stream_backlog_seconds", "Logical mode: estimate of how far behind green is in time (how long ago the WAL stood at the stream's confirmed position); absent when unknown.")
	descGrowth      = desc("stream_backlog_growth_bytes_per_second", "Logical mode: change of the backlog over the last window, WAL rate minus apply rate; positive while the stream falls behind; absent until two samples span a second.")
	descCatchUp     = desc("stream_catch_up_eta_seconds", "Logical mode: time until the stream has caught up at the current rates: 0 when it has, +Inf when it will not (the backlog grows or stands still); absent when unknown.")
	descTrend       = desc("stream_backlog_trend", "Logical mode: which way the backlog moves, 1 for the current trend: unknown, caught_up, shrinking, steady or growing.", "trend")

	// Several tables: one series per table (the series above are the totals).
	descTableCopied   = desc("table_backfill_rows_copied", "Several tables: rows the backfill has copied into this table's green.", "table")
	descTableEstimate = desc("table_backfill_rows_estimate", "Several tables: estimated rows of this table to copy (at least the rows copied).", "table")
	descTableProgress = desc("table_backfill_progress_ratio", "Several tables: share of this table's backfill done, 0 to 1.", "table")
	descTableDone     = desc("table_backfill_done", "Several tables: 1 once this table's backfill is done, else 0.", "table")

	// Shape telemetry (cutover/shapes.go): one sample per scrape.
	descShapeSessions = desc("shape_sessions", "Client sessions seen on the shape (app, blue, green, blue|green) of the table in this scrape's sample of pg_locks (greenswap's own by application_name left out).", "table", "shape")
	descShapeClients  = desc("shape_client_sessions", "Client sessions of this application_name seen on the shape of the table in this scrape's sample.", "table", "shape", "application_name")
	descShapeSighted  = desc("shape_sightings_total", "Client sessions seen on the shape of the table, summed over this process's scrapes; kind is read or write.", "table", "shape", "kind")
	descShapeShare    = desc("shape_write_share", "The shape's share of the client write sightings over every table, over this process's scrapes (0 to 1); absent before a write is seen.", "shape")
	descShapeRows     = desc("shape_rows_written_total", "The table's n_tup_ins+n_tup_upd+n_tup_del (pg_stat_user_tables): rows written by any path; with triggers each client write counts on both blue and green.", "table", "shape")

	allDescs = []*prometheus.Desc{
		descTableCopied, descTableEstimate, descTableProgress, descTableDone,
		descShapeSessions, descShapeClients, descShapeSighted, descShapeShare, descShapeRows,
		descScrapeError, descScrapeDuration, descState, descPhase, descRowsCopied, descRowsEstimate, descProgress,
		descRowsPerSec, descBatchSize, descDone, descPaused, descThrottled, descThrottleInfo, descGuardTripped, descGuardValue, descGuardBound, descCaptured,
		descSlotExists, descStreamAct, descRetired, descLagBytes, descRetained, descLagSeconds, descKeysPerSec,
		descKeysApplied, descTxns, descReconnects, descBacklog, descBacklogSecs, descGrowth, descCatchUp, descTrend,
	}
)

// Collector is a prometheus.Collector for one migration: each Collect
// reads the migration's figures from the database (bounded by Timeout).
type Collector struct {
	migration string
	read      func(ctx context.Context) (*runner.SyncProgress, error)
	log       zerolog.Logger
	// Timeout bounds each scrape's read (DefaultTimeout when zero). Set it
	// before the collector is registered.
	Timeout time.Duration

	// shapes takes one sample of the sessions on the migration's shapes
	// (nil: none to take).
	shapes func(ctx context.Context) (*cutover.ShapeWatch, error)

	mu      sync.Mutex
	lastErr string // the last read error logged, so a failing database is logged once, not per scrape
	// sighted sums the shape sightings of every scrape (shape_sightings_total).
	sighted map[sightKey]int
}

type sightKey struct{ table, shape, kind string }

// NewCollector returns the collector of migration's figures, read through
// env. Read errors are logged on env.Log once per distinct error.
func NewCollector(env *runner.Env, migration string) *Collector {
	return &Collector{
		migration: migration,
		read: func(ctx context.Context) (*runner.SyncProgress, error) {
			return runner.ReadSyncProgress(ctx, env, migration)
		},
		shapes: func(ctx context.Context) (*cutover.ShapeWatch, error) {
			return runner.ReadShapes(ctx, env, migration, 0, 0)
		},
		log:     env.Log,
		sighted: map[sightKey]int{},
	}
}

// Describe sends every metric the collector may emit; which of them a
// scrape carries depends on the mode and on whether the read succeeded.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

// Collect reads the migration's figures and sends them.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	// Collect gets no context from the registry: the timeout is what keeps
	// a scrape (and the server's shutdown, which waits for it) bounded.
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	t0 := time.Now()
	p, err := c.read(ctx)
	took := time.Since(t0).Seconds()
	c.noteErr(err)
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append([]string{c.migration}, labels...)...)
	}
	gauge(descScrapeDuration, took)
	if err != nil {
		gauge(descScrapeError, 1)
		return
	}
	gauge(descScrapeError, 0)
	collectProgress(p, gauge, func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, c.migration)
	})
	c.collectShapes(ctx, ch)
}

// collectShapes takes this scrape's shape sample. A failed sample leaves
// the shape series out of the scrape (and is logged once), the others stand.
func (c *Collector) collectShapes(ctx context.Context, ch chan<- prometheus.Metric) {
	if c.shapes == nil {
		return
	}
	w, err := c.shapes(ctx)
	if err != nil {
		c.noteErr(fmt.Errorf("shape sample: %w", err))
		return
	}
	if w == nil {
		return
	}
	send := func(d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, t, v, append([]string{c.migration}, labels...)...)
	}
	type tableShape struct{ table, shape string }
	sessions := map[tableShape]int{}
	byApp := map[[3]string]int{}
	for _, r := range w.RowsAfter {
		sessions[tableShape{r.Table, r.Shape}] += 0
		send(descShapeRows, prometheus.CounterValue, float64(r.Rows), r.Table, r.Shape)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range w.Sightings {
		if s.Greenswap {
			continue
		}
		sessions[tableShape{s.Table, s.Shape}]++
		byApp[[3]string{s.Table, s.Shape, s.Application}]++
		kind := "read"
		if s.Writing {
			kind = "write"
		}
		c.sighted[sightKey{s.Table, s.Shape, kind}]++
	}
	for k, n := range sessions {
		send(descShapeSessions, prometheus.GaugeValue, float64(n), k.table, k.shape)
	}
	for k, n := range byApp {
		send(descShapeClients, prometheus.GaugeValue, float64(n), k[0], k[1], k[2])
	}
	writes, total := map[string]int{}, 0
	for k, n := range c.sighted {
		send(descShapeSighted, prometheus.CounterValue, float64(n), k.table, k.shape, k.kind)
		if k.kind == "write" {
			writes[k.shape] += n
			total += n
		}
	}
	for sh, n := range writes {
		send(descShapeShare, prometheus.GaugeValue, float64(n)/float64(total), sh)
	}
}

// collectProgress turns one SyncProgress into samples.
func collectProgress(p *runner.SyncProgress, gauge func(*prometheus.Desc, float64, ...string), counter func(*prometheus.Desc, float64)) {
	phase := p.Phase
	if phase == "" {
		phase = PhaseNone
	}
	gauge(descState, 1, string(p.State))
	gauge(descPhase, 1, phase)
	gauge(descRowsCopied, float64(p.RowsCopied))
	gauge(descRowsEstimate, float64(p.RowsEstimate))
	gauge(descProgress, min(max(p.Percent/100, 0), 1))
	gauge(descRowsPerSec, p.RowsPerSec)
	gauge(descBatchSize, float64(p.BatchSize))
	gauge(descDone, bit(p.Done))
	gauge(descPaused, bit(p.Paused))
	gauge(descThrottled, bit(p.Throttle != ""))
	if p.Throttle != "" {
		gauge(descThrottleInfo, 1, ThrottleReason(p.Throttle))
	}
	for _, tr := range guard.ParseReason(p.Throttle) {
		gauge(descGuardTripped, 1, tr.Signal)
		gauge(descGuardValue, tr.Value, tr.Signal)
		gauge(descGuardBound, tr.Bound, tr.Signal)
	}
	gauge(descCaptured, float64(p.Captured))
	for _, t := range p.Tables { // several tables: each one beside the totals
		gauge(descTableCopied, float64(t.RowsCopied), t.Table)
		gauge(descTableEstimate, float64(t.RowsEstimate), t.Table)
		gauge(descTableProgress, min(max(t.Percent/100, 0), 1), t.Table)
		gauge(descTableDone, bit(t.Done), t.Table)
	}
	s := p.Stream
	if s == nil { // trigger mode
		return
	}
	gauge(descSlotExists, bit(s.Exists))
	gauge(descStreamAct, bit(s.Active))
	gauge(descRetired, bit(s.Retired))
	gauge(descLagBytes, float64(s.LagBytes))
	gauge(descRetained, float64(s.RetainedBytes))
	if b := p.StreamBacklog; b != nil {
		gauge(descBacklog, float64(b.Bytes))
		gauge(descTrend, 1, string(b.Trend))
		if b.Seconds != nil {
			gauge(descBacklogSecs, *b.Seconds)
		}
		if b.Trend != runner.TrendUnknown {
			gauge(descGrowth, b.GrowthBytesPerSec)
		}
		switch {
		case b.ETASeconds != nil:
			gauge(descCatchUp, *b.ETASeconds)
		case b.Never:
			gauge(descCatchUp, math.Inf(1))
		}
	}
	if !s.Local {
		// Only the process that streams knows these; another process's
		// figures are not in the database, and a 0 would read as "no lag".
		return
	}
	gauge(descLagSeconds, s.LagSeconds)
	gauge(descKeysPerSec, s.KeysPerSec)
	counter(descKeysApplied, float64(s.Keys))
	counter(descTxns, float64(s.Txns))
	counter(descReconnects, float64(s.Reconnects))
}

// noteErr logs a read error once per distinct message (a scrape every 15s
// against a database that is down would otherwise fill the log), and
// forgets it once a read succeeds. A migration that does not exist yet is
// expected for a moment at the start of a sync, so it is only a debug line.
func (c *Collector) noteErr(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil {
		c.lastErr = ""
		return
	}
	msg := err.Error()
	if msg == c.lastErr {
		return
	}
	c.lastErr = msg
	ev := c.log.Warn()
	if errors.Is(err, state.ErrNotFound) {
		ev = c.log.Debug()
	}
	ev.Err(err).Str("migration", c.migration).Msg("metrics: cannot read the migration's figures; this scrape reports greenswap_scrape_error 1")
}

func bit(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// ThrottleReason maps the runner's free-text throttle reason to the fixed
// reason label of greenswap_throttle_info ("" for not throttled).
func ThrottleReason(s string) string {
	switch {
	case s == "":
		return ""
	case strings.HasPrefix(s, guard.ReasonPrefix):
		return ReasonGuard
	case strings.HasPrefix(s, "paused"):
		return ReasonPaused
	case strings.HasPrefix(s, "replica "):
		return ReasonReplica
	case strings.HasPrefix(s, "row locks"):
		return ReasonRowLocks
	case strings.Contains(s, "waited on backfill locks"):
		return ReasonLockWaits
	}
	return ReasonOther
}

// NewRegistry returns a registry of its own (never the global one, so that
// nothing registered elsewhere in the process leaks into the scrape and
// tests can build as many as they like) holding migration's collector and
// the Go runtime and process collectors (greenswap's own memory and CPU).
func NewRegistry(env *runner.Env, migration string) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	for _, c := range []prometheus.Collector{
		NewCollector(env, migration),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics collector: %w", err)
		}
	}
	return reg, nil
}

// Server is a running metrics endpoint.
type Server struct {
	addr string
	done chan struct{}
	err  error // set before done is closed
}

// shutdownTimeout bounds how long Serve's shutdown waits for scrapes in
// flight; each is itself bounded by its collector's timeout.
const shutdownTimeout = 5 * time.Second

// Serve listens on addr (host:port; ":9187" is every interface) and serves
// g's metrics on /metrics until ctx ends, then shuts down. It returns once
// the listener is bound, so a bad or taken address fails at once, before
// anything else happens (exit 2); the server runs in the background and
// Wait returns when it has stopped.
func Serve(ctx context.Context, addr string, g prometheus.Gatherer, log zerolog.Logger) (*Server, error) {
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, exitcode.Errorf(exitcode.BadInput, "metrics endpoint: %w (another greenswap or an exporter listens there? pick another --metrics-addr)", err)
		}
		return nil, exitcode.Errorf(exitcode.BadInput, "metrics endpoint: cannot listen on %q: %w (want host:port, e.g. :9187 or 127.0.0.1:9187)", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{
		// Each scrape queries the database: a burst of scrapers must not
		// turn into a burst of queries on the database being migrated.
		MaxRequestsInFlight: 4,
		ErrorLog:            promLogger{log},
	}))
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "greenswap metrics: /metrics")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	s := &Server{addr: ln.Addr().String(), done: make(chan struct{})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	go func() {
		defer close(s.done)
		select {
		case err := <-served: // the listener failed on its own
			s.err = fmt.Errorf("metrics endpoint %s: %w", s.addr, err)
			log.Warn().Err(err).Str("addr", s.addr).Msg("the metrics endpoint stopped")
			return
		case <-ctx.Done():
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			_ = srv.Close() // scrapes still in flight after the timeout: cut them
		}
		if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.err = fmt.Errorf("metrics endpoint %s: %w", s.addr, err)
		}
		log.Debug().Str("addr", s.addr).Msg("the metrics endpoint stopped")
	}()
	log.Info().Str("addr", s.addr).Str("url", "http://"+s.addr+"/metrics").Msg("serving Prometheus metrics")
	return s, nil
}

// Addr is the address the server listens on (with the port filled in when
// the one asked for was 0).
func (s *Server) Addr() string { return s.addr }

// Wait blocks until the server has stopped (its context ended, or the
// listener failed) and returns the error that stopped it, if any.
func (s *Server) Wait() error {
	<-s.done
	return s.err
}

// promLogger sends promhttp's errors (a metric that failed to encode, a
// client that went away) to zerolog.
type promLogger struct{ log zerolog.Logger }

func (l promLogger) Println(v ...any) {
	l.log.Warn().Msg("metrics: " + strings.TrimSpace(fmt.Sprintln(v...)))
}
