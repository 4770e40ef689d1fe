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
		})
	}
	return f
}

func (f afterFigs) all() []*Figure {
	var out []*Figure
	for _, m := range f.modes {
		out = append(out, m.settledP99, m.settledMean, m.unsettledP99, m.unsettledMean)
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
	trigSpec, logSpec := filepath.Join(b.tmp, "pgb_after_trigger.yaml"), filepath.Join(b.tmp, "pgb_after_logical.yaml")
	if err := errors.Join(os.WriteFile(trigSpec, []byte(pgbSpecYAML), 0o644),
		os.WriteFile(logSpec, []byte(strings.Replace(pgbSpecYAML, "mode: trigger", "mode: logical", 1)), 0o644)); err != nil {
		mark(err, f.all()...)
		return
	}
	for _, m := range f.modes {
		specPath := trigSpec
		if m.logical {
			specPath = logSpec
		}
		for _, v := range []struct {
			tag       string
			args      []string
			p99, mean *Figure
		}{
			{"unsettled", []string{"--no-settle"}, m.unsettledP99, m.unsettledMean},
			{"settled", nil, m.settledP99, m.settledMean},
		} {
			if ctx.Err() != nil {
				return
			}
			tag := v.tag
			if m.logical {
				tag = "logical_" + tag
			}
			clone := db + "_" + tag
			cdsn, err := b.clone(ctx, db, clone)
			if err != nil {
				mark(err, v.p99, v.mean)
				continue
			}
			err = b.aftermathOne(ctx, pb, clone, cdsn, specPath, m.logical, v.args, rate, window, tag, v.p99, v.mean)
			b.drop(clone)
			if err != nil {
				mark(err, v.p99, v.mean)
			}
		}
	}
}

// aftermathSync takes the clone to synced: trigger mode, sync to its end;
// logical mode, sync --watch until the state is synced, left streaming
// (stop ends it).
func (b *bench) aftermathSync(ctx context.Context, dsn, specPath string, logical bool, args []string) (took time.Duration, stop func() error, err error) {
	t0 := time.Now()
	if !logical {
		r, err := b.cli.run(ctx, dsn, append([]string{"sync", "-f", specPath}, args...)...)
		if err != nil {
			return 0, nil, err
		}
		if r.Code != 0 {
			return 0, nil, fmt.Errorf("greenswap sync %v exited %d: %s", args, r.Code, oneLine(lastLines(r.Stderr, 3), 300))
		}
		return r.Took, func() error { return nil }, nil
	}
	addr, err := freeAddr()
	if err != nil {
		return 0, nil, err
	}
	full := append([]string{"sync", "-f", specPath, "--watch", "--metrics-addr", addr}, args...)
	r, err := b.cli.start(ctx, dsn, full...)
	if err != nil {
		return 0, nil, err
	}
	w := &watchRun{run: r, args: full, addr: addr}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		_ = w.stop()
		return 0, nil, err
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
		return 0, nil, err
	}
	return time.Since(t0), w.stop, nil
}

// aftermathOne syncs one clone, runs the window right after sync returns,
// then settles the database by hand (VACUUM ANALYZE, CHECKPOINT) and runs
// the steady-state window.
func (b *bench) aftermathOne(ctx context.Context, pb pgbenchTool, dbname, dsn, specPath string, logical bool, args []string, rate float64,
	window time.Duration, tag string, p99, mean *Figure) (err error) {
	if err := pgbReset(ctx, dsn); err != nil {
		return err
	}
	took, stop, err := b.aftermathSync(ctx, dsn, specPath, logical, args)
	if err != nil {
		return err
	}
	defer func() {
		if serr := stop(); err == nil {
			err = serr
		}
	}()
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
		x.fig.raw("sync_seconds", took.Seconds())
		how := strings.TrimSpace("greenswap sync " + strings.Join(args, " "))
		if logical {
			how += " --watch, to synced,"
		}
		x.fig.Note = fmt.Sprintf("pgbench TPC-B-like, scale %d, %d clients, -R %.0f (½ the no-migration maximum), %s windows; %s took %s; "+
			"%d and %d transactions logged, %d failed", pgbScale, pgbClients, rate, fmtDur(window), how, fmtDur(took),
			after.lat.n, steady.lat.n, after.failed+steady.failed)
	}
	b.logf("  %s: sync %s; after: mean %s, p99 %s; steady: mean %s, p99 %s (%s p99)", tag, fmtDur(took),
		fmtDur(after.lat.mean), fmtDur(after.lat.p99), fmtDur(steady.lat.mean), fmtDur(steady.lat.p99), p99.ratioText())
	return nil
}
