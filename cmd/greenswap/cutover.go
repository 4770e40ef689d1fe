package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/runner"
	"github.com/greenswap/greenswap/spec"
)

// lockFlags are the lock-wait flags of cutover, rollback and finalize.
func lockFlags() []cli.Flag {
	return []cli.Flag{
		&cli.DurationFlag{Name: "lock-timeout", Value: 2 * time.Second, Usage: "longest wait for the swap's locks per attempt; app queries queue behind it at most this long"},
		&cli.IntFlag{Name: "max-attempts", Value: 10, Usage: "attempts before giving up (exit 5, nothing changed); backoff with jitter between them"},
		&cli.BoolFlag{Name: "json", Usage: "print the result as a JSON document (schema_version " + fmt.Sprint(runner.SwapSchemaVersion) + ") instead of progress lines"},
	}
}

func swapOptions(c *cli.Context) runner.SwapCommandOptions {
	o := runner.SwapCommandOptions{LockTimeout: c.Duration("lock-timeout"), MaxAttempts: c.Int("max-attempts")}
	if !c.Bool("json") {
		o.Out = c.App.Writer
	}
	return o
}

// oneName applies flags written after the name (greenswap cutover NAME
// --lock-timeout 5s) and checks the command got exactly one migration name.
func oneName(c *cli.Context) (string, error) {
	args, err := trailingFlags(c)
	if err != nil {
		return "", err
	}
	if len(args) != 1 {
		return "", exitcode.Errorf(exitcode.BadInput, "%s takes one migration name, got %d arguments (see `greenswap %s --help`)",
			c.Command.Name, len(args), c.Command.Name)
	}
	return args[0], nil
}

