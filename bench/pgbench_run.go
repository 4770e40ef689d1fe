package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// pgbFigs are the pgbench rows of the table, in table order.
type pgbFigs struct {
	tpsTrigger, tpsLogical                         *Figure
	latTrigMean, latTrigP99, latLogMean, latLogP99 *Figure
	applyBackfill, lagBackfill                     *Figure
	applyAfter, lagAfter                           *Figure
	drain                                          *Figure
}

func (f pgbFigs) all() []*Figure {
	return []*Figure{f.tpsTrigger, f.tpsLogical, f.latTrigMean, f.latTrigP99, f.latLogMean, f.latLogP99,
		f.applyBackfill, f.lagBackfill, f.applyAfter, f.lagAfter, f.drain}
}

func (f pgbFigs) logical() []*Figure {
	return []*Figure{f.tpsLogical, f.latLogMean, f.latLogP99, f.applyBackfill, f.lagBackfill, f.applyAfter, f.lagAfter, f.drain}
}

func (b *bench) pgbenchFigures() pgbFigs {
	return pgbFigs{
		tpsTrigger:    b.figure("pgbench TPS, trigger-mode migration open (synced, before cutover)", "none in #12; ≥ 0.85× (#17)"),
		tpsLogical:    b.figure("pgbench TPS, logical mode streaming (sync --watch, caught up)", "≥ 0.9×"),
		latTrigMean:   b.figure("pgbench latency at ½ max TPS, trigger mode open: mean", "≤ 1.3×"),
		latTrigP99:    b.figure("pgbench latency at ½ max TPS, trigger mode open: p99", "≤ 1.3×"),
		latLogMean:    b.figure("pgbench latency at ½ max TPS, logical streaming: mean", "≤ 1.1×"),
		latLogP99:     b.figure("pgbench latency at ½ max TPS, logical streaming: p99", "≤ 1.1×"),
		applyBackfill: b.figure("logical apply vs clients' writes, during the backfill (8 pgbench clients)", "keeps up (≈ 1.0×)"),
		lagBackfill:   b.figure("logical slot lag during the backfill: median / max", "bounded"),
		applyAfter:    b.figure("logical apply vs clients' writes, after the backfill", "keeps up (≈ 1.0×)"),
		lagAfter:      b.figure("logical slot lag after the backfill: median / max", "bounded"),
		drain:         b.figure("logical drain capacity: applied ÷ written while catching up", "≥ 1.5×"),
	}
}

// pgbState is what the pgbench windows measured in one state.
type pgbState struct {
	prepared, simple, fixed pgbenchRun
	streamNote              string // logical mode: what the stream did during the windows
}

// streamHook lets the logical state wait for the stream before each window
// and sample it during the window.
type streamHook struct {
	dsn   string
	watch *watchRun
	notes []string
}

