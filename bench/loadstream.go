package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Logical mode under pgbench load (issue 12): how fast the stream applies
// against how fast the clients write, and the slot's lag, during the
// backfill and after it; then how much faster than the clients it can
// apply, from a backlog built by stopping it.

// loadSample is one reading taken while the clients write.
type loadSample struct {
	t       time.Time
	lag     float64 // pg_current_wal_lsn() − the slot's confirmed_flush_lsn; -1 before the slot exists
	keys    float64 // greenswap_stream_keys_applied_total of the watching process; -1 when it serves none
	commits float64 // rows in pgbench_history: one per committed TPC-B transaction
}

// loadProbe reads the figures of one sample over its own connection.
type loadProbe struct {
	conn    *pgx.Conn
	slot    string
	metrics string // http://ADDR/metrics of the sync --watch process
	http    *http.Client
}

func newLoadProbe(ctx context.Context, dsn, slot, metricsAddr string) (*loadProbe, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, err
	}
	return &loadProbe{conn: conn, slot: slot, metrics: "http://" + metricsAddr + "/metrics",
		http: &http.Client{Timeout: 3 * time.Second}}, nil
}

func (p *loadProbe) close() { p.conn.Close(context.Background()) }

// db reads the slot's lag and the clients' commits in one round trip.
func (p *loadProbe) db(ctx context.Context) (lag, commits float64, err error) {
	err = p.conn.QueryRow(ctx, `SELECT coalesce((SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)
		FROM pg_replication_slots WHERE slot_name = $1), -1)::float8, (SELECT count(*) FROM pgbench_history)::float8`, p.slot).Scan(&lag, &commits)
	return lag, commits, err
}

// keys scrapes the streamer's applied-keys counter; -1 when no greenswap
// serves it (between two runs of sync --watch, or before the stream starts).
func (p *loadProbe) keys(ctx context.Context) float64 {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.metrics, nil)
	if err != nil {
		return -1
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "greenswap_stream_keys_applied_total{") {
			continue
		}
		if i := strings.LastIndexByte(line, ' '); i > 0 {
			if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
				return v
			}
		}
	}
	return -1
}

func (p *loadProbe) sample(ctx context.Context) (loadSample, error) {
	s := loadSample{t: time.Now(), keys: p.keys(ctx)}
	var err error
	s.lag, s.commits, err = p.db(ctx)
	return s, err
}

// loadSampler samples every `every` in the background.
type loadSampler struct {
	mu      sync.Mutex
	samples []loadSample
	err     error
	cancel  context.CancelFunc
	done    chan struct{}
}