// runSwapCommand is the common shape: name, checks, connect, run, print.
func runSwapCommand(c *cli.Context, run func(env *runner.Env, name string) (any, error), checks ...func(name string) error) error {
	name, nameErr := oneName(c)
	asJSON := c.Bool("json")
	fail := func(err error) error {
		if asJSON {
			writeJSONError(c.App.Writer, runner.SwapSchemaVersion, err)
		}
		return err
	}
	if nameErr != nil {
		return fail(nameErr)
	}
	for _, check := range checks {
		if err := check(name); err != nil {
			return fail(err)
		}
	}
	env, err := connect(c)
	if err != nil {
		return fail(err)
	}
	defer env.Close()
	res, err := run(env, name)
	if err != nil {
		return fail(err)
	}
	if asJSON {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	return nil
}

func cutoverCommand() *cli.Command {
	return &cli.Command{
		Name:      "cutover",
		Usage:     "point the app name at green in one short transaction (bounded lock wait, retried)",
		ArgsUsage: "NAME",
		Description: `cutover switches the app name (a view since sync) from blue to green in one
transaction: the view is replaced (or, when its row type changes, dropped and created
again with its owner, grants and comments, and the views that depend on it created again
from their definitions), foreign keys that reference blue are re-created against green
NOT VALID and validated right after the commit under a light lock, blue's user triggers
fire on green from now on and are disabled on blue (each logical write fires them once),
green becomes the primary side and the state moves to cut_over. Writes keep flowing both
ways, so blue stays current and rollback loses nothing.

Locks are taken in a fixed order with a bounded wait (--lock-timeout for all of them
together). If a session holds them longer, the transaction rolls back, the blocking
sessions are named with their query and age, and cutover retries after a backoff with
jitter, up to --max-attempts; then it exits 5 with everything as it was. The time the
locks were held is measured and printed.

cutover refuses unless the migration is synced and a verify passed since the last
backfill (--skip-verify to go without). In mode: logical it also refuses while the
stream's backlog (WAL not applied to green yet; greenswap status shows it) is above
--max-stream-backlog: cutover first drains it while handing blue → green over to the
sync triggers, which would take too long. Run greenswap sync -f FILE --watch until the
backlog is below the bound, or raise the bound.

With --guard DURATION, cutover takes a baseline of the health signals before the swap
(the signals of sync's circuit breaker: guard/README.md), then watches them against it
for DURATION after the swap. The first sample with a signal past its bound rolls the
migration back by itself (the same rollback as greenswap rollback: nothing is lost),
records why in the event log (signal, value, bound, baseline) and exits 7. Bounds come
from the --guard-* flags over the spec's guard: section; the window's own defaults are
rollback rate 0.1 above the baseline's share, lock waits of 10s on the migrated tables,
statement latency 3 times the baseline (when pg_stat_statements is preloaded) and
replica lag 1m. The rollback rate is database-wide (any role that can connect adds
rollbacks; at least 50 in a 2s window are needed to trip); lock waits, latency and
probes are per table. Probes are only --guard-probe-sql/--guard-probe-cmd: the stored
spec's are not run. While watching greenswap holds no lock and no transaction: status shows
the window (its last event), and finalize or rollback may run meanwhile. Ctrl-C during
the window leaves the migration cut over (exit 130).

Example:
   greenswap cutover orders_v2
   greenswap cutover orders_v2 --lock-timeout 500ms --max-attempts 30 --json
   greenswap cutover orders_v2 --guard 10m --guard-probe-cmd 'curl -fsS http://app/health'

Exit codes: 0 cut over (with --guard: and the window passed); 1 cut over but a moved
foreign key failed validation (named); 2 not synced, not verified, a stream backlog above
--max-stream-backlog, or bad input (nothing changed); 4 another greenswap holds the
migration; 5 gave up waiting for locks, nothing changed (with --guard, for its own
rollback: still cut over, as the message says); 7 --guard rolled back by itself (the
signal named); 130 interrupted during the guard window: still cut over.`,
		Flags: append(append(lockFlags(),
			&cli.BoolFlag{Name: "skip-verify", Usage: "cut over without a passing verify since the last backfill"},
			&cli.StringFlag{Name: "max-stream-backlog", Value: runner.HumanBytes(runner.DefaultMaxStreamBacklog),
				Usage: "mode: logical: refuse (exit 2) while the stream's backlog is above `SIZE` of WAL (B, kB, MB, GB in units of 1024; 0: no bound)"},
		), cutoverGuardFlags()...),
		Action: func(c *cli.Context) error {
			var maxBacklog int64
			var g runner.CutoverGuardOptions
			return runSwapCommand(c, func(env *runner.Env, name string) (any, error) {
				return runner.Cutover(c.Context, env, name, runner.CutoverOptions{
					SwapCommandOptions: swapOptions(c), SkipVerify: c.Bool("skip-verify"), MaxStreamBacklog: maxBacklog, Guard: g,
				})
			}, func(string) error {
				var err error
				g, err = cutoverGuardOptions(c)
				return err
			}, func(string) error {
				n, err := parseSize(c.String("max-stream-backlog"))
				if err != nil {
					return exitcode.Errorf(exitcode.BadInput, "--max-stream-backlog: %w", err)
				}
				maxBacklog = n
				if n == 0 {
					maxBacklog = -1 // an explicit 0: no bound
				}
				return nil
			})
		},
	}
}

func rollbackCommand() *cli.Command {
	return &cli.Command{
		Name:      "rollback",
		Usage:     "switch the app name back to blue (after cutover), or tear the migration down (before)",
		ArgsUsage: "NAME",
		Description: `After cutover, rollback is the cutover swap backwards in one transaction: the app
name reads blue again, foreign keys and user triggers move back, blue is primary, the
state is synced again. Nothing written through green since the cutover is lost: the
reverse sync triggers wrote it to blue in the same transactions. The migration can cut
over again later.

Before cutover (planned, syncing, synced), rollback removes everything sync built, in
one transaction: the view is dropped and blue moves back under the app name, green, the
sync triggers and functions and both version schemas are dropped, views created over the
app name in the meantime are created again over the table, and the state is rolled_back:
the database is as it was before sync. A replication slot of the migration is dropped
after the commit.

Locks are taken as for cutover: bounded wait, retried, exit 5 with nothing changed.

Example:
   greenswap rollback orders_v2
   greenswap rollback orders_v2 --json | jq .lock_hold_ms

Exit codes: 0 rolled back (or already was); 2 finalized or bad input; 4 another greenswap
holds the migration; 5 gave up waiting for locks, nothing changed.`,
		Flags: lockFlags(),
		Action: func(c *cli.Context) error {
			return runSwapCommand(c, func(env *runner.Env, name string) (any, error) {
				return runner.Rollback(c.Context, env, name, swapOptions(c))
			})
		},
	}
}

// parseSize reads "128 MB", "128MB", "128MiB", "1.5GB", "4096" (bytes) as
// bytes, in units of 1024 as HumanBytes prints them.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := len(t)
	for i > 0 && (t[i-1] < '0' || t[i-1] > '9') && t[i-1] != '.' {
		i--
	}
	num, unit := strings.TrimSpace(t[:i]), strings.ToLower(strings.TrimSpace(t[i:]))
	mult := map[string]float64{"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
		"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}[unit]
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || mult == 0 || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) || v*mult > math.MaxInt64/2 {
		return 0, fmt.Errorf("%q is not a size: want a number of bytes with an optional unit, e.g. 128MB, 1.5GB, 0", s)
	}
	return int64(v * mult), nil
}

