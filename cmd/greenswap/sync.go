package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/logx"
	"github.com/greenswap/greenswap/metrics"
	"github.com/greenswap/greenswap/runner"
	"github.com/greenswap/greenswap/spec"
)

func syncCommand() *cli.Command {
	return &cli.Command{
		Name:      "sync",
		Usage:     "adopt the table, build green, backfill it and keep it in sync (trigger or logical mode)",
		ArgsUsage: " ",
		Description: `Takes a migration from planned to synced: moves the table to its version
schema behind a view with the same name and shape (adopt), creates green from
target.ddl with sync triggers, copies the existing rows in keyed batches,
builds target.indexes concurrently, and switches on green → blue, so that
either shape can take writes from then on.

Every step is resumable: after a crash, Ctrl-C or kill -9, run the same
command again and it continues where it stopped (at most one batch is
redone). A migration already under way resumes with the spec it was started
with; a file that differs from it (sync: options aside) is refused.

Without --watch, sync returns once the migration is synced (the triggers
keep it synced from then on, without greenswap running), logging a status
line every few seconds. With --watch on a terminal it shows a live display,
and after synced keeps showing the changes the triggers apply until Ctrl-C,
which then exits 0. Without a terminal, or with --log-format json, --watch
logs status lines instead.

A circuit breaker watches the application's health while sync runs
(guard/README.md): the backfill, and in mode: logical the stream's apply,
hold while a signal is past its bound (lock waits on the migrated tables
over 30s and replica lag over 1m by default; rollback rate, deadlocks,
statement latency and your probes once you set them, here or in the spec's
guard: section) and continue once it recovers; status shows the signal, its
value and its bound. A breaker open longer than --guard-max-open stops sync,
checkpointed, with exit code 6; run the same command again to resume.

Ctrl-C before synced stops after the batch in flight and exits 130;
` + "`greenswap pause NAME`" + ` from another terminal holds the backfill instead.

--metrics-addr serves Prometheus metrics on http://ADDR/metrics: rows copied
and estimated, rows/s, batch size, state, phase, paused, throttled (and why),
changes captured, and in mode: logical the stream's lag and the WAL the slot
retains. Each scrape reads greenswap.migrations afresh. The endpoint lives as
long as the command: with --watch until Ctrl-C, without it until synced. An
address already in use exits 2 before anything is changed.
` + syncLogicalHelp + `
Example:

   greenswap sync -f orders.yaml --watch
   greenswap sync -f orders.yaml --watch --metrics-addr :9187
   greenswap sync -f orders.yaml --batch-size 5000 --max-replica-lag 30s
   greenswap sync -f orders.yaml --nice-ratio 1     # copy at about half speed`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Usage: "the migration spec, YAML or JSON (required)", TakesFile: true},
			&cli.BoolFlag{Name: "watch", Usage: "show live progress (a status line every few seconds without a terminal); after synced, keep showing it until Ctrl-C"},
			&cli.IntFlag{Name: "batch-size", Usage: "copy exactly `N` rows per batch", DefaultText: "adaptive, toward --target-batch-time"},
			&cli.DurationFlag{Name: "target-batch-time", Usage: "adaptive batch sizing aims each batch at this `DURATION`", DefaultText: "sync.target_batch_time, else 200ms"},
			&cli.DurationFlag{Name: "max-replica-lag", Usage: "hold the backfill while a standby's replay lag exceeds `DURATION`", DefaultText: "sync.max_replica_lag, else 10s"},
			&cli.IntFlag{Name: "workers", Usage: "copy blue's key ranges on `N` sessions at once (1: one cursor); about a core of the server each", DefaultText: fmt.Sprintf("sync.workers, else %d", spec.DefaultWorkers)},
			&cli.Float64Flag{Name: "nice-ratio", Usage: "after each batch, sleep `RATIO` times its duration, leaving CPU to the application (the copy takes 1+RATIO times as long)", DefaultText: "sync.nice_ratio, else 0"},
			&cli.DurationFlag{Name: "lock-timeout", Usage: "wait at most `DURATION` per attempt for a table lock, then retry", DefaultText: "sync.lock_timeout, else 2s"},
			&cli.BoolFlag{Name: "no-settle", Usage: "reach synced without vacuuming the filled green (VACUUM (FREEZE), paced like autovacuum): sooner, but autovacuum and the first readers then do it under the application's traffic"},
			&cli.Float64Flag{Name: "guard-rollback-rate", Usage: "circuit breaker: hold sync while the share of transactions rolled back exceeds the baseline's by more than `SHARE` (0..1; negative: off)", DefaultText: "guard.rollback_rate, else off"},
			&cli.Float64Flag{Name: "guard-deadlocks", Usage: "circuit breaker: hold sync while deadlocks per second exceed the baseline's rate by more than `RATE` (negative: off)", DefaultText: "guard.deadlocks, else off"},
			&cli.IntFlag{Name: "guard-lock-waits", Usage: "circuit breaker: hold sync while `N` or more sessions wait for a lock on blue, green or the app view (negative: off)", DefaultText: "guard.lock_waits, else off"},
			&cli.DurationFlag{Name: "guard-lock-wait-time", Usage: "circuit breaker: hold sync while a session has waited longer than `DURATION` for a lock on those tables (negative: off)", DefaultText: "guard.lock_wait_time, else 30s"},
			&cli.Float64Flag{Name: "guard-latency-ratio", Usage: "circuit breaker: hold sync while the app's statements on the table take `RATIO` times their baseline mean (pg_stat_statements; negative: off)", DefaultText: "guard.latency_ratio, else off"},
			&cli.DurationFlag{Name: "guard-replica-lag", Usage: "circuit breaker: hold sync while a replica lags more than `DURATION` (negative: off)", DefaultText: "guard.replica_lag, else 1m"},
			&cli.StringFlag{Name: "guard-probe-sql", Usage: "circuit breaker: hold sync while `QUERY` fails, times out or returns false (run as the migration's role)", DefaultText: "guard.probe_sql, else none"},
			&cli.StringFlag{Name: "guard-probe-cmd", Usage: "circuit breaker: hold sync while `COMMAND` (run by /bin/sh -c, e.g. curl -fsS URL) exits non-zero or times out", DefaultText: "guard.probe_cmd, else none"},
			&cli.DurationFlag{Name: "guard-probe-timeout", Usage: "a probe that takes longer than `DURATION` fails", DefaultText: "guard.probe_timeout, else 5s"},
			&cli.DurationFlag{Name: "guard-max-open", Usage: "a circuit breaker open longer than `DURATION` stops sync, checkpointed, with exit code 6 (negative: never)", DefaultText: "guard.max_open, else 5m"},
			&cli.StringFlag{Name: "metrics-addr", Usage: "serve Prometheus metrics on http://`ADDR`/metrics (host:port, e.g. :9187) while sync runs", DefaultText: "off"},
		},
		Action:       syncAction,
		OnUsageError: syncUsageError,
	}
}