// runPgbench measures the pgbench figures on their own database (scale 10,
// independent of BENCH_ROWS): no migration, then a trigger-mode migration
// synced and open, then logical mode under load and streaming, each on a
// clone of the same freshly initialised database.
func (b *bench) runPgbench(ctx context.Context, f pgbFigs) {
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
	window := b.window
	b.logf("pgbench: initialising %s (scale %d, 1M accounts)", pgbDB, pgbScale)
	dsn, err := b.cluster.CreateDatabase(ctx, pgbDB)
	if err != nil {
		mark(err, f.all()...)
		return
	}
	defer b.drop(pgbDB)
	t0 := time.Now()
	if err := pb.init(ctx, pgbDB, pgbScale); err != nil {
		mark(err, f.all()...)
		return
	}
	b.logf("  initialised in %s", fmtDur(time.Since(t0)))
	trigDB, logDB := pgbDB+"_trigger", pgbDB+"_logical"
	trigDSN, err := b.clone(ctx, pgbDB, trigDB)
	if err != nil {
		mark(err, f.tpsTrigger, f.latTrigMean, f.latTrigP99)
	} else {
		defer b.drop(trigDB)
	}
	logDSN, err := b.clone(ctx, pgbDB, logDB)
	if err != nil {
		mark(err, f.logical()...)
	} else {
		defer b.drop(logDB)
	}
	trigSpec := filepath.Join(b.tmp, "pgb_trigger.yaml")
	logSpec := filepath.Join(b.tmp, "pgb_logical.yaml")
	if err := errors.Join(os.WriteFile(trigSpec, []byte(pgbSpecYAML), 0o644),
		os.WriteFile(logSpec, []byte(strings.Replace(pgbSpecYAML, "mode: trigger", "mode: logical", 1)), 0o644)); err != nil {
		mark(err, f.all()...)
		return
	}

	b.logf("pgbench, no migration: %s -M prepared, %s -M simple, then the fixed rate", fmtDur(window), fmtDur(window/2))
	none, err := b.pgbWindows(ctx, pb, pgbDB, dsn, 0, window, nil)
	if err != nil {
		mark(err, f.all()...)
		return
	}
	rate := none.prepared.tps / 2
	b.logf("  %s prepared, %s simple; at %s: mean %s, p99 %s", fmtRate(none.prepared.tps, "tx/s"), fmtRate(none.simple.tps, "tx/s"),
		fmtRate(rate, "tx/s"), fmtDur(none.fixed.lat.mean), fmtDur(none.fixed.lat.p99))

	if trigDSN != "" && ctx.Err() == nil {
		b.logf("pgbench, trigger mode: greenswap sync of pgbench_accounts (abalance int → bigint), then the windows")
		if r, err := b.syncRun(ctx, trigDSN, trigSpec); err != nil {
			mark(err, f.tpsTrigger, f.latTrigMean, f.latTrigP99)
		} else if trig, err := b.pgbWindows(ctx, pb, trigDB, trigDSN, rate, window, nil); err != nil {
			mark(err, f.tpsTrigger, f.latTrigMean, f.latTrigP99)
		} else {
			pgbTPSFigure(f.tpsTrigger, trig, none, fmt.Sprintf("trigger-mode sync of the idle table took %s before the windows", fmtDur(r.Took)))
			pgbLatFigures(f.latTrigMean, f.latTrigP99, trig, none)
			b.logf("  %s (%s); latency mean %s (%s), p99 %s (%s)", fmtRate(trig.prepared.tps, "tx/s"), f.tpsTrigger.ratioText(),
				fmtDur(trig.fixed.lat.mean), f.latTrigMean.ratioText(), fmtDur(trig.fixed.lat.p99), f.latTrigP99.ratioText())
		}
		b.drop(trigDB)
	}

	if logDSN != "" && ctx.Err() == nil {
		b.logf("pgbench, logical mode: sync under load, the drain, then the windows while streaming")
		load, watch, err := b.pgbLoad(ctx, pb, logDB, logDSN, logSpec, window, b.drainStop)
		pgbLoadFigures(f, load, err)
		if err != nil {
			mark(err, f.tpsLogical, f.latLogMean, f.latLogP99)
		} else {
			hook := &streamHook{dsn: logDSN, watch: watch}
			lg, err := b.pgbWindows(ctx, pb, logDB, logDSN, rate, window, hook)
			if serr := watch.stop(); err == nil {
				err = serr
			}
			if err != nil {
				mark(err, f.tpsLogical, f.latLogMean, f.latLogP99)
			} else {
				lg.streamNote = strings.Join(hook.notes, "; ")
				pgbTPSFigure(f.tpsLogical, lg, none, fmt.Sprintf("after the load sequence below (copy %s under the clients, drain), the stream caught up before each window", fmtDur(load.backfillTook)))
				pgbLatFigures(f.latLogMean, f.latLogP99, lg, none)
				b.logf("  %s (%s); latency mean %s (%s), p99 %s (%s)", fmtRate(lg.prepared.tps, "tx/s"), f.tpsLogical.ratioText(),
					fmtDur(lg.fixed.lat.mean), f.latLogMean.ratioText(), fmtDur(lg.fixed.lat.p99), f.latLogP99.ratioText())
			}
		}
	}

	// No migration once more, last: how far the machine drifted between
	// the baseline and the states measured after it.
	if ctx.Err() != nil || (f.tpsTrigger.Status != "ok" && f.tpsLogical.Status != "ok") {
		return
	}
	b.logf("pgbench, no migration again (drift check): %s -M prepared", fmtDur(window))
	if err := pgbReset(ctx, dsn); err != nil {
		b.logf("  (drift check: %v)", err)
		return
	}
	again, err := pb.tps(ctx, pgbDB, "prepared", window)
	if err != nil {
		b.logf("  (drift check: %v)", err)
		return
	}
	b.logf("  %s (%.2f× of the first)", fmtRate(again.tps, "tx/s"), again.tps/none.prepared.tps)
	for _, x := range []*Figure{f.tpsTrigger, f.tpsLogical} {
		if x.Status == "ok" {
			x.raw("baseline_tps_end", again.tps)
			x.Note += fmt.Sprintf("; no migration measured again at the end: %s (%.2f× of the baseline): the machine's drift over the run",
				fmtRate(again.tps, "tx/s"), again.tps/none.prepared.tps)
		}
	}
}