// isTerminal reports whether r is a terminal a person can answer on.
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func finalizeCommand() *cli.Command {
	return &cli.Command{
		Name:      "finalize",
		Usage:     "retire blue once no client uses it: green becomes the table (irreversible)",
		ArgsUsage: "NAME",
		Description: `finalize first watches blue for --quiet-period: a session other than greenswap's
(application_name not starting with "greenswap") that writes blue directly (recorded by a
statement trigger that cutover put on blue; greenswap's own sync writes do not count),
holds a reading lock on it, or runs a query naming the blue version schema makes finalize
refuse, naming each client: application_name, user, client address, when, what. Move
those clients off the blue version schema and run it again; --force finalizes anyway.
With --max-legacy-share SHARE (above 0) finalize samples every shape (the app name,
blue, green: status shows the same) for the whole quiet period and refuses only when
blue's share of the client sightings is over SHARE, naming the clients on blue either way
(greenswap status NAME shows who uses which shape).

Then, after a confirmation (asked on a terminal; --yes to skip; without a terminal and
without --yes it refuses), in one transaction: the app-name view is dropped and green moves
into the app schema under the app name; blue's sequences are re-owned by it and columns
that are identity columns in target.ddl become identity columns again, continuing after
the last value; views over the app name are created again over the table; blue, the sync
triggers and functions and both version schemas are dropped; the state is finalized.
There is no rollback after finalize.

Example:
   greenswap finalize orders_v2
   greenswap finalize orders_v2 --quiet-period 30m --yes --json

Exit codes: 0 finalized (or already was); 2 not cut over, not confirmed, or bad input;
3 clients used blue within the quiet period (named; nothing changed); 4 another greenswap
holds the migration; 5 gave up waiting for locks, nothing changed.`,
		Flags: append(lockFlags(),
			&cli.DurationFlag{Name: "quiet-period", Value: runner.DefaultQuietPeriod, Usage: "refuse if a client used blue within this period; finalize watches blue this long"},
			&cli.DurationFlag{Name: "sample-every", Value: time.Second, Usage: "how often blue's users are sampled while watching"},
			&cli.Float64Flag{Name: "max-legacy-share", Usage: "tolerate clients on blue while blue's share of the client sightings on the migration's shapes over the quiet period stays at or under `SHARE` (0–1; 0: any client on blue refuses)"},
			&cli.BoolFlag{Name: "force", Usage: "finalize even if clients used blue (they are named), without watching"},
			&cli.BoolFlag{Name: "yes", Aliases: []string{"y"}, Usage: "do not ask for confirmation"},
		),
		Action: func(c *cli.Context) error {
			var opts runner.FinalizeOptions
			return runSwapCommand(c, func(env *runner.Env, name string) (any, error) {
				return runner.Finalize(c.Context, env, name, opts)
			}, func(name string) error {
				opts = runner.FinalizeOptions{
					SwapCommandOptions: swapOptions(c),
					QuietPeriod:        c.Duration("quiet-period"),
					SampleEvery:        c.Duration("sample-every"),
					Force:              c.Bool("force"),
					MaxLegacyShare:     c.Float64("max-legacy-share"),
					Yes:                c.Bool("yes"),
				}
				if opts.QuietPeriod == 0 {
					opts.QuietPeriod = -1 // an explicit 0: do not watch
				}
				if !opts.Yes && isTerminal(c.App.Reader) {
					opts.Confirm = confirmOn(c.App.ErrWriter, c.App.Reader, name)
				}
				if !opts.Yes && opts.Confirm == nil {
					return exitcode.Errorf(exitcode.BadInput, "finalize is irreversible and there is no terminal to ask on: pass --yes to confirm (nothing was changed)")
				}
				return nil
			})
		},
	}
}

