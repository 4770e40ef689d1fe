package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The copy's aftermath (issue 20): the application's latency at a fixed
// rate in the window right after `sync` returns, against the steady state
// on the same database once it is vacuumed, analyzed and checkpointed. Two
// clones of one freshly initialised pgbench database: one synced with
// --no-settle (green left to autovacuum, as before the settle phase), one
// with the settle; the same rate (half the no-migration maximum) for both.

type afterFigs struct {
	settledP99, settledMean, unsettledP99, unsettledMean *Figure
}

func (b *bench) aftermathFigures() afterFigs {
	return afterFigs{
		settledP99:    b.figure("app p99 latency in the window after sync returns ÷ steady state, trigger mode (settle)", "≤ 1.2×"),
		settledMean:   b.figure("app mean latency in the window after sync returns ÷ steady state, trigger mode (settle)", "≤ 1.2×"),
		unsettledP99:  b.figure("app p99 latency in the window after sync returns ÷ steady state, trigger mode, --no-settle (before #20)", "reference"),
		unsettledMean: b.figure("app mean latency in the window after sync returns ÷ steady state, trigger mode, --no-settle (before #20)", "reference"),
	}
}

func (f afterFigs) all() []*Figure {
	return []*Figure{f.settledP99, f.settledMean, f.unsettledP99, f.unsettledMean}
}

// aftermathWindow is each fixed-rate window: BENCH_WINDOW, else 60 s.
func (b *bench) aftermathWindow() time.Duration {
	if os.Getenv("BENCH_WINDOW") != "" {
		return b.window
	}
	return 60 * time.Second
}

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
	specPath := filepath.Join(b.tmp, "pgb_after.yaml")
	if err := os.WriteFile(specPath, []byte(pgbSpecYAML), 0o644); err != nil {
		mark(err, f.all()...)
		return
	}
	for _, v := range []struct {
		tag       string
		args      []string
		p99, mean *Figure
	}{
		{"unsettled", []string{"--no-settle"}, f.unsettledP99, f.unsettledMean},
		{"settled", nil, f.settledP99, f.settledMean},
	} {
		if ctx.Err() != nil {
			return
		}
		clone := db + "_" + v.tag
		cdsn, err := b.clone(ctx, db, clone)
		if err != nil {
			mark(err, v.p99, v.mean)
			continue
		}
		err = b.aftermathOne(ctx, pb, clone, cdsn, specPath, v.args, rate, window, v.tag, v.p99, v.mean)
		b.drop(clone)
		if err != nil {
			mark(err, v.p99, v.mean)
		}
	}
}

// aftermathOne syncs one clone, runs the window right after sync returns,
// then settles the database by hand (VACUUM ANALYZE, CHECKPOINT) and runs
// the steady-state window.
func (b *bench) aftermathOne(ctx context.Context, pb pgbenchTool, dbname, dsn, specPath string, args []string, rate float64,
	window time.Duration, tag string, p99, mean *Figure) error {
	if err := pgbReset(ctx, dsn); err != nil {
		return err
	}
	r, err := b.cli.run(ctx, dsn, append([]string{"sync", "-f", specPath}, args...)...)
	if err != nil {
		return err
	}
	if r.Code != 0 {
		return fmt.Errorf("greenswap sync %v exited %d: %s", args, r.Code, oneLine(lastLines(r.Stderr, 3), 300))
	}
	after, err := pb.fixedRate(ctx, dbname, rate, window, tag+"_after")
	if err != nil {
		return err
	}
	if err := execAll(ctx, dsn, "VACUUM ANALYZE", "CHECKPOINT"); err != nil {
		return err
	}
	steady, err := pb.fixedRate(ctx, dbname, rate, window, tag+"_steady")
	if err != nil {
		return err
	}
	for _, x := range []struct {
		fig       *Figure
		got, base time.Duration
		what      string
	}{{p99, after.lat.p99, steady.lat.p99, "p99"}, {mean, after.lat.mean, steady.lat.mean, "mean"}} {
		x.fig.Value = fmtDur(x.got)
		x.fig.Baseline = fmtDur(x.base) + " (steady state: after VACUUM ANALYZE and CHECKPOINT)"
		x.fig.ratio(x.got.Seconds(), x.base.Seconds())
		x.fig.raw(x.what+"_after_ms", ms(x.got))
		x.fig.raw(x.what+"_steady_ms", ms(x.base))
		x.fig.raw("sync_seconds", r.Took.Seconds())
		how := "greenswap sync (settle)"
		if len(args) > 0 {
			how = "greenswap sync " + strings.Join(args, " ")
		}
		x.fig.Note = fmt.Sprintf("pgbench TPC-B-like, scale %d, %d clients, -R %.0f (½ the no-migration maximum), %s windows; %s took %s; "+
			"%d and %d transactions logged, %d failed; logical mode is not measured here yet", pgbScale, pgbClients, rate, fmtDur(window), how, fmtDur(r.Took),
			after.lat.n, steady.lat.n, after.failed+steady.failed)
	}
	b.logf("  %s: sync %s; after: mean %s, p99 %s; steady: mean %s, p99 %s (%s p99)", tag, fmtDur(r.Took),
		fmtDur(after.lat.mean), fmtDur(after.lat.p99), fmtDur(steady.lat.mean), fmtDur(steady.lat.p99), p99.ratioText())
	return nil
}