// syncUsageError makes a bad flag value exit 2, as main's OnUsageError
// does for the global flags (urfave/cli does not apply that one to subcommands).
func syncUsageError(c *cli.Context, err error, _ bool) error {
	return exitcode.Errorf(exitcode.BadInput, "%s (see `greenswap %s --help`)", err, c.Command.Name)
}

func syncAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return exitcode.Errorf(exitcode.BadInput, "sync takes no arguments, got %q (the spec is -f FILE)", c.Args().Slice())
	}
	opts := runner.SyncOptions{
		BatchSize:       c.Int("batch-size"),
		TargetBatchTime: c.Duration("target-batch-time"),
		MaxReplicaLag:   c.Duration("max-replica-lag"),
		LockTimeout:     c.Duration("lock-timeout"),
		NiceRatio:       c.Float64("nice-ratio"),
		Workers:         c.Int("workers"),
		SkipSettle:      c.Bool("no-settle"),
		KeepStreaming:   c.Bool("watch"),
	}
	g, err := syncGuardFlags(c)
	if err != nil {
		return err
	}
	opts.Guard = g
	for _, f := range []struct {
		name string
		bad  bool
	}{
		{"batch-size", opts.BatchSize < 0},
		{"target-batch-time", opts.TargetBatchTime < 0},
		{"max-replica-lag", opts.MaxReplicaLag < 0},
		{"lock-timeout", opts.LockTimeout < 0},
		{"nice-ratio", opts.NiceRatio < 0},
		{"workers", opts.Workers < 0},
	} {
		if f.bad {
			return exitcode.Errorf(exitcode.BadInput, "--%s must not be negative", f.name)
		}
	}
	if opts.NiceRatio > spec.MaxNiceRatio {
		return exitcode.Errorf(exitcode.BadInput, "--nice-ratio %g is above %g: the copy would mostly sleep (pause it with `greenswap pause` instead)", opts.NiceRatio, spec.MaxNiceRatio)
	}
	if opts.Workers > spec.MaxWorkers {
		return exitcode.Errorf(exitcode.BadInput, "--workers %d is above %d: write at most %d (each worker is a connection)", opts.Workers, spec.MaxWorkers, spec.MaxWorkers)
	}
	file := c.String("file")
	if file == "" {
		return exitcode.Errorf(exitcode.BadInput, "sync needs the spec: greenswap sync -f FILE (see `greenswap sync --help`)")
	}
	spec, err := spec.LoadSpecFile(file)
	if err != nil {
		return err
	}
	env, err := connect(c)
	if err != nil {
		return err
	}
	defer env.Close()
	// Started before the live display quiets the log, so that the
	// endpoint's address is logged; deferred after env.Close, so that it
	// stops (scrapes in flight done) before the pool they read through closes.
	stopMetrics, err := syncServeMetrics(c, env, spec.Name)
	if err != nil {
		return err
	}
	defer stopMetrics()

	out := c.App.Writer
	watch := c.Bool("watch")
	var show func(runner.SyncProgress)
	var d *syncLiveDisplay
	every := 5 * time.Second
	if watch && c.String("log-format") != "json" && logx.IsTerminal(out) {
		d = &syncLiveDisplay{w: out}
		show, every = d.draw, time.Second
		// Info lines would scroll the display away; warnings still show.
		if env.Log.GetLevel() < zerolog.WarnLevel {
			env.Log = env.Log.Level(zerolog.WarnLevel)
		}
	} else {
		show = syncStatusLogger(env.Log)
	}
	opts.Progress, opts.ProgressEvery = show, every

	stats, err := runner.Sync(c.Context, env, spec, opts)
	if err != nil {
		return err // an interruption is reported by run(), in one line
	}
	if stats.AlreadySynced {
		fmt.Fprintf(out, "%s is synced: the sync triggers keep blue and green equal in both directions\n", spec.Name)
	} else {
		if stats.RowsInAll > stats.Rows { // resumed: earlier runs copied the rest
			fmt.Fprintf(out, "%s is synced: %s rows copied in all (%s by this run, in %s); blue and green are kept equal in both directions\n",
				spec.Name, thousands(stats.RowsInAll), thousands(stats.Rows), stats.Backfill.Round(time.Millisecond))
		} else {
			fmt.Fprintf(out, "%s is synced: %s rows copied in %s (%s rows/s); blue and green are kept equal in both directions\n",
				spec.Name, thousands(stats.Rows), stats.Backfill.Round(time.Millisecond), thousands(int64(stats.RowsPerSec)))
		}
		fmt.Fprintf(out, "next: greenswap verify %s, then greenswap cutover %s\n", spec.Name, spec.Name)
	}
	syncLogicalNote(out, spec, stats, watch) // logical mode (sync_logical.go)
	if !watch {
		return nil
	}
	if d != nil {
		d.lines = 0 // below the summary, a fresh block
	}
	return runner.WatchSync(c.Context, env, spec.Name, every, show)
}