// confirmOn asks question on w and wants the migration name typed back.
func confirmOn(w io.Writer, r io.Reader, name string) func(string) (bool, error) {
	return func(question string) (bool, error) {
		fmt.Fprintf(w, "%s\nType the migration name (%s) to confirm: ", question, name)
		line, err := bufio.NewReader(r).ReadString('\n')
		if err != nil && line == "" {
			return false, fmt.Errorf("no confirmation read: %w", err)
		}
		return strings.TrimSpace(line) == name, nil
	}
}

// cutoverGuardFlags are --guard and the bounds of its window: the names
// of sync's --guard-* flags, read by the same syncGuardFlags.
func cutoverGuardFlags() []cli.Flag {
	return []cli.Flag{
		&cli.DurationFlag{Name: "guard", Usage: "after the swap, watch the health signals against a baseline taken before it for `DURATION`, and roll back by itself (exit 7) when one passes its bound", DefaultText: "off"},
		&cli.Float64Flag{Name: "guard-rollback-rate", Usage: "--guard: roll back when the share of transactions rolled back exceeds the baseline's by more than `SHARE` (0..1; negative: off); database-wide (any role's rollbacks count; at least 50 in 2s needed): lock waits, latency and probes are per table", DefaultText: "guard.rollback_rate, else 0.1"},
		&cli.Float64Flag{Name: "guard-deadlocks", Usage: "--guard: roll back when deadlocks per second exceed the baseline's rate by more than `RATE` (negative: off)", DefaultText: "guard.deadlocks, else off"},
		&cli.IntFlag{Name: "guard-lock-waits", Usage: "--guard: roll back when `N` or more sessions wait for a lock on blue, green or the app view (negative: off)", DefaultText: "guard.lock_waits, else off"},
		&cli.DurationFlag{Name: "guard-lock-wait-time", Usage: "--guard: roll back when a session has waited longer than `DURATION` for a lock on those tables (negative: off)", DefaultText: "guard.lock_wait_time, else 10s"},
		&cli.Float64Flag{Name: "guard-latency-ratio", Usage: "--guard: roll back when the app's statements on the table take `RATIO` times their baseline mean (pg_stat_statements; negative: off)", DefaultText: "guard.latency_ratio, else 3"},
		&cli.DurationFlag{Name: "guard-replica-lag", Usage: "--guard: roll back when a replica lags more than `DURATION` (negative: off)", DefaultText: "guard.replica_lag, else 1m"},
		&cli.StringFlag{Name: "guard-probe-sql", Usage: "--guard: roll back when `QUERY` fails, times out or returns false (run as the migration's role)", DefaultText: "none; the stored spec's guard.probe_sql is not run"},
		&cli.StringFlag{Name: "guard-probe-cmd", Usage: "--guard: roll back when `COMMAND` (run by /bin/sh -c, e.g. curl -fsS URL) exits non-zero or times out", DefaultText: "none; the stored spec's guard.probe_cmd is not run"},
		&cli.DurationFlag{Name: "guard-probe-timeout", Usage: "a probe that takes longer than `DURATION` fails", DefaultText: "guard.probe_timeout, else 5s"},
		&cli.DurationFlag{Name: "guard-every", Usage: "--guard: sample the signals every `DURATION`", DefaultText: "guard.every, else 1s"},
	}
}

// cutoverGuardOptions reads --guard and its bounds; a bound without
// --guard is a mistake worth saying (it would silently do nothing).
func cutoverGuardOptions(c *cli.Context) (runner.CutoverGuardOptions, error) {
	o := runner.CutoverGuardOptions{Window: c.Duration("guard")}
	if err := refuseZeroGuardFlags(c); err != nil {
		return o, err
	}
	if o.Window < 0 {
		return o, exitcode.Errorf(exitcode.BadInput, "--guard %s: the window must be positive, e.g. --guard 10m", o.Window)
	}
	if o.Window == 0 {
		for _, f := range c.LocalFlagNames() {
			if strings.HasPrefix(f, "guard-") {
				return o, exitcode.Errorf(exitcode.BadInput, "--%s needs --guard DURATION (the window to watch after the swap); nothing was changed", f)
			}
		}
		return o, nil
	}
	b, err := syncGuardFlags(c)
	if err != nil {
		return o, err
	}
	b.Every = spec.Duration{Duration: c.Duration("guard-every")}
	if b.Every.Duration < 0 {
		return o, exitcode.Errorf(exitcode.BadInput, "--guard-every %s: want a positive interval, e.g. 1s", b.Every.Duration)
	}
	o.Bounds = b
	return o, nil
}