// pgbWindows runs, on one database, pgbench -M prepared for window, -M
// simple for half of it, then the fixed-rate run at rate (0: half the
// prepared run's TPS, for the no-migration state). Every run starts from
// the same footing: tellers and branches vacuumed, history emptied, a
// checkpoint; the whole database is vacuumed once before the first.
func (b *bench) pgbWindows(ctx context.Context, pb pgbenchTool, dbname, dsn string, rate float64, window time.Duration, hook *streamHook) (pgbState, error) {
	var st pgbState
	if err := execAll(ctx, dsn, "VACUUM"); err != nil {
		return st, err
	}
	measure := func(kind string, fn func() (pgbenchRun, error)) (pgbenchRun, error) {
		if err := pgbReset(ctx, dsn); err != nil {
			return pgbenchRun{}, err
		}
		if hook == nil {
			return fn()
		}
		return hook.around(ctx, kind, fn)
	}
	var err error
	if st.prepared, err = measure("prepared", func() (pgbenchRun, error) { return pb.tps(ctx, dbname, "prepared", window) }); err != nil {
		return st, err
	}
	if st.simple, err = measure("simple", func() (pgbenchRun, error) { return pb.tps(ctx, dbname, "simple", window/2) }); err != nil {
		return st, err
	}
	if rate <= 0 {
		rate = st.prepared.tps / 2
	}
	st.fixed, err = measure("fixed rate", func() (pgbenchRun, error) {
		return pb.fixedRate(ctx, dbname, rate, window, strings.TrimPrefix(dbname, pgbDB+"_"))
	})
	return st, err
}

// pgbReset puts a pgbench database on the footing every run starts from:
// what pgbench does itself without -n (tellers and branches vacuumed,
// history emptied), and a checkpoint.
func pgbReset(ctx context.Context, dsn string) error {
	return execAll(ctx, dsn, "VACUUM pgbench_branches, pgbench_tellers", "TRUNCATE pgbench_history", "CHECKPOINT")
}

// around waits for the stream to catch up, then runs fn with the stream
// sampled, and notes what it did.
func (h *streamHook) around(ctx context.Context, kind string, fn func() (pgbenchRun, error)) (pgbenchRun, error) {
	probe, err := newLoadProbe(ctx, h.dsn, pgbNames.Slot, h.watch.addr)
	if err != nil {
		return pgbenchRun{}, err
	}
	defer probe.close()
	if err := lagUnder(ctx, probe, h.watch, catchUpBytes, 3*time.Minute); err != nil {
		return pgbenchRun{}, fmt.Errorf("before the %s window: %w", kind, err)
	}
	s, err := startSampler(ctx, h.dsn, pgbNames.Slot, h.watch.addr, 500*time.Millisecond)
	if err != nil {
		return pgbenchRun{}, err
	}
	from := time.Now()
	r, err := fn()
	to := time.Now()
	samples, serr := s.stop()
	if err != nil {
		return r, err
	}
	if serr != nil {
		return r, serr
	}
	if w, err := windowOf(samples, from, to); err == nil {
		h.notes = append(h.notes, fmt.Sprintf("%s: stream %s for the clients' %s, slot lag median %s, max %s",
			kind, fmtRate(w.applyPerSec, "keys/s"), fmtRate(w.writePerSec, "tx/s"), fmtBytes(w.lagMedian), fmtBytes(w.lagMax)))
	}
	return r, nil
}

