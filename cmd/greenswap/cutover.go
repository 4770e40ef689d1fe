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

Example:
   greenswap cutover orders_v2
   greenswap cutover orders_v2 --lock-timeout 500ms --max-attempts 30 --json

Exit codes: 0 cut over; 1 cut over but a moved foreign key failed validation (named);
2 not synced, not verified, a stream backlog above --max-stream-backlog, or bad input
(nothing changed); 4 another greenswap holds the migration;
5 gave up waiting for locks, nothing changed.`,
		Flags: append(lockFlags(),
			&cli.BoolFlag{Name: "skip-verify", Usage: "cut over without a passing verify since the last backfill"},
			&cli.StringFlag{Name: "max-stream-backlog", Value: runner.HumanBytes(runner.DefaultMaxStreamBacklog),
				Usage: "mode: logical: refuse (exit 2) while the stream's backlog is above `SIZE` of WAL (B, kB, MB, GB in units of 1024; 0: no bound)"},
		),
		Action: func(c *cli.Context) error {
			var maxBacklog int64
			return runSwapCommand(c, func(env *runner.Env, name string) (any, error) {
				return runner.Cutover(c.Context, env, name, runner.CutoverOptions{
					SwapCommandOptions: swapOptions(c), SkipVerify: c.Bool("skip-verify"), MaxStreamBacklog: maxBacklog,
				})
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