func startSampler(ctx context.Context, dsn, slot, metricsAddr string, every time.Duration) (*loadSampler, error) {
	p, err := newLoadProbe(ctx, dsn, slot, metricsAddr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	s := &loadSampler{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer p.close()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			v, err := p.sample(ctx)
			s.mu.Lock()
			if err == nil {
				s.samples = append(s.samples, v)
			} else if ctx.Err() == nil && s.err == nil {
				s.err = err
			}
			s.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return s, nil
}

// stop ends the sampling and returns every sample taken.
func (s *loadSampler) stop() ([]loadSample, error) {
	s.cancel()
	<-s.done
	return s.samples, s.err
}

// loadWindow is the stream against the clients over one window.
type loadWindow struct {
	from, to    time.Time // first and last sample in the window
	applyPerSec float64   // keys applied to green per second
	writePerSec float64   // clients' committed transactions per second
	lagMedian   float64
	lagMax      float64
	lagFirst    float64
	lagLast     float64
	samples     int
}

// windowOf computes a window from the samples taken in [from, to]. The
// keys counter restarts at 0 with each sync --watch process (and with the
// sync's own streamer), so its increase is summed as Prometheus' increase()
// would: a drop counts as a restart.
func windowOf(samples []loadSample, from, to time.Time) (loadWindow, error) {
	var w loadWindow
	var in []loadSample
	for _, s := range samples {
		if !s.t.Before(from) && !s.t.After(to) {
			in = append(in, s)
		}
	}
	if len(in) < 2 {
		return w, fmt.Errorf("only %d samples in the %s window: too short to measure", len(in), fmtDur(to.Sub(from)))
	}
	w.from, w.to, w.samples = in[0].t, in[len(in)-1].t, len(in)
	span := w.to.Sub(w.from).Seconds()
	w.writePerSec = (in[len(in)-1].commits - in[0].commits) / span
	var inc, prev float64 = 0, -1
	var lags []float64
	keyed := 0
	for _, s := range in {
		if s.keys >= 0 {
			keyed++
			switch {
			case prev < 0:
			case s.keys >= prev:
				inc += s.keys - prev
			default:
				inc += s.keys
			}
			prev = s.keys
		}
		if s.lag >= 0 {
			lags = append(lags, s.lag)
		}
	}
	if keyed < 2 {
		// No rate at all rather than a rate of 0: the scrapes failed or no
		// streamer of this process ran.
		return w, fmt.Errorf("the watch's metrics served the applied-keys counter in %d of the %d samples of the %s window", keyed, len(in), fmtDur(to.Sub(from)))
	}
	w.applyPerSec = inc / span
	if len(lags) == 0 {
		return w, fmt.Errorf("no replication slot in the %s window", fmtDur(to.Sub(from)))
	}
	w.lagMedian, w.lagMax = median(lags), slices.Max(lags)
	w.lagFirst, w.lagLast = lags[0], lags[len(lags)-1]
	return w, nil
}

// freeAddr is a loopback address no one listens on now.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}

// watchRun is `greenswap sync -f SPEC --watch --metrics-addr ADDR` in the
// background.
type watchRun struct {
	run  *bgRun
	args []string
	addr string
}

func (b *bench) startWatch(ctx context.Context, dsn, specPath, metricsAddr string) (*watchRun, error) {
	args := []string{"sync", "-f", specPath, "--watch", "--metrics-addr", metricsAddr}
	r, err := b.cli.start(ctx, dsn, args...)
	if err != nil {
		return nil, err
	}
	return &watchRun{run: r, args: args, addr: metricsAddr}, nil
}

// stop interrupts the watch and waits; an exit other than 0 or 130
// (interrupted) is an error with the end of its log.
func (w *watchRun) stop() error {
	res := w.run.stop(w.args)
	if res.Code != 0 && res.Code != 130 {
		return fmt.Errorf("greenswap sync --watch exited %d: %s", res.Code, oneLine(lastLines(res.Stderr+res.Stdout, 3), 300))
	}
	return nil
}

// gone is an error if the watch has exited on its own.
func (w *watchRun) gone() error {
	if !w.run.exited() {
		return nil
	}
	if err := w.stop(); err != nil {
		return err
	}
	return fmt.Errorf("greenswap sync --watch exited on its own")
}

// waitUntil polls cond every `every` until it holds, the watch exits, or
// timeout passes (what says how far it got).
func waitUntil(ctx context.Context, w *watchRun, timeout, every time.Duration, what string, cond func() (bool, string, error)) error {
	t0 := time.Now()
	for {
		ok, where, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if w != nil {
			if err := w.gone(); err != nil {
				return fmt.Errorf("waiting for %s: %w", what, err)
			}
		}
		if time.Since(t0) > timeout {
			return fmt.Errorf("%s did not happen in %s (%s)", what, fmtDur(timeout), where)
		}
		if err := sleep(ctx, every); err != nil {
			return err
		}
	}
}

// watchStreaming waits until the watch's streamer streams. A logical-mode
// sync --watch streams with the sync's own streamer until it has caught up
// after synced, records its "stream" event, and hands that streamer to the
// watch (kept_streaming in the event); a greenswap before that stopped it
// and started another on a new replication connection: a walsender that
// started after that event.
func watchStreaming(ctx context.Context, p *loadProbe, w *watchRun, timeout time.Duration) error {
	return waitUntil(ctx, w, timeout, 100*time.Millisecond, "the watch's own streamer", func() (bool, string, error) {
		var ok bool
		err := p.conn.QueryRow(ctx, `WITH e AS (SELECT at, coalesce((detail->>'kept_streaming')::boolean, false) AS kept
			FROM greenswap.events WHERE migration = $2 AND step = 'stream' ORDER BY id DESC LIMIT 1)
			SELECT EXISTS (SELECT 1 FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = s.active_pid, e
			WHERE s.slot_name = $1 AND (e.kept OR a.backend_start > e.at))`,
			p.slot, pgbMigration).Scan(&ok)
		return ok, "no walsender started after the sync's stream stopped", err
	})
}

// lagUnder waits until the slot's lag is under limit bytes.
func lagUnder(ctx context.Context, p *loadProbe, w *watchRun, limit float64, timeout time.Duration) error {
	return waitUntil(ctx, w, timeout, 250*time.Millisecond, fmt.Sprintf("slot lag under %s", fmtBytes(limit)), func() (bool, string, error) {
		lag, _, err := p.db(ctx)
		return err == nil && lag >= 0 && lag < limit, "slot lag " + fmtBytes(lag), err
	})
}

// logicalLoad is what the logical sequence under load measured.
type logicalLoad struct {
	beforeTPS    float64 // the clients before the sync started
	backfill     loadWindow
	backfillTook time.Duration
	backfillErr  error
	catchUp      time.Duration // synced → slot lag under catchUpBytes
	after        loadWindow
	afterErr     error
	drain        drainResult
	drainErr     error
	clientErrors string
}

// drainResult: the stream stopped for a while with the clients writing,
// then restarted until its lag fell under drainDoneBytes.
type drainResult struct {
	stopFor           time.Duration
	catchUp           time.Duration // restart → lag under drainDoneBytes
	backlog           float64       // slot lag at the restart, bytes
	stopToCaught      float64       // transactions committed from the stop to the catch-up
	duringCatchUp     float64       // transactions committed during the catch-up
	stoppedTPS, catTP float64       // the clients' rate while stopped and while catching up
}

// capacity is how many times the clients' write rate the stream applies.
func (d drainResult) capacity() float64 {
	if d.duringCatchUp <= 0 {
		return 0
	}
	return d.stopToCaught / d.duringCatchUp
}

// drainDoneBytes is the slot lag under which the drain counts as caught up.
const drainDoneBytes = 3 << 20

// pgbLoad runs the logical-mode sequence on dsn (a fresh clone of the
// pgbench database): 8 clients (4 simple protocol, 4 prepared, as in the
// issue) write from before `sync --watch` starts, through the backfill,
// after it, and while the streamer is stopped and restarted. It returns the
// watch still streaming (nil on failure) for the TPS and latency windows.
func (b *bench) pgbLoad(ctx context.Context, pb pgbenchTool, dbname, dsn, specPath string, window, stopFor time.Duration) (logicalLoad, *watchRun, error) {
	var res logicalLoad
	if err := pgbReset(ctx, dsn); err != nil {
		return res, nil, err
	}
	addr, err := freeAddr()
	if err != nil {
		return res, nil, err
	}
	probe, err := newLoadProbe(ctx, dsn, pgbNames.Slot, addr)
	if err != nil {
		return res, nil, err
	}
	defer probe.close()
	half := pgbClients / 2
	simple, err := pb.start(ctx, dbname, "simple", half)
	if err != nil {
		return res, nil, err
	}
	prepared, err := pb.start(ctx, dbname, "prepared", pgbClients-half)
	if err != nil {
		simple.stop()
		return res, nil, err
	}
	writersOn := true
	stopWriters := func() {
		if writersOn {
			writersOn = false
			res.clientErrors = strings.Trim(simple.stop()+"; "+prepared.stop(), "; ")
		}
	}
	defer stopWriters()
	sampler, err := startSampler(ctx, dsn, pgbNames.Slot, addr, 500*time.Millisecond)
	if err != nil {
		return res, nil, err
	}
	samplerOn := true
	var samples []loadSample
	stopSampler := func() error {
		if !samplerOn {
			return nil
		}
		samplerOn = false
		var err error
		samples, err = sampler.stop()
		return err
	}
	defer stopSampler()

	// The clients' rate before the sync, past their start-up.
	if err := sleep(ctx, time.Second); err != nil {
		return res, nil, err
	}
	_, c0, err := probe.db(ctx)
	if err != nil {
		return res, nil, err
	}
	t0 := time.Now()
	if err := sleep(ctx, 3*time.Second); err != nil {
		return res, nil, err
	}
	_, c1, err := probe.db(ctx)
	if err != nil {
		return res, nil, err
	}
	res.beforeTPS = (c1 - c0) / time.Since(t0).Seconds()
	b.logf("  logical: sync --watch with %d pgbench clients writing (%d simple, %d prepared; %s before the sync)",
		pgbClients, half, pgbClients-half, fmtRate(res.beforeTPS, "tx/s"))
	tSync := time.Now()
	watch, err := b.startWatch(ctx, dsn, specPath, addr)
	if err != nil {
		return res, nil, err
	}
	keep := false
	defer func() {
		if !keep {
			_ = watch.stop()
		}
	}()

	// Until synced: the backfill ran under the clients, the stream beside it.
	var started, done *time.Time
	err = waitUntil(ctx, watch, 6*time.Minute, 500*time.Millisecond, "synced", func() (bool, string, error) {
		var st string
		err := probe.conn.QueryRow(ctx, `SELECT state, backfill_started_at, backfill_done_at FROM greenswap.migrations WHERE name = $1`,
			pgbMigration).Scan(&st, &started, &done)
		if err != nil {
			return false, "no state row yet", nil // not adopted yet: greenswap's schema may not exist
		}
		return st == "synced" && started != nil && done != nil, "state " + st, nil
	})
	if err != nil {
		return res, nil, fmt.Errorf("logical sync under pgbench load: %w", err)
	}
	tSynced := time.Now()
	res.backfillTook = done.Sub(*started)
	b.logf("  synced after %s (copy %s); waiting for --watch's streamer to catch up", fmtDur(tSynced.Sub(tSync)), fmtDur(res.backfillTook))
	if err := watchStreaming(ctx, probe, watch, 6*time.Minute); err != nil {
		return res, nil, err
	}
	if err := lagUnder(ctx, probe, watch, catchUpBytes, 3*time.Minute); err != nil {
		return res, nil, err
	}
	res.catchUp = time.Since(tSynced)

	// After the backfill: the steady state.
	if err := sleep(ctx, time.Second); err != nil {
		return res, nil, err
	}
	afterFrom := time.Now()
	if err := sleep(ctx, window); err != nil {
		return res, nil, err
	}
	afterTo := time.Now()

	// Drain capacity: stop the streamer, let a backlog build, restart it.
	b.logf("  drain: streamer stopped for %s with the clients writing", fmtDur(stopFor))
	if err := watch.stop(); err != nil {
		keep = true // already stopped
		return res, nil, err
	}
	_, hStop, err := probe.db(ctx)
	if err != nil {
		keep = true
		return res, nil, err
	}
	tStop := time.Now()
	if err := sleep(ctx, stopFor); err != nil {
		keep = true
		return res, nil, err
	}
	backlog, hRestart, err := probe.db(ctx)
	if err != nil {
		keep = true
		return res, nil, err
	}
	tRestart := time.Now()
	if watch, err = b.startWatch(ctx, dsn, specPath, addr); err != nil {
		keep = true
		return res, nil, err
	}
	res.drain = drainResult{stopFor: tRestart.Sub(tStop), backlog: backlog}
	res.drainErr = lagUnder(ctx, probe, watch, drainDoneBytes, 3*time.Minute)
	if res.drainErr == nil {
		_, hCaught, err := probe.db(ctx)
		if err != nil {
			return res, nil, err
		}
		d := &res.drain
		d.catchUp = time.Since(tRestart)
		d.stopToCaught, d.duringCatchUp = hCaught-hStop, hCaught-hRestart
		d.stoppedTPS = (hRestart - hStop) / d.stopFor.Seconds()
		d.catTP = d.duringCatchUp / d.catchUp.Seconds()
		b.logf("  caught up in %s from a %s backlog: capacity %.2f× the clients' rate", fmtDur(d.catchUp), fmtBytes(backlog), d.capacity())
	}
	stopWriters()
	if err := stopSampler(); err != nil {
		return res, nil, fmt.Errorf("sampling slot lag and commits: %w", err)
	}
	res.backfill, res.backfillErr = windowOf(samples, *started, *done)
	res.after, res.afterErr = windowOf(samples, afterFrom, afterTo)
	if res.drainErr != nil {
		return res, nil, fmt.Errorf("after the drain: %w", res.drainErr)
	}

	// Whatever the clients left, applied before the next windows.
	if err := lagUnder(ctx, probe, watch, catchUpBytes, 3*time.Minute); err != nil {
		return res, nil, err
	}
	keep = true
	return res, watch, nil
}