// pgbTPSFigure fills a TPS row: -M prepared against no migration; -M
// simple in the note.
func pgbTPSFigure(fig *Figure, st, none pgbState, context string) {
	fig.Value = fmtRate(st.prepared.tps, "tx/s")
	fig.Baseline = fmtRate(none.prepared.tps, "tx/s") + " (no migration)"
	fig.ratio(st.prepared.tps, none.prepared.tps)
	fig.raw("tps", st.prepared.tps)
	fig.raw("baseline_tps", none.prepared.tps)
	fig.raw("simple_tps", st.simple.tps)
	fig.raw("baseline_simple_tps", none.simple.tps)
	fig.raw("window_seconds", st.prepared.seconds)
	fig.Note = fmt.Sprintf("pgbench TPC-B-like, scale %d, %d clients, %d threads, -M prepared, %.0f s; -M simple (%.0f s): %s vs %s with none (%.2f×); "+
		"%d failed transactions; %s",
		pgbScale, pgbClients, pgbThreads, st.prepared.seconds, st.simple.seconds, fmtRate(st.simple.tps, "tx/s"), fmtRate(none.simple.tps, "tx/s"),
		st.simple.tps/none.simple.tps, st.prepared.failed+st.simple.failed, context)
	if st.streamNote != "" {
		fig.Note += "; " + st.streamNote
	}
}

// pgbLatFigures fills the mean and p99 rows of the fixed-rate run.
func pgbLatFigures(mean, p99 *Figure, st, none pgbState) {
	l, n := st.fixed.lat, none.fixed.lat
	rate := fmtRate(none.prepared.tps/2, "tx/s")
	mean.Value, mean.Baseline = fmtDur(l.mean), fmtDur(n.mean)+" (no migration)"
	mean.ratio(l.mean.Seconds(), n.mean.Seconds())
	p99.Value, p99.Baseline = fmtDur(l.p99), fmtDur(n.p99)+" (no migration)"
	p99.ratio(l.p99.Seconds(), n.p99.Seconds())
	for _, f := range []*Figure{mean, p99} {
		f.raw("mean_ms", ms(l.mean))
		f.raw("p99_ms", ms(l.p99))
		f.raw("max_ms", ms(l.max))
		f.raw("baseline_mean_ms", ms(n.mean))
		f.raw("baseline_p99_ms", ms(n.p99))
		f.raw("rate_tps", none.prepared.tps/2)
		f.raw("achieved_tps", l.rate())
		f.raw("transactions", float64(l.n))
	}
	mean.Note = fmt.Sprintf("pgbench -R %s (half the no-migration max, %s), %d clients, -M prepared, %.0f s, no --latency-limit; "+
		"latency from the per-transaction log (-l), which under -R counts from the scheduled start (waits behind a slow server included); "+
		"%d transactions at %s achieved (none: %d at %s); max %s (none %s); %d not completed",
		rate, fmtRate(none.prepared.tps, "tx/s"), pgbClients, st.fixed.seconds, l.n, fmtRate(l.rate(), "tx/s"), n.n, fmtRate(n.rate(), "tx/s"),
		fmtDur(l.max), fmtDur(n.max), l.failed)
	p99.Note = fmt.Sprintf("the same run: p99 of %d logged transactions (nearest rank)", l.n)
}

