package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// The copy's aftermath (issue 20): the application's latency at a fixed
// rate in the window right after `sync` returns, against the steady state
// on the same database once it is vacuumed, analyzed and checkpointed. Two
// clones of one freshly initialised pgbench database: one synced with
// --no-settle (green left to autovacuum, as before the settle phase), one
// with the settle; the same rate (half the no-migration maximum) for both.

type afterFigs struct {
	modes []afterMode
}

// afterMode is one mode's rows: with the settle and with --no-settle.
type afterMode struct {
	logical                                              bool
	settledP99, settledMean, unsettledP99, unsettledMean *Figure
	// The server's CPU per transaction, window after ÷ steady: what the
	// aftermath costs the server, which other work on a shared machine
	// moves far less than it moves latency.
	settledCPU, unsettledCPU *Figure
}

func (b *bench) aftermathFigures() afterFigs {
	var f afterFigs
	for _, m := range []struct {
		logical bool
		name    string
	}{{false, "trigger mode, after sync returns"}, {true, "logical mode (sync --watch), after synced"}} {
		f.modes = append(f.modes, afterMode{
			logical:       m.logical,
			settledP99:    b.figure("app p99 latency in the window "+m.name+" ÷ steady state (settle)", "≤ 1.2×"),
			settledMean:   b.figure("app mean latency in the window "+m.name+" ÷ steady state (settle)", "≤ 1.2×"),
			unsettledP99:  b.figure("app p99 latency in the window "+m.name+" ÷ steady state, --no-settle (before #20)", "reference"),
			unsettledMean: b.figure("app mean latency in the window "+m.name+" ÷ steady state, --no-settle (before #20)", "reference"),
			settledCPU:    b.figure("server CPU per transaction in the window "+m.name+" ÷ steady state (settle)", "≈ 1.0× (load-robust companion of the latency rows)"),
			unsettledCPU:  b.figure("server CPU per transaction in the window "+m.name+" ÷ steady state, --no-settle (before #20)", "reference"),
		})
	}
	return f
}

func (f afterFigs) all() []*Figure {
	var out []*Figure
	for _, m := range f.modes {
		out = append(out, m.settledP99, m.settledMean, m.settledCPU, m.unsettledP99, m.unsettledMean, m.unsettledCPU)
	}
	return out
}

// aftermathWindow is each fixed-rate window: BENCH_WINDOW, else 60 s.
func (b *bench) aftermathWindow() time.Duration {
	if os.Getenv("BENCH_WINDOW") != "" {
		return b.window
	}
	return 60 * time.Second
}

// aftermathModes are the modes BENCH_AFTERMATH_MODES names ("trigger",
// "logical", or both, the default).
func aftermathModes() map[bool]bool {
	v := os.Getenv("BENCH_AFTERMATH_MODES")
	if v == "" {
		return map[bool]bool{false: true, true: true}
	}
	out := map[bool]bool{}
	for _, m := range strings.Split(v, ",") {
		out[strings.TrimSpace(m) == "logical"] = true
	}
	return out
}

// afterRun is what one clone's sequence measured.
type afterRun struct {
	tag        string
	took       time.Duration
	after      pgbenchRun
	steady     []pgbenchRun // the steady windows, each half a window
	probe      []probeInterval
	loadAfter  [2]string // 1-minute load average at the start and end of the window after sync
	loadSteady [2]string
}

// steadyWindows is how many windows of half a window the steady state is
// measured in, per clone.
const steadyWindows = 2