// refuseZeroGuardFlags: a guard flag given as zero would silently mean
// its default (for cutover's --guard, no guard at all; break7 finding 06),
// which is never what was written: exit 2 naming the flag and what to
// write. Flags left out keep their default.
func refuseZeroGuardFlags(c *cli.Context) error {
	offable := "a negative value to switch it off, or leave the flag out for its default"
	for _, z := range []struct {
		flag, example, alt string
		zero               func(string) bool
	}{
		{"guard", "--guard 10m", "leave --guard out for a plain cutover", func(f string) bool { return c.Duration(f) == 0 }},
		{"guard-every", "1s", "leave the flag out for its default", func(f string) bool { return c.Duration(f) == 0 }},
		{"guard-probe-timeout", "5s", "leave the flag out for its default", func(f string) bool { return c.Duration(f) == 0 }},
		{"guard-lock-wait-time", "10s", offable, func(f string) bool { return c.Duration(f) == 0 }},
		{"guard-replica-lag", "1m", offable, func(f string) bool { return c.Duration(f) == 0 }},
		{"guard-max-open", "5m", offable, func(f string) bool { return c.Duration(f) == 0 }},
		{"guard-rollback-rate", "0.1", offable, func(f string) bool { return c.Float64(f) == 0 }},
		{"guard-deadlocks", "0.5", offable, func(f string) bool { return c.Float64(f) == 0 }},
		{"guard-latency-ratio", "3", offable, func(f string) bool { return c.Float64(f) == 0 }},
		{"guard-lock-waits", "5", offable, func(f string) bool { return c.Int(f) == 0 }},
	} {
		if c.IsSet(z.flag) && z.zero(z.flag) {
			return exitcode.Errorf(exitcode.BadInput, "--%s %s: zero is not a value here (it would silently mean the default); write a positive one, e.g. %s, or %s; nothing was changed",
				z.flag, fmt.Sprint(c.Value(z.flag)), z.example, z.alt)
		}
	}
	return nil
}