// pgbLoadFigures fills the logical-under-load rows from what pgbLoad got
// (err: where it stopped; the rows it reached are still filled).
func pgbLoadFigures(f pgbFigs, l logicalLoad, err error) {
	clients := fmt.Sprintf("%d pgbench clients (%d -M simple, %d -M prepared) writing from before the sync (%s then)",
		pgbClients, pgbClients/2, pgbClients-pgbClients/2, fmtRate(l.beforeTPS, "tx/s"))
	how := "apply = keys the stream applied to green (greenswap_stream_keys_applied_total from sync --watch --metrics-addr, sampled every 500 ms); " +
		"writes = rows added to pgbench_history (one per committed TPC-B transaction, each changing one account)"
	fill := func(apply, lag *Figure, w loadWindow, werr error, what string) {
		switch {
		case werr != nil:
			mark(werr, apply, lag)
			return
		case w.samples == 0:
			if err != nil {
				mark(err, apply, lag)
			}
			return
		}
		apply.Value = fmtRate(w.applyPerSec, "keys/s")
		apply.Baseline = fmtRate(w.writePerSec, "tx/s") + " (clients' commits)"
		apply.ratio(w.applyPerSec, w.writePerSec)
		apply.raw("apply_keys_per_sec", w.applyPerSec)
		apply.raw("client_tps", w.writePerSec)
		apply.raw("window_seconds", w.to.Sub(w.from).Seconds())
		apply.Note = fmt.Sprintf("window = %s (%s, %d samples); %s; %s", what, fmtDur(w.to.Sub(w.from)), w.samples, clients, how)
		lag.Value = fmtBytes(w.lagMedian) + " / " + fmtBytes(w.lagMax)
		lag.raw("lag_bytes_median", w.lagMedian)
		lag.raw("lag_bytes_max", w.lagMax)
		lag.raw("lag_bytes_first", w.lagFirst)
		lag.raw("lag_bytes_last", w.lagLast)
		lag.Note = fmt.Sprintf("pg_current_wal_lsn() − the slot's confirmed_flush_lsn over the same window: %s at its start, %s at its end", fmtBytes(w.lagFirst), fmtBytes(w.lagLast))
	}
	fill(f.applyBackfill, f.lagBackfill, l.backfill, l.backfillErr, "the copy (backfill_started_at → backfill_done_at)")
	fill(f.applyAfter, f.lagAfter, l.after, l.afterErr, fmt.Sprintf("after the stream caught up (%s after synced)", fmtDur(l.catchUp)))
	if l.clientErrors != "" {
		for _, x := range []*Figure{f.applyBackfill, f.applyAfter} {
			if x.Status == "ok" {
				x.Note += "; client errors: " + l.clientErrors
			}
		}
	}
	d := l.drain
	switch {
	case l.drainErr != nil:
		mark(l.drainErr, f.drain)
	case d.catchUp == 0:
		if err != nil {
			mark(err, f.drain)
		}
	case d.backlog < 2*drainDoneBytes:
		// Under the catch-up line from the start, the catch-up measures
		// only the restart: no capacity in it.
		f.drain.na("backlog too small", fmt.Sprintf("the %s stop left a slot lag of only %s (the catch-up line is %s): stop it longer (BENCH_WINDOW)",
			fmtDur(d.stopFor), fmtBytes(d.backlog), fmtBytes(drainDoneBytes)))
	default:
		f.drain.Value = fmt.Sprintf("%.0f tx applied in %s", d.stopToCaught, fmtDur(d.catchUp))
		f.drain.Baseline = fmt.Sprintf("%.0f tx written in those %s", d.duringCatchUp, fmtDur(d.catchUp))
		f.drain.ratio(d.stopToCaught, d.duringCatchUp)
		f.drain.raw("capacity", d.capacity())
		f.drain.raw("catch_up_seconds", d.catchUp.Seconds())
		f.drain.raw("stopped_seconds", d.stopFor.Seconds())
		f.drain.raw("backlog_bytes", d.backlog)
		f.drain.raw("stopped_client_tps", d.stoppedTPS)
		f.drain.raw("catch_up_client_tps", d.catTP)
		f.drain.Note = fmt.Sprintf("sync --watch stopped for %s with the %d clients writing (slot lag %s at the restart), then restarted: "+
			"caught up (lag < %s) %s later, process start included; transactions committed from the stop to the catch-up ÷ those committed during the catch-up; "+
			"the clients ran %s while it was stopped, %s while it caught up",
			fmtDur(d.stopFor), pgbClients, fmtBytes(d.backlog), fmtBytes(drainDoneBytes), fmtDur(d.catchUp), fmtRate(d.stoppedTPS, "tx/s"), fmtRate(d.catTP, "tx/s"))
	}
}