func (b *bench) runAftermath(ctx context.Context, f afterFigs) {
	pb, err := b.pgbenchTool()
	if err != nil {
		for _, x := range f.all() {
			x.na("no pgbench", err.Error())
		}
		return
	}
	if !b.cli.has(ctx, "sync") {
		mark(notBuiltErr("sync"), f.all()...)
		return
	}
	const db = pgbDB + "_after"
	window := b.aftermathWindow()
	b.logf("aftermath: initialising %s (scale %d), windows of %s", db, pgbScale, fmtDur(window))
	dsn, err := b.cluster.CreateDatabase(ctx, db)
	if err != nil {
		mark(err, f.all()...)
		return
	}
	defer b.drop(db)
	if err := pb.init(ctx, db, pgbScale); err != nil {
		mark(err, f.all()...)
		return
	}
	if err := pgbReset(ctx, dsn); err != nil {
		mark(err, f.all()...)
		return
	}
	max, err := pb.tps(ctx, db, "prepared", window/4)
	if err != nil {
		mark(err, f.all()...)
		return
	}
	rate := max.tps / 2
	b.logf("  no migration: %s; fixed rate %s", fmtRate(max.tps, "tx/s"), fmtRate(rate, "tx/s"))
	// The no-migration reference at that rate, measured as the steady
	// states are: whether a steady state is the database's or the machine's.
	// A rate the machine cannot serve now (other work took the cores the
	// maximum was measured on: transactions fall behind their schedule and
	// every latency is the queue's) is halved, at most twice.
	var refs []pgbenchRun
	for try := 0; ; try++ {
		refs = nil
		for i := range steadyWindows {
			if err := pgbReset(ctx, dsn); err != nil {
				mark(err, f.all()...)
				return
			}
			r, _, err := probed(ctx, dsn, nil, func() (pgbenchRun, error) {
				return pb.fixedRate(ctx, db, rate, window/2, fmt.Sprintf("after_ref%d", i))
			})
			if err != nil {
				mark(err, f.all()...)
				return
			}
			refs = append(refs, r)
		}
		b.logf("  no-migration reference at %s: p99 %s, mean %s, server CPU %s ms/tx (load %s)", fmtRate(rate, "tx/s"),
			fmtDurs(refs, p99Of), fmtDurs(refs, meanOf), fmtCPUs(refs), loadAvg())
		if try == 2 || medianDur(refs, p99Of) < time.Second {
			break
		}
		rate /= 2
		b.logf("  the machine does not serve that rate now (p99 ≥ 1 s): %s", fmtRate(rate, "tx/s"))
	}
	trigSpec, logSpec := filepath.Join(b.tmp, "pgb_after_trigger.yaml"), filepath.Join(b.tmp, "pgb_after_logical.yaml")
	if err := errors.Join(os.WriteFile(trigSpec, []byte(pgbSpecYAML), 0o644),
		os.WriteFile(logSpec, []byte(strings.Replace(pgbSpecYAML, "mode: trigger", "mode: logical", 1)), 0o644)); err != nil {
		mark(err, f.all()...)
		return
	}
	modes := aftermathModes()
	for _, m := range f.modes {
		if !modes[m.logical] {
			for _, x := range []*Figure{m.settledP99, m.settledMean, m.settledCPU, m.unsettledP99, m.unsettledMean, m.unsettledCPU} {
				x.na("not run", "BENCH_AFTERMATH_MODES left this mode out")
			}
			continue
		}
		specPath := trigSpec
		if m.logical {
			specPath = logSpec
		}
		type variant struct {
			tag            string
			args           []string
			p99, mean, cpu *Figure
			run            *afterRun
		}
		vs := []*variant{
			{tag: "unsettled", args: []string{"--no-settle"}, p99: m.unsettledP99, mean: m.unsettledMean, cpu: m.unsettledCPU},
			{tag: "settled", p99: m.settledP99, mean: m.settledMean, cpu: m.settledCPU},
		}
		var steady []pgbenchRun
		for _, v := range vs {
			if ctx.Err() != nil {
				return
			}
			if m.logical {
				v.tag = "logical_" + v.tag
			}
			clone := db + "_" + v.tag
			cdsn, err := b.clone(ctx, db, clone)
			if err != nil {
				mark(err, v.p99, v.mean, v.cpu)
				continue
			}
			v.run, err = b.aftermathOne(ctx, pb, clone, cdsn, specPath, m.logical, v.args, rate, window, v.tag)
			b.drop(clone)
			if err != nil {
				mark(err, v.p99, v.mean, v.cpu)
				v.run = nil
				continue
			}
			steady = append(steady, v.run.steady...)
		}
		// One steady state per mode: every steady window of both clones
		// (the same state: migration open, vacuumed, checkpointed), their
		// median. A window disturbed by other work on the machine moves it
		// less than it would move a baseline of its own.
		baseP99, baseMean := medianDur(steady, p99Of), medianDur(steady, meanOf)
		var cpus []float64
		for _, r := range steady {
			cpus = append(cpus, cpuPerTx(r))
		}
		baseCPU := median(cpus)
		for _, v := range vs {
			if v.run != nil {
				b.aftermathFigure(v.run, v.args, m.logical, rate, window, refs, baseP99, baseMean, len(steady), v.p99, v.mean)
				b.aftermathCPUFigure(v.run, refs, baseCPU, len(steady), v.cpu)
			}
		}
	}
}