// syncGuardFlags reads the --guard-* flags: zero leaves the spec's value
// (or the default), a negative bound switches the signal off.
func syncGuardFlags(c *cli.Context) (spec.GuardOptions, error) {
	if err := refuseZeroGuardFlags(c); err != nil {
		return spec.GuardOptions{}, err
	}
	offF := func(v float64) float64 {
		if v < 0 {
			return spec.GuardOff
		}
		return v
	}
	offD := func(v time.Duration) spec.Duration {
		if v < 0 {
			v = spec.GuardOff
		}
		return spec.Duration{Duration: v}
	}
	g := spec.GuardOptions{
		RollbackRate: offF(c.Float64("guard-rollback-rate")),
		Deadlocks:    offF(c.Float64("guard-deadlocks")),
		LockWaits:    max(c.Int("guard-lock-waits"), spec.GuardOff),
		LockWaitTime: offD(c.Duration("guard-lock-wait-time")),
		LatencyRatio: offF(c.Float64("guard-latency-ratio")),
		ReplicaLag:   offD(c.Duration("guard-replica-lag")),
		ProbeSQL:     c.String("guard-probe-sql"),
		ProbeCmd:     c.String("guard-probe-cmd"),
		ProbeTimeout: spec.Duration{Duration: c.Duration("guard-probe-timeout")},
		MaxOpen:      offD(c.Duration("guard-max-open")),
	}
	if c.IsSet("guard-probe-sql") && strings.TrimSpace(g.ProbeSQL) == "" {
		g.ProbeSQL = " " // blank: rejected below rather than ignored
	}
	if c.IsSet("guard-probe-cmd") && strings.TrimSpace(g.ProbeCmd) == "" {
		g.ProbeCmd = " "
	}
	err := spec.ValidateGuard(g, func(field, fix, msg string) error {
		return exitcode.Errorf(exitcode.BadInput, "--guard-%s %s: %s", strings.ReplaceAll(field, "_", "-"), msg, fix)
	})
	return g, err
}

// syncServeMetrics starts the --metrics-addr endpoint (a no-op without
// the flag); stop ends it and waits until it has.
func syncServeMetrics(c *cli.Context, env *runner.Env, name string) (stop func(), err error) {
	addr := c.String("metrics-addr")
	if addr == "" {
		return func() {}, nil
	}
	reg, err := metrics.NewRegistry(env, name)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(c.Context)
	srv, err := metrics.Serve(ctx, addr, reg, env.Log)
	if err != nil {
		cancel()
		return nil, err
	}
	return func() {
		cancel()
		if err := srv.Wait(); err != nil {
			env.Log.Warn().Err(err).Msg("the metrics endpoint")
		}
	}, nil
}

func pauseCommand() *cli.Command {
	return &cli.Command{
		Name:      "pause",
		Usage:     "hold a running backfill (takes effect within a second)",
		ArgsUsage: "NAME",
		Description: `Sets the migration's paused flag; the backfill of a running ` + "`greenswap sync`" + `
(in any terminal, on any host) holds before its next batch and shows the
throttle reason "paused". The sync triggers keep running. Resume with
` + "`greenswap resume NAME`" + `.

Example:

   greenswap pause orders_v2`,
		Action:       func(c *cli.Context) error { return syncSetPaused(c, true) },
		OnUsageError: syncUsageError,
	}
}

func resumeCommand() *cli.Command {
	return &cli.Command{
		Name:      "resume",
		Usage:     "let a paused backfill continue",
		ArgsUsage: "NAME",
		Description: `Clears the paused flag set by ` + "`greenswap pause`" + `; the backfill continues within a
second. (To restart a sync that was stopped, run ` + "`greenswap sync -f FILE`" + ` again.)

Example:

   greenswap resume orders_v2`,
		Action:       func(c *cli.Context) error { return syncSetPaused(c, false) },
		OnUsageError: syncUsageError,
	}
}