func p99Of(r pgbenchRun) time.Duration  { return r.lat.p99 }
func meanOf(r pgbenchRun) time.Duration { return r.lat.mean }

func medianDur(rs []pgbenchRun, of func(pgbenchRun) time.Duration) time.Duration {
	if len(rs) == 0 {
		return 0
	}
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = float64(of(r))
	}
	return time.Duration(median(v))
}

func fmtDurs(rs []pgbenchRun, of func(pgbenchRun) time.Duration) string {
	var out []string
	for _, r := range rs {
		out = append(out, fmtDur(of(r)))
	}
	return strings.Join(out, " / ")
}

// aftermathSync takes the clone to synced: trigger mode, sync to its end;
// logical mode, sync --watch until the state is synced, left streaming
// (stop ends it; pid is its process, for the probe).
func (b *bench) aftermathSync(ctx context.Context, dsn, specPath string, logical bool, args []string) (took time.Duration, pid int, stop func() error, err error) {
	t0 := time.Now()
	if !logical {
		r, err := b.cli.run(ctx, dsn, append([]string{"sync", "-f", specPath}, args...)...)
		if err != nil {
			return 0, 0, nil, err
		}
		if r.Code != 0 {
			return 0, 0, nil, fmt.Errorf("greenswap sync %v exited %d: %s", args, r.Code, oneLine(lastLines(r.Stderr, 3), 300))
		}
		return r.Took, 0, func() error { return nil }, nil
	}
	addr, err := freeAddr()
	if err != nil {
		return 0, 0, nil, err
	}
	full := append([]string{"sync", "-f", specPath, "--watch", "--metrics-addr", addr}, args...)
	r, err := b.cli.start(ctx, dsn, full...)
	if err != nil {
		return 0, 0, nil, err
	}
	w := &watchRun{run: r, args: full, addr: addr}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		_ = w.stop()
		return 0, 0, nil, err
	}
	defer conn.Close(context.Background())
	err = waitUntil(ctx, w, 10*time.Minute, 50*time.Millisecond, "synced", func() (bool, string, error) {
		var st string
		err := conn.QueryRow(ctx, `SELECT coalesce((SELECT state FROM greenswap.migrations WHERE name = $1), '')`, pgbMigration).Scan(&st)
		if err != nil && strings.Contains(err.Error(), "does not exist") {
			return false, "no state schema yet", nil
		}
		return st == "synced", "state " + st, err
	})
	if err != nil {
		_ = w.stop()
		return 0, 0, nil, err
	}
	return time.Since(t0), r.cmd.Process.Pid, w.stop, nil
}