func syncSetPaused(c *cli.Context, paused bool) error {
	args, err := trailingFlags(c)
	if err != nil {
		return err
	}
	if len(args) != 1 {
		return exitcode.Errorf(exitcode.BadInput, "%s takes one migration name (see `greenswap %s --help`)", c.Command.Name, c.Command.Name)
	}
	name := args[0]
	env, err := connect(c)
	if err != nil {
		return err
	}
	defer env.Close()
	if paused {
		if err := runner.Pause(c.Context, env, name); err != nil {
			return err
		}
		fmt.Fprintf(c.App.Writer, "%s paused: the backfill holds before its next batch; `greenswap resume %s` lets it continue\n", name, name)
		return nil
	}
	if err := runner.Resume(c.Context, env, name); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "%s resumed\n", name)
	return nil
}

// syncStatusLogger logs one line per call: the non-terminal form of --watch.
func syncStatusLogger(log zerolog.Logger) func(runner.SyncProgress) {
	return func(p runner.SyncProgress) {
		ev := log.Info().Str("migration", p.Migration).Str("state", string(p.State)).Str("phase", p.Phase).
			Int64("rows_copied", p.RowsCopied).Int64("rows_estimate", p.RowsEstimate).
			Float64("percent", float64(int(p.Percent*10))/10).Int64("rows_per_sec", int64(p.RowsPerSec)).
			Int("batch_size", p.BatchSize).Int64("captured", p.Captured)
		if p.ETA > 0 {
			ev = ev.Str("eta", p.ETA.String())
		}
		if p.Throttle != "" {
			ev = ev.Str("throttle", p.Throttle)
		}
		ev = syncStreamFields(ev, p) // logical mode (sync_logical.go)
		ev.Msg("sync status")
	}
}

// syncLiveDisplay redraws a small block of lines in place on a terminal.
type syncLiveDisplay struct {
	w     io.Writer
	lines int
}

func (d *syncLiveDisplay) draw(p runner.SyncProgress) {
	var b strings.Builder
	if d.lines > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", d.lines) // back to the top of the block
	}
	phase := p.Phase
	if phase == "" {
		phase = "-"
	}
	rows := []string{
		fmt.Sprintf("greenswap sync %s (%s)   state %s   phase %s", p.Migration, p.AppTable, p.State, phase),
		fmt.Sprintf("  copied    %s / ~%s rows   %5.1f%%  %s", thousands(p.RowsCopied), thousands(p.RowsEstimate), p.Percent, syncBar(p.Percent, 30)),
		syncRateLine(p),
		fmt.Sprintf("  throttle  %s", syncOrNone(p.Throttle)),
		fmt.Sprintf("  triggers  %s changes captured (estimate)", thousands(p.Captured)),
	}
	if line := syncStreamLine(p); line != "" { // logical mode (sync_logical.go)
		rows[len(rows)-1] = line
		rows = append(rows, syncBacklogLine(p))
	}
	for _, t := range p.Tables { // several tables: each one's line
		rows = append(rows, tableProgressLine(t))
	}
	for _, r := range rows {
		b.WriteString("\x1b[2K" + r + "\n")
	}
	d.lines = len(rows)
	io.WriteString(d.w, b.String())
}

func syncRateLine(p runner.SyncProgress) string {
	if p.Done {
		return fmt.Sprintf("  backfill  done in %s", p.BackfillFor.Round(time.Second))
	}
	return fmt.Sprintf("  rate      %s rows/s   ETA %s   batch %s rows", thousands(int64(p.RowsPerSec)), syncETA(p), thousands(int64(p.BatchSize)))
}

func syncETA(p runner.SyncProgress) string {
	eta := "-"
	switch {
	case p.Done:
		return "done"
	case p.ETA > 0:
		eta = p.ETA.String()
	}
	// Logical mode: synced means the stream has caught up too.
	if b := p.StreamBacklog; b != nil && b.Trend != runner.TrendCaughtUp && b.Trend != runner.TrendUnknown {
		eta += " (stream catch-up " + b.CatchUp() + ")"
	}
	return eta
}

func syncOrNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func syncBar(pct float64, width int) string {
	n := min(max(int(pct/100*float64(width)), 0), width)
	return "[" + strings.Repeat("#", n) + strings.Repeat(".", width-n) + "]"
}