// aftermathOne syncs one clone, runs the window right after sync returns
// (probed: where the CPU went), then settles the database by hand (VACUUM
// ANALYZE, CHECKPOINT) and runs the steady-state windows, each from the
// footing every pgbench run of the bench starts from (pgbReset).
func (b *bench) aftermathOne(ctx context.Context, pb pgbenchTool, dbname, dsn, specPath string, logical bool, args []string, rate float64,
	window time.Duration, tag string) (run *afterRun, err error) {
	run = &afterRun{tag: tag}
	if err := pgbReset(ctx, dsn); err != nil {
		return nil, err
	}
	took, pid, stop, err := b.aftermathSync(ctx, dsn, specPath, logical, args)
	if err != nil {
		return nil, err
	}
	run.took = took
	defer func() {
		if serr := stop(); err == nil {
			err = serr
		}
	}()
	extra := map[string]int{}
	if pid > 0 {
		extra["greenswap process"] = pid
	}
	run.loadAfter[0] = loadAvg()
	after, samples, err := probed(ctx, dsn, extra, func() (pgbenchRun, error) { return pb.fixedRate(ctx, dbname, rate, window, tag+"_after") })
	run.after = after
	run.loadAfter[1] = loadAvg()
	run.probe = probeIntervals(samples, 10*time.Second)
	if err != nil {
		return nil, err
	}
	if err := execAll(ctx, dsn, "VACUUM ANALYZE", "CHECKPOINT"); err != nil {
		return nil, err
	}
	run.loadSteady[0] = loadAvg()
	for i := range steadyWindows {
		if err := pgbReset(ctx, dsn); err != nil {
			return nil, err
		}
		r, _, err := probed(ctx, dsn, extra, func() (pgbenchRun, error) {
			return pb.fixedRate(ctx, dbname, rate, window/2, fmt.Sprintf("%s_steady%d", tag, i))
		})
		if err != nil {
			return nil, err
		}
		run.steady = append(run.steady, r)
	}
	run.loadSteady[1] = loadAvg()
	b.logf("  %s: sync %s; after: mean %s, p99 %s, server CPU %.3f ms/tx (load %s→%s); steady: mean %s, p99 %s, server CPU %s ms/tx (load %s→%s)", tag, fmtDur(took),
		fmtDur(run.after.lat.mean), fmtDur(run.after.lat.p99), cpuPerTx(run.after), run.loadAfter[0], run.loadAfter[1],
		fmtDurs(run.steady, meanOf), fmtDurs(run.steady, p99Of), fmtCPUs(run.steady), run.loadSteady[0], run.loadSteady[1])
	ser := run.after.lat.series(10 * time.Second)
	for i, iv := range ser {
		line := fmt.Sprintf("    after %3ds: %5d tx, mean %s, p99 %s", i*10, iv.n, fmtDur(iv.mean), fmtDur(iv.p99))
		if i < len(run.probe) {
			line += "; " + run.probe[i].describe()
		}
		b.logf("%s", line)
	}
	return run, nil
}

// aftermathFigure fills one clone's two rows: the window after sync ÷ the
// mode's steady state (the median of its steady windows).
func (b *bench) aftermathFigure(run *afterRun, args []string, logical bool, rate float64, window time.Duration, refs []pgbenchRun,
	baseP99, baseMean time.Duration, nSteady int, p99, mean *Figure) {
	ser := run.after.lat.series(10 * time.Second)
	var serP99 []string
	for _, iv := range ser {
		serP99 = append(serP99, fmtDur(iv.p99))
	}
	refP99, refMean := medianDur(refs, p99Of), medianDur(refs, meanOf)
	ownP99, ownMean := medianDur(run.steady, p99Of), medianDur(run.steady, meanOf)
	for _, x := range []struct {
		fig            *Figure
		got, base, own time.Duration
		ref            time.Duration
		what           string
	}{{p99, run.after.lat.p99, baseP99, ownP99, refP99, "p99"}, {mean, run.after.lat.mean, baseMean, ownMean, refMean, "mean"}} {
		x.fig.Value = fmtDur(x.got)
		x.fig.Baseline = fmtDur(x.base) + fmt.Sprintf(" (steady state: median of the mode's %d steady windows)", nSteady)
		x.fig.ratio(x.got.Seconds(), x.base.Seconds())
		x.fig.raw(x.what+"_after_ms", ms(x.got))
		x.fig.raw(x.what+"_steady_ms", ms(x.base))
		x.fig.raw(x.what+"_own_steady_ms", ms(x.own))
		x.fig.raw(x.what+"_reference_ms", ms(x.ref))
		x.fig.raw("sync_seconds", run.took.Seconds())
		for i, iv := range ser {
			x.fig.raw(fmt.Sprintf("%s_after_%02ds_ms", x.what, i*10), ms(map[string]time.Duration{"p99": iv.p99, "mean": iv.mean}[x.what]))
		}
		how := strings.TrimSpace("greenswap sync " + strings.Join(args, " "))
		if logical {
			how += " --watch, to synced,"
		}
		x.fig.Note = fmt.Sprintf("pgbench TPC-B-like, scale %d, %d clients, -R %.0f (½ the no-migration maximum), a %s window after sync, "+
			"steady = %d windows of %s after VACUUM ANALYZE and CHECKPOINT per clone; %s took %s; this clone's steady %s %s (÷ no-migration reference %s: %.2f×); "+
			"p99 by 10 s after sync: %s; load %s→%s after sync, %s→%s steady; %d and %d transactions logged, %d failed",
			pgbScale, pgbClients, rate, fmtDur(window), steadyWindows, fmtDur(window/2), how, fmtDur(run.took), x.what, fmtDur(x.own),
			fmtDur(x.ref), x.own.Seconds()/max(x.ref.Seconds(), 1e-9), strings.Join(serP99, " "),
			run.loadAfter[0], run.loadAfter[1], run.loadSteady[0], run.loadSteady[1],
			run.after.lat.n, steadyN(run.steady), run.after.failed+steadyFailed(run.steady))
	}
	b.logf("  %s: after ÷ steady p99 %s, mean %s", run.tag, p99.ratioText(), mean.ratioText())
}

func steadyN(rs []pgbenchRun) (n int) {
	for _, r := range rs {
		n += r.lat.n
	}
	return n
}

func steadyFailed(rs []pgbenchRun) (n int64) {
	for _, r := range rs {
		n += r.failed
	}
	return n
}

func fmtCPUs(rs []pgbenchRun) string {
	var out []string
	for _, r := range rs {
		out = append(out, fmt.Sprintf("%.3f", cpuPerTx(r)))
	}
	return strings.Join(out, " / ")
}

// aftermathCPUFigure: the server's CPU per transaction in the window after
// sync ÷ the mode's steady state (the median of its steady windows).
func (b *bench) aftermathCPUFigure(run *afterRun, refs []pgbenchRun, base float64, nSteady int, fig *Figure) {
	got := cpuPerTx(run.after)
	var rv []float64
	for _, r := range refs {
		rv = append(rv, cpuPerTx(r))
	}
	ref := median(rv)
	fig.Value = fmt.Sprintf("%.3f ms/tx", got)
	fig.Baseline = fmt.Sprintf("%.3f ms/tx (steady state: median of the mode's %d steady windows)", base, nSteady)
	fig.ratio(got, base)
	fig.raw("cpu_after_ms_per_tx", got)
	fig.raw("cpu_steady_ms_per_tx", base)
	fig.raw("cpu_reference_ms_per_tx", ref)
	fig.Note = fmt.Sprintf("CPU (user + system, /proc) of every server process and of the greenswap process, over the transactions pgbench logged; "+
		"this clone's steady windows %s ms/tx; no-migration reference %.3f ms/tx; load %s→%s after sync", fmtCPUs(run.steady), ref, run.loadAfter[0], run.loadAfter[1])
	b.logf("  %s: server CPU per transaction after ÷ steady %s", run.tag, fig.ratioText())
}
